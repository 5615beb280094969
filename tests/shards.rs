//! Sharded audits: per-example determinism (outcomes independent of batch size and
//! shards), `audit --shard K/N` parts merged by `report merge` into exactly the report of
//! one unsharded run, gates on the merged numbers, and bad input (parts that do not
//! belong together, missing or duplicated shards, truncated parts, bad `--shard`).

mod common;

use std::path::{Path, PathBuf};

use common::{fails_with, harden, root, MLP_AUDIT};
use serde_json::Value;

/// The demo CNN on 150 examples of the bundled slice with the `standard` cascade (APGD-CE,
/// APGD-T, Square), short budgets: batches of 64 or 128 examples cut the data differently.
const DEMO: &[&str] = &[
    "models/fmnist_cnn.onnx",
    "--data",
    "data/fashion-mnist-slice",
    "--limit",
    "150",
    "--runtime",
    "tract",
    "--threads",
    "1",
    "--eps",
    "0.1",
    "--attacks",
    "standard",
    "--steps",
    "5",
    "--square-queries",
    "40",
    "--seed",
    "7",
];

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Runs harden from the repository root; returns (exit code, stdout, stderr).
fn run(args: &[String]) -> (i32, String, String) {
    let out = harden().current_dir(root()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn args(base: &[&str], more: &[&str]) -> Vec<String> {
    base.iter().chain(more).map(|a| a.to_string()).collect()
}

fn audit(base: &[&str], more: &[&str]) -> Vec<String> {
    let mut v = vec!["audit".to_string()];
    v.extend(args(base, more));
    v
}

/// Writes the N parts of `base` into `dir` (part0.json ...); returns their paths.
fn parts(base: &[&str], n: u64, dir: &Path) -> Vec<PathBuf> {
    (0..n)
        .map(|k| {
            let p = dir.join(format!("part{k}.json"));
            let (code, _, err) = run(&audit(
                base,
                &["--shard", &format!("{k}/{n}"), "--json", &s(&p)],
            ));
            assert_eq!(code, 0, "shard {k}/{n}: {err}");
            p
        })
        .collect()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json(p: &Path) -> Value {
    serde_json::from_str(&read(p)).unwrap()
}

fn without_meta(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("meta");
    v
}

fn markdown_body(md: &str) -> &str {
    md.split(harden::report::markdown::META_MARKER)
        .next()
        .unwrap()
}

/// The HTML without its footer (the volatile line).
fn html_body(html: &str) -> String {
    html.lines()
        .filter(|l| !l.starts_with("<footer>"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One unsharded run and `n` shards merged: the same report apart from `meta` (JSON and
/// Markdown; the HTML too when `html`: its images show the adversarial examples' values,
/// which tract's gradient graphs compute in bits that depend on the batch's shape, so a
/// shard's iterates can differ from one run's in their last bits even where every
/// outcome is the same; ONNX Runtime's CPU kernels do not depend on it).
fn merged_equals_unsharded(base: &[&str], n: u64, html: bool) {
    let d = tempfile::tempdir().unwrap();
    let one = d.path().join("one");
    let (code, _, err) = run(&audit(base, &["--report", &s(&one)]));
    assert_eq!(code, 0, "{err}");
    let files = parts(base, n, d.path());
    // The parts in another order than the shards'.
    let mut merge: Vec<String> = vec!["report".into(), "merge".into()];
    merge.extend(files.iter().rev().map(|p| s(p)));
    let merged = d.path().join("merged");
    merge.extend(["--report".into(), s(&merged)]);
    let (code, _, err) = run(&merge);
    assert_eq!(code, 0, "{err}");
    let a = without_meta(json(&one.join("report.json")));
    let b = without_meta(json(&merged.join("report.json")));
    assert!(
        a == b,
        "{n} shards merged differ from one run:\n{}\n{}",
        harden::report::json::to_string(&a).unwrap(),
        harden::report::json::to_string(&b).unwrap()
    );
    let (ma, mb) = (
        read(&one.join("report.md")),
        read(&merged.join("report.md")),
    );
    assert_eq!(markdown_body(&ma), markdown_body(&mb));
    if html {
        let (ha, hb) = (
            html_body(&read(&one.join("report.html"))),
            html_body(&read(&merged.join("report.html"))),
        );
        let diff = ha.lines().zip(hb.lines()).position(|(x, y)| x != y);
        assert!(
            ha == hb,
            "the HTML differs at line {diff:?} ({} and {} lines)",
            ha.lines().count(),
            hb.lines().count()
        );
    }
    // Something was attacked and broken, so the comparison means something.
    let r = &a["audit"]["robust"]["results"];
    assert!(r[0]["attacks"][0]["broken"].as_u64().unwrap() > 0, "{r}");
    assert!(!a["audit"]["sanity"].as_array().unwrap().is_empty());
}

#[test]
fn three_shards_merge_into_the_unsharded_report() {
    merged_equals_unsharded(MLP_AUDIT, 3, true);
}

#[test]
fn standard_attacks_in_shards_merge_into_the_unsharded_report() {
    merged_equals_unsharded(DEMO, 3, false);
    if common::ort_available() {
        let on_ort: Vec<&str> = DEMO
            .iter()
            .map(|a| if *a == "tract" { "ort" } else { a })
            .collect();
        merged_equals_unsharded(&on_ort, 3, true);
    }
}

#[test]
fn batch_size_does_not_change_any_outcome() {
    let d = tempfile::tempdir().unwrap();
    let mut reports = vec![];
    for b in ["32", "128"] {
        let p = d.path().join(format!("b{b}.json"));
        let (code, _, err) = run(&audit(DEMO, &["--batch-size", b, "--json", &s(&p)]));
        assert_eq!(code, 0, "{err}");
        reports.push(json(&p));
    }
    let (a, b) = (&reports[0]["audit"], &reports[1]["audit"]);
    assert_eq!(a["batch"], 32);
    assert_eq!(b["batch"], 128);
    assert_eq!(a["per_example"].as_array().unwrap().len(), 150);
    assert_eq!(a["per_example"], b["per_example"]);
    assert_eq!(a["robust"], b["robust"]);
    assert_eq!(a["sanity"], b["sanity"]);
    // Some examples were broken by each attack of the cascade's first two, so the
    // comparison covers their random streams.
    let broken = |name: &str| {
        a["per_example"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|o| {
                o["eps"][0]["attacks"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|x| x["attack"] == name && x["broken"] == true)
            .count()
    };
    assert!(broken("apgd-ce") > 0);
}

#[test]
fn gates_apply_to_the_merged_numbers() {
    let d = tempfile::tempdir().unwrap();
    let files = parts(MLP_AUDIT, 2, d.path());
    let junit = d.path().join("junit.xml");
    let out = d.path().join("merged.json");
    let mut merge: Vec<String> = vec!["report".into(), "merge".into()];
    merge.extend(files.iter().map(|p| s(p)));
    merge.extend(
        [
            "--min-robust-accuracy",
            "0.9",
            "--min-clean-accuracy",
            "0.5",
            "--junit",
            &s(&junit),
            "--json",
            &s(&out),
        ]
        .map(String::from),
    );
    let (code, stdout, err) = run(&merge);
    assert_eq!(code, 1, "{stdout}{err}");
    let x = read(&junit);
    // Clean accuracy (65%) passes; robust accuracy at both eps fails.
    assert!(x.contains("tests=\"3\" failures=\"2\""), "{x}");
    let r = json(&out);
    assert_eq!(r["kind"], "audit");
    assert_eq!(r["gates"].as_array().unwrap().len(), 3);
    assert_eq!(r["audit"]["per_example"].as_array().unwrap().len(), 20);
}

#[test]
fn shard_auto_reads_the_job_index() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("auto.json");
    let out = harden()
        .current_dir(root())
        .env("JOB_COMPLETION_INDEX", "1")
        .args(audit(MLP_AUDIT, &["--shard", "auto/4", "--json", &s(&p)]))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v = json(&p);
    assert_eq!(v["kind"], "audit-part");
    assert_eq!(v["part"]["shard"]["index"], 1);
    assert_eq!(v["part"]["shard"]["count"], 4);
    let ids: Vec<u64> = v["audit"]["per_example"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["example"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 5, 9, 13, 17]);
}

/// `report merge FILES --report DIR` fails with exit 2, one line containing `needle`,
/// and writes no report.
fn merge_fails(files: &[&Path], needle: &str) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("report");
    let mut a: Vec<String> = vec!["report".into(), "merge".into()];
    a.extend(files.iter().map(|p| s(p)));
    a.extend(["--report".into(), s(&dir)]);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    fails_with(&refs, needle);
    assert!(!dir.exists(), "a report was written");
}

#[test]
fn parts_that_do_not_belong_together_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let files = parts(MLP_AUDIT, 3, d.path());
    let (p0, p1, p2) = (&files[0], &files[1], &files[2]);
    // Another seed.
    let other = d.path().join("seed4.json");
    let mut a = audit(MLP_AUDIT, &["--shard", "2/3", "--json", &s(&other)]);
    let i = a.iter().position(|x| x == "3").unwrap();
    a[i] = "4".into();
    assert_eq!(run(&a).0, 0);
    merge_fails(&[p0, p1, &other], "seed is 4, but");
    // Another model (its sha256).
    let cnn = d.path().join("cnn.json");
    let (code, _, err) = run(&audit(
        &["fixtures/mlp_matmul.onnx"],
        &args(&MLP_AUDIT[1..], &["--shard", "2/3", "--json", &s(&cnn)])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ));
    assert_eq!(code, 0, "{err}");
    merge_fails(&[p0, p1, &cnn], "model_sha256");
    // A missing shard, a duplicated one, a part of another split.
    merge_fails(&[p0, p2], "shard 1/3 is missing");
    merge_fails(&[p0, p1, p2, p1], "given twice");
    let half = d.path().join("half.json");
    assert_eq!(
        run(&audit(MLP_AUDIT, &["--shard", "1/2", "--json", &s(&half)])).0,
        0
    );
    merge_fails(&[p0, &half, p2], "of 2");
    // A truncated part, and a full report that is not a part.
    let cut = d.path().join("cut.json");
    let text = read(p1);
    std::fs::write(&cut, &text[..text.len() / 2]).unwrap();
    merge_fails(&[p0, &cut, p2], "not a complete JSON file");
    let full = d.path().join("full.json");
    assert_eq!(run(&audit(MLP_AUDIT, &["--json", &s(&full)])).0, 0);
    merge_fails(&[p0, &full, p2], "kind is \"audit\"");
}

#[test]
fn bad_shard_flags_are_refused() {
    let m = |more: &[&str]| {
        let mut v = vec!["audit"];
        v.extend(MLP_AUDIT);
        v.extend(more);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let d = tempfile::tempdir().unwrap();
    let p = s(&d.path().join("p.json"));
    for (more, needle) in [
        (vec!["--shard", "3/2", "--json", &p], "numbered from 0 to 1"),
        (vec!["--shard", "0/0", "--json", &p], "at least 1"),
        (vec!["--shard", "0/2"], "--json PART.json"),
        (
            vec![
                "--shard",
                "0/2",
                "--json",
                &p,
                "--min-clean-accuracy",
                "0.5",
            ],
            "report merge",
        ),
        (
            vec!["--shard", "auto", "--json", &p],
            "JOB_COMPLETION_INDEX",
        ),
    ] {
        let a = m(&more);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = harden()
            .current_dir(root())
            .env_remove("JOB_COMPLETION_INDEX")
            .env_remove("SLURM_ARRAY_TASK_ID")
            .args(&refs)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{more:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{more:?}: {err}");
        assert!(!Path::new(&p).exists());
    }
}

/// DEMO on 256 examples in 4 batches of 64 (`--batch-size 16`), for the kill tests.
fn killable(more: &[&str]) -> Vec<String> {
    let mut a = audit(DEMO, &["--batch-size", "16"]);
    let i = a.iter().position(|x| x == "150").unwrap();
    a[i] = "256".into();
    a.extend(more.iter().map(|x| x.to_string()));
    a
}

#[test]
fn killed_audits_resume_to_the_uninterrupted_report() {
    use std::time::{Duration, Instant};
    let d = tempfile::tempdir().unwrap();
    let reference = d.path().join("ref.json");
    let t = Instant::now();
    let (code, _, err) = run(&killable(&["--json", &s(&reference)]));
    let t_full = t.elapsed();
    assert_eq!(code, 0, "{err}");
    let want = without_meta(json(&reference));
    let exe = assert_cmd::cargo::cargo_bin("harden");
    let mut resumed_midway = 0;
    for (i, frac) in [0.1f64, 0.35, 0.6, 0.85].iter().enumerate() {
        let out = d.path().join(format!("killed{i}.json"));
        let ck = d.path().join(format!("ck{i}.jsonl"));
        let args = killable(&["--checkpoint", &s(&ck), "--json", &s(&out)]);
        let mut child = std::process::Command::new(&exe)
            .current_dir(root())
            .args(&args)
            .env("CI", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs_f64(t_full.as_secs_f64() * frac));
        let _ = child.kill();
        let _ = child.wait();
        // Either no report or a complete one.
        if out.exists() {
            assert_eq!(without_meta(json(&out)), want);
            std::fs::remove_file(&out).unwrap();
        }
        let batches = std::fs::read_to_string(&ck)
            .map(|t| t.lines().count().saturating_sub(1))
            .unwrap_or(0);
        eprintln!("killed at {frac} of {t_full:?}: {batches} batches checkpointed");
        if (1..4).contains(&batches) {
            resumed_midway += 1;
        }
        let mut again = args.clone();
        if ck.exists() {
            again.push("--resume".into());
        }
        let (code, _, err) = run(&again);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            without_meta(json(&out)),
            want,
            "killed at {frac} of the run, then resumed"
        );
    }
    assert!(resumed_midway > 0, "no kill landed between batches");
}

#[test]
fn resume_refuses_another_runs_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let ck = d.path().join("ck.jsonl");
    let out = d.path().join("out.json");
    let mut a = audit(MLP_AUDIT, &["--checkpoint", &s(&ck), "--json", &s(&out)]);
    assert_eq!(run(&a).0, 0);
    std::fs::remove_file(&out).unwrap();
    let i = a.iter().position(|x| x == "0.02,0.05").unwrap();
    a[i] = "0.02,0.06".into();
    a.push("--resume".into());
    let (code, _, err) = run(&a);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("belongs to another run: eps"), "{err}");
    assert!(!out.exists());
    // Not a checkpoint at all.
    let other = d.path().join("other.jsonl");
    std::fs::write(&other, "{\"kind\":\"audit\"}\n").unwrap();
    let i = a.iter().position(|x| *x == s(&ck)).unwrap();
    a[i] = s(&other);
    let (code, _, err) = run(&a);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not an audit checkpoint"), "{err}");
}

/// `scripts/ray-audit.py` on a local Ray instance, with the Python named by
/// HARDEN_RAY_PYTHON (one with `ray` installed); skipped without it (CI has no Ray).
#[test]
fn ray_launcher_merges_like_one_run() {
    let Some(py) = std::env::var_os("HARDEN_RAY_PYTHON") else {
        eprintln!("skipping: HARDEN_RAY_PYTHON (a Python with ray) is not set");
        return;
    };
    let has_ray = std::process::Command::new(&py)
        .args(["-c", "import ray"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_ray {
        eprintln!("skipping: {py:?} cannot import ray");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let one = d.path().join("one.json");
    assert_eq!(run(&audit(MLP_AUDIT, &["--json", &s(&one)])).0, 0);
    let merged = d.path().join("merged.json");
    let out = std::process::Command::new(&py)
        .current_dir(root())
        .arg("scripts/ray-audit.py")
        .args([
            MLP_AUDIT[0],
            "--data",
            MLP_AUDIT[2],
            "--shards",
            "3",
            "--json",
            &s(&merged),
        ])
        .args(["--harden", &s(&assert_cmd::cargo::cargo_bin("harden"))])
        .args(["--work", &s(&d.path().join("work"))])
        .arg("--")
        .args(&MLP_AUDIT[3..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(without_meta(json(&one)), without_meta(json(&merged)));
}
