//! `harden report diff A.json B.json`: the baseline comparison of two existing reports.

use super::*;

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The baseline report.json.
    pub baseline: PathBuf,
    /// The report.json to compare with it.
    pub report: PathBuf,
    #[command(flatten)]
    pub compare: CompareArgs,
    /// Write the compared metrics as a JUnit XML file (one test case per metric).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

/// `harden report diff A B`: the comparison of two existing reports.
pub(super) fn run(a: DiffArgs) -> Result<i32> {
    use crate::report::compare;
    compare::check_settings(a.compare.max_drop, a.compare.alpha)?;
    if let Some(j) = &a.junit {
        check_writable("--junit", j)?;
    }
    let before = compare::Side::read(&a.baseline)?;
    let after = compare::Side::read(&a.report)?;
    let c = compare::compare(&before, &after, a.compare.max_drop, a.compare.alpha)?;
    if let Some(j) = &a.junit {
        let props = [
            ("model", after.model_path.as_str()),
            ("sha256", after.sha256.as_str()),
            ("baseline", before.file.as_str()),
        ];
        let xml = crate::report::junit::render_parts(
            &props,
            &[],
            Some(&c),
            &crate::report::Meta::default(),
        );
        write_atomic(j, xml.as_bytes())?;
    }
    let mut out = compare::markdown(&c, &after.model_path);
    for m in &c.metrics {
        out += &m.line();
        out.push('\n');
    }
    print_stdout(&out)?;
    Ok(if c.passed { EXIT_OK } else { EXIT_GATE_FAILED })
}
