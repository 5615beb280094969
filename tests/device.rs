//! `--device`: parsing, the errors when CUDA cannot be used, `auto`'s fallback recorded in
//! the report's meta, and, on a machine where ONNX Runtime's CUDA provider starts, the
//! same audit on the CPU and on CUDA (skipped elsewhere, saying so).
mod common;

use std::path::{Path, PathBuf};

use common::{f, harden, ort_available};

fn model() -> String {
    common::root()
        .join("models/fmnist_cnn.onnx")
        .display()
        .to_string()
}

/// Runs `harden audit` on the demo model and 20 fixture examples with `extra` flags and
/// `env`, returns (exit code, stderr, the report JSON if written).
fn audit(extra: &[&str], env: &[(&str, &str)]) -> (i32, String, Option<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let mut c = harden();
    c.args(["audit", &f("mlp.onnx"), "--data", &f("data/tiny.npz")])
        .args(["--json", json.to_str().unwrap()])
        .args(extra);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report = std::fs::read(&json)
        .ok()
        .map(|b| serde_json::from_slice(&b).unwrap());
    (o.status.code().unwrap_or(-1), stderr, report)
}

/// The CPU build of ONNX Runtime in use (ORT_DYLIB_PATH or the cache), if any.
fn cpu_ort() -> Option<PathBuf> {
    ort_available().then(|| harden::runtime::ort_status(&common::ort_locator()).unwrap())
}

#[test]
fn bad_device_strings_are_refused() {
    for bad in ["tpu", "cuda:", "cuda:x", "cuda:0,", "cuda:-1"] {
        let (code, err, _) = audit(&["--device", bad], &[]);
        assert_eq!(code, 2, "--device {bad}: {err}");
        assert!(err.contains("--device"), "--device {bad}: {err}");
    }
}

#[test]
fn tract_cannot_run_on_cuda() {
    let (code, err, report) = audit(&["--runtime", "tract", "--device", "cuda"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("tract runs on the CPU only"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(report.is_none(), "nothing written on an error");
}

#[test]
fn tf32_is_for_cuda_only() {
    let (code, err, report) = audit(&["--runtime", "tract", "--precision", "tf32"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--precision tf32"), "{err}");
    assert!(report.is_none());
    let (code, err, _) = audit(&["--precision", "fp16"], &[]);
    assert_eq!(code, 2, "{err}");
}

/// `--gpu-memory-limit` takes a size (bytes, K, M, G, T) above zero, and only with CUDA;
/// with `auto` falling back to the CPU it is dropped.
#[test]
fn gpu_memory_limit_is_a_size_for_cuda_only() {
    for bad in ["0", "1.5G", "abc", "12X", "20000000T"] {
        let (code, err, report) = audit(&["--device", "cuda", "--gpu-memory-limit", bad], &[]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("--gpu-memory-limit"), "{bad}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(report.is_none());
    }
    let (code, err, _) = audit(&["--runtime", "tract", "--gpu-memory-limit", "1G"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--gpu-memory-limit is for CUDA devices"),
        "{err}"
    );
    for (size, bytes) in [
        ("512", 512),
        ("8K", 8 << 10),
        ("1GiB", 1 << 30),
        ("2MB", 2 << 20),
    ] {
        assert_eq!(harden::cli::parse_size(size), Ok(bytes), "{size}");
    }
    // With the CPU build, auto falls back to the CPU, where the limit does not apply.
    let Some(lib) = cpu_ort() else { return };
    if lib
        .with_file_name("libonnxruntime_providers_cuda.so")
        .is_file()
    {
        eprintln!(
            "skipping auto's fall back: {} is a GPU build",
            lib.display()
        );
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let env = [
        ("ORT_DYLIB_PATH", lib.to_str().unwrap()),
        ("HOME", home.path().to_str().unwrap()),
    ];
    let flags = [
        "--runtime",
        "ort",
        "--device",
        "auto",
        "--gpu-memory-limit",
        "1G",
    ];
    let (code, err, report) = audit(&flags, &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(report.unwrap()["meta"]["device"], "cpu");
}

#[test]
fn the_cpu_is_the_default_and_is_recorded() {
    let (code, err, report) = audit(&["--runtime", "tract"], &[]);
    assert_eq!(code, 0, "{err}");
    let meta = &report.unwrap()["meta"];
    assert_eq!(meta["device"], "cpu");
    assert!(meta.get("device_note").is_none());
    assert!(meta.get("precision").is_none());
}

#[test]
fn cuda_without_a_provider_names_the_fix() {
    // The CPU build of ONNX Runtime has no CUDA provider next to it.
    let Some(lib) = cpu_ort() else { return };
    if lib
        .with_file_name("libonnxruntime_providers_cuda.so")
        .is_file()
    {
        eprintln!("skipping: {} is a GPU build", lib.display());
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let env = [
        ("ORT_DYLIB_PATH", lib.to_str().unwrap()),
        ("HOME", home.path().to_str().unwrap()),
    ];
    let (code, err, report) = audit(&["--device", "cuda"], &env);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("libonnxruntime_providers"), "{err}");
    assert!(err.contains("fetch-onnxruntime.sh --gpu"), "{err}");
    assert!(report.is_none());
    // auto runs on the CPU and says why, in the report.
    let (code, err, report) = audit(&["--device", "auto"], &env);
    assert_eq!(code, 0, "{err}");
    let meta = &report.unwrap()["meta"];
    assert_eq!(meta["device"], "cpu");
    let note = meta["device_note"].as_str().unwrap();
    assert!(note.contains("CUDA not used"), "{note}");
}

/// The GPU build from `scripts/fetch-onnxruntime.sh --gpu`, if fetched.
fn gpu_ort() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let lib = home.join(".cache/harden/onnxruntime-gpu/libonnxruntime.so");
    if lib.is_file() {
        Some(lib)
    } else {
        eprintln!("skipping: no GPU build of ONNX Runtime (scripts/fetch-onnxruntime.sh --gpu)");
        None
    }
}

/// Whether this machine has an NVIDIA driver (then CUDA may start, and the no-GPU
/// errors are not what happens).
fn has_driver() -> bool {
    ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"]
        .iter()
        .any(|d| Path::new(d).join("libcuda.so.1").exists())
}

#[test]
fn cuda_libraries_missing_are_named() {
    let Some(lib) = gpu_ort() else { return };
    if has_driver() {
        eprintln!("skipping: this machine has an NVIDIA driver");
        return;
    }
    // No Python environments, no LD_LIBRARY_PATH: the provider's first CUDA library is
    // missing, named, with the command that fixes it.
    let home = tempfile::tempdir().unwrap();
    let env = [
        ("ORT_DYLIB_PATH", lib.to_str().unwrap()),
        ("HOME", home.path().to_str().unwrap()),
        ("PATH", "/nonexistent"),
        ("LD_LIBRARY_PATH", ""),
        ("VIRTUAL_ENV", ""),
        ("CONDA_PREFIX", ""),
    ];
    let (code, err, _) = audit(&["--device", "cuda"], &env);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot load lib"), "{err}");
    assert!(err.contains(".so"), "{err}");
    assert!(err.contains("pip install nvidia-"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // cuda:7 fails the same way here (the provider cannot start at all).
    let (code, _, _) = audit(&["--device", "cuda:7"], &env);
    assert_eq!(code, 2);
}

#[test]
fn the_same_audit_on_cpu_and_cuda() {
    let Some(lib) = gpu_ort() else { return };
    let env = [("ORT_DYLIB_PATH", lib.to_str().unwrap())];
    let run = |device: &str| {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("r.json");
        let o = harden()
            .args(["audit", &model(), "--limit", "200", "--eps", "0.1"])
            .args(["--device", device, "--json", json.to_str().unwrap()])
            .envs(env)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (
            o.status.code(),
            err,
            std::fs::read(&json)
                .ok()
                .map(|b| serde_json::from_slice::<serde_json::Value>(&b).unwrap()),
        )
    };
    let (code, err, auto) = run("auto");
    // (the CPU's numbers: float32 on CUDA, the default `--precision fp32`)
    assert_eq!(code, Some(0), "{err}");
    let auto = auto.unwrap();
    if auto["meta"]["device"] == "cpu" {
        eprintln!(
            "skipping: CUDA does not start here ({})",
            auto["meta"]["device_note"]
        );
        return;
    }
    let (_, err, cpu) = run("cpu");
    let cpu = cpu.unwrap_or_else(|| panic!("{err}"));
    let (a, c) = (&auto["audit"], &cpu["audit"]);
    assert_eq!(a["clean"]["accuracy"], c["clean"]["accuracy"]);
    let n = a["data"]["examples"].as_f64().unwrap();
    let ra = a["robust"]["results"][0]["robust_accuracy"]
        .as_f64()
        .unwrap();
    let rc = c["robust"]["results"][0]["robust_accuracy"]
        .as_f64()
        .unwrap();
    assert!(
        (ra - rc).abs() <= 2.0 / n,
        "robust {ra} on CUDA, {rc} on the CPU"
    );
    // A device that does not exist.
    let (code, err, _) = run("cuda:99");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cuda:99"), "{err}");
}
