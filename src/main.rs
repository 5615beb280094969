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
                    // One line: clap's message up to its usage hint.
                    let msg = e.render().to_string();
                    let line: Vec<&str> = msg
                        .lines()
                        .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
                        .map(str::trim)
                        .collect();
                    let line = line.join(" ");
                    eprintln!("harden: {}", line.trim_start_matches("error: "));
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
