use clap::Parser;
use harden::cli::{self, Cli};

fn main() {
    let parsed = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    std::process::exit(cli::EXIT_OK);
                }
                _ => {
                    // One line: clap's first line names the problem.
                    let msg = e.render().to_string();
                    let first = msg.lines().next().unwrap_or("error: bad arguments");
                    eprintln!("harden: {}", first.trim_start_matches("error: "));
                    std::process::exit(cli::EXIT_ERROR);
                }
            }
        }
    };
    match cli::run(parsed) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("harden: error: {msg}");
            std::process::exit(cli::EXIT_ERROR);
        }
    }
}
