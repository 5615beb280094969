//! Data at full resolution and real class counts, through the binary: image folders
//! resized and cropped (`--resize`, `--crop`, `--preset imagenet`), class names (folders,
//! `--class-names`, named sets), CIFAR binary files, unreadable images, non-finite
//! logits, and a 1000-class model whose terminal output and report stay small.

mod common;

use std::path::Path;

use common::{f, fails_with, harden};
use harden::model::{self, pb, Dim};
use serde_json::Value;

/// A model file: input `x` of `[N, example...]`, the nodes ending in `logits`.
fn write_model(
    path: &Path,
    example: &[usize],
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
) {
    let mut dims = vec![Dim::Symbolic("N".into())];
    dims.extend(example.iter().map(|d| Dim::Fixed(*d)));
    let m = common::classifier_proto(&dims, nodes, inits, 13);
    std::fs::write(path, prost::Message::encode_to_vec(&m)).unwrap();
}

/// `[N, 3, side, side]` -> per-channel mean -> `logits = mean @ w` (`w` is `[3, k]`).
fn channel_mean_model(path: &Path, side: usize, w: &[f32], k: usize) {
    let mut flat = model::node("Flatten", "flat", &["pooled"], &["feat"]);
    flat.attribute.push(pb::AttributeProto {
        name: "axis".into(),
        r#type: 2,
        i: 1,
        ..Default::default()
    });
    write_model(
        path,
        &[3, side, side],
        vec![
            model::node("GlobalAveragePool", "pool", &["x"], &["pooled"]),
            flat,
            model::node("MatMul", "head", &["feat", "w"], &["logits"]),
        ],
        vec![model::float_tensor("w", &[3, k as i64], w)],
    );
}

/// Classes in the sorted order of the colour folders (blue 0, green 1, red 2): the
/// channel with the largest mean wins.
fn by_colour() -> Vec<f32> {
    vec![0., 0., 1., 0., 1., 0., 1., 0., 0.]
}

fn save_rgb(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
        .save(path)
        .unwrap();
}

/// Runs harden; returns (exit code, stdout, stderr).
fn run(args: &[&str], envs: &[(&str, &Path)]) -> (i32, String, String) {
    let mut c = harden();
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_of(stdout: &str) -> Value {
    let v: Value = serde_json::from_str(stdout).unwrap();
    v["audit"].clone()
}

/// Three class folders of differently sized, uniformly coloured images: red in `red`,
/// green in `green`, blue in `blue` (plus a black greyscale image in `blue`).
fn colour_folder(dir: &Path) {
    save_rgb(&dir.join("red/a.png"), 300, 260, [250, 10, 10]);
    save_rgb(&dir.join("red/b.jpg"), 260, 400, [240, 0, 20]);
    save_rgb(&dir.join("green/a.png"), 256, 256, [0, 250, 0]);
    save_rgb(&dir.join("blue/a.png"), 500, 300, [0, 0, 250]);
    image::GrayImage::from_pixel(280, 280, image::Luma([0]))
        .save(dir.join("blue/gray.png"))
        .unwrap();
}

#[test]
fn preset_imagenet_resizes_crops_and_normalises_in_the_graph() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m.onnx");
    channel_mean_model(&m, 224, &by_colour(), 3);
    let data = d.path().join("imgs");
    colour_folder(&data);
    let (ms, ds) = (m.display().to_string(), data.display().to_string());
    // Without resizing the images do not share a size.
    fails_with(&["audit", &ms, "--data", &ds], "--resize N --crop N");
    let (code, out, err) = run(
        &[
            "audit", &ms, "--data", &ds, "--preset", "imagenet", "--json", "-",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let a = json_of(&out);
    assert_eq!(a["example_shape"], serde_json::json!([3, 224, 224]));
    let mean: Vec<f64> = serde_json::from_value(a["input_spec"]["mean"].clone()).unwrap();
    let std: Vec<f64> = serde_json::from_value(a["input_spec"]["std"].clone()).unwrap();
    assert!((mean[1] - 0.456).abs() < 1e-6 && (std[2] - 0.225).abs() < 1e-6);
    assert_eq!(a["input_spec"]["range"], serde_json::json!([0.0, 1.0]));
    let src = a["data"]["source"].as_str().unwrap();
    assert!(
        src.contains("resized to 256") && src.contains("224x224"),
        "{src}"
    );
    // Labels by sorted folder name: blue 0, green 1, red 2; every image classified by
    // its colour after normalisation (the grey black image: (0 - mean) / std is largest
    // for blue).
    assert_eq!(
        a["class_names"],
        serde_json::json!(["blue", "green", "red"])
    );
    assert_eq!(a["clean"]["accuracy"], 1.0, "{a}");
    // An explicit --mean overrides the preset's, the std stays.
    let (code, out, err) = run(
        &[
            "audit", &ms, "--data", &ds, "--preset", "imagenet", "--mean", "0.5", "--json", "-",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let a = json_of(&out);
    assert_eq!(a["input_spec"]["mean"][2], 0.5);
    assert!((a["input_spec"]["std"][0].as_f64().unwrap() - 0.229).abs() < 1e-6);
    // --crop larger than the resized images
    fails_with(
        &[
            "audit", &ms, "--data", &ds, "--resize", "100", "--crop", "200",
        ],
        "smaller than --crop 200",
    );
    // The model's size differs from the crop: the hint names the flags.
    fails_with(
        &[
            "audit", &ms, "--data", &ds, "--resize", "64", "--crop", "64",
        ],
        "--resize N and --crop N",
    );
    fails_with(&["audit", &ms, "--data", &ds, "--resize", "0"], "--resize");
    // A one-channel model cannot take the preset's RGB mean and std.
    fails_with(
        &[
            "audit",
            &f("cnn_bn.onnx"),
            "--data",
            &f("data/tiny.npz"),
            "--preset",
            "imagenet",
        ],
        "--preset imagenet sets --mean and --std for 3 RGB channels",
    );
}

#[test]
fn class_names_in_terminal_reports_and_errors() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m.onnx");
    channel_mean_model(&m, 16, &by_colour(), 3);
    let data = d.path().join("imgs");
    colour_folder(&data);
    let (ms, ds) = (m.display().to_string(), data.display().to_string());
    let (code, out, err) = run(
        &[
            "audit", &ms, "--data", &ds, "--resize", "16", "--crop", "16",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("  green"), "{out}");
    // A names file in the folders' order renames them; the report shows them.
    let names = d.path().join("names.txt");
    std::fs::write(&names, "bleu\nvert\nrouge\n").unwrap();
    let rep = d.path().join("rep");
    let (code, out, err) = run(
        &[
            "audit",
            &ms,
            "--data",
            &ds,
            "--resize",
            "16",
            "--crop",
            "16",
            "--class-names",
            &names.display().to_string(),
            "--report",
            &rep.display().to_string(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("report"), "{out}");
    let md = std::fs::read_to_string(rep.join("report.md")).unwrap();
    assert!(md.contains("| 1 vert |") && md.contains("2 rouge"), "{md}");
    let html = std::fs::read_to_string(rep.join("report.html")).unwrap();
    assert!(html.contains("0 bleu"));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["audit"]["class_names"][2], "rouge");
    // A JSON list naming the folders (in another order) relabels them by name.
    std::fs::write(&names, r#"["red", "green", "blue"]"#).unwrap();
    let (code, out, err) = run(
        &[
            "audit",
            &ms,
            "--data",
            &ds,
            "--crop",
            "16",
            "--class-names",
            &names.display().to_string(),
            "--json",
            "-",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let a = json_of(&out);
    // red is now label 0 and blue 2, which the model calls 2 and 0: only green is right.
    assert_eq!(a["clean"]["correct"], 1, "{a}");
    assert_eq!(a["class_names"][0], "red");
    // Counts that do not match are errors.
    std::fs::write(&names, "a\nb\n").unwrap();
    fails_with(
        &[
            "audit",
            &ms,
            "--data",
            &ds,
            "--crop",
            "16",
            "--class-names",
            &names.display().to_string(),
        ],
        "class folders are not all named",
    );
    std::fs::write(&names, "a\nb\n").unwrap();
    fails_with(
        &[
            "audit",
            &f("mlp.onnx"),
            "--data",
            &f("data/tiny.npz"),
            "--class-names",
            &names.display().to_string(),
        ],
        "has 2 class names but the model has 10 classes",
    );
    fails_with(
        &[
            "audit",
            &f("mlp.onnx"),
            "--data",
            &f("data/tiny.npz"),
            "--class-names",
            "/no/such/names.txt",
        ],
        "--class-names",
    );
    // Two class folders for a three-class model: the names cannot be the model's.
    std::fs::remove_dir_all(data.join("green")).unwrap();
    fails_with(
        &["audit", &ms, "--data", &ds, "--crop", "16"],
        "the data names 2 classes (blue, red) but the model has 3 classes",
    );
}

/// The main command on an image folder with no test split audits the held-out
/// validation examples, which keep the folder's class names.
#[test]
fn hardening_on_a_folder_keeps_its_class_names() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m.onnx");
    channel_mean_model(&m, 8, &by_colour(), 3);
    let data = d.path().join("imgs");
    for (c, rgb) in [
        ("red", [250, 10, 10]),
        ("green", [0, 250, 0]),
        ("blue", [0, 0, 250]),
    ] {
        for i in 0..4u8 {
            save_rgb(
                &data.join(format!("{c}/{i}.png")),
                10,
                10,
                rgb.map(|v| v.max(3 * i) - 3 * i),
            );
        }
    }
    let (out_model, rep) = (d.path().join("hard.onnx"), d.path().join("rep"));
    let (code, out, err) = run(
        &[
            &m.display().to_string(),
            "--eps",
            "0.01",
            "--data",
            &data.display().to_string(),
            "--resize",
            "8",
            "--crop",
            "8",
            "--epochs",
            "1",
            "--attacks",
            "fgsm",
            "--output",
            &out_model.display().to_string(),
            "--report",
            &rep.display().to_string(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}\n{out}");
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("report.json")).unwrap()).unwrap();
    for when in ["before", "after"] {
        assert_eq!(v[when]["class_names"][0], "blue", "{when}: {}", v[when]);
    }
}

#[test]
fn fashion_mnist_names_come_built_in() {
    // The bundled slice (the default data of 28x28 models) is Fashion-MNIST.
    let (code, out, err) = run(
        &["audit", &f("mlp.onnx"), "--limit", "50"],
        &[("HARDEN_DATA", Path::new("/nonexistent"))],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Ankle boot") && out.contains("T-shirt/top"),
        "{out}"
    );
}

/// CIFAR records: label byte(s) then 3072 pixels; example i is uniformly coloured with
/// channel `label % 3` at 200, the others at 10.
fn cifar_bytes(labels: &[u8], hundred: bool) -> Vec<u8> {
    let mut b = vec![];
    for &l in labels {
        if hundred {
            b.push(l / 5);
        }
        b.push(l);
        for c in 0..3u8 {
            let v = if c == l % 3 { 200 } else { 10 };
            b.extend(std::iter::repeat_n(v, 1024));
        }
    }
    b
}

#[test]
fn cifar_binary_sets_are_found_and_read() {
    let d = tempfile::tempdir().unwrap();
    let m10 = d.path().join("c10.onnx");
    // class = argmax over channels, mapped onto classes 0, 1, 2 of 10.
    let mut w = vec![0f32; 30];
    for c in 0..3 {
        w[c * 10 + c] = 1.0;
    }
    channel_mean_model(&m10, 32, &w, 10);
    let hd = d.path().join("datasets");
    let bin = hd.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(
        bin.join("test_batch.bin"),
        cifar_bytes(&[0, 1, 2, 5], false),
    )
    .unwrap();
    let ms = m10.display().to_string();
    let (code, out, err) = run(
        &["audit", &ms, "--data", "cifar10", "--json", "-"],
        &[("HARDEN_DATA", &hd)],
    );
    assert_eq!(code, 0, "{err}");
    let a = json_of(&out);
    assert_eq!(a["data"]["examples"], 4);
    assert_eq!(a["class_names"][1], "automobile");
    // 0, 1, 2 right; 5 (dog, channel 2) predicted 2 (bird).
    assert_eq!(a["clean"]["correct"], 3, "{a}");
    // The training split is absent: one line naming where it looked.
    let (code, _, err) = run(
        &["audit", &ms, "--data", "cifar10:train"],
        &[("HARDEN_DATA", &hd)],
    );
    assert_eq!(code, 2);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("data_batch_1.bin") && err.contains(&bin.display().to_string()),
        "{err}"
    );
    // The folder and the file directly.
    for spec in [
        bin.display().to_string(),
        bin.join("test_batch.bin").display().to_string(),
    ] {
        let (code, out, err) = run(&["audit", &ms, "--data", &spec, "--json", "-"], &[]);
        assert_eq!(code, 0, "{spec}: {err}");
        assert_eq!(json_of(&out)["clean"]["correct"], 3);
    }
    // CIFAR-100: fine labels (the coarse byte comes first).
    let m100 = d.path().join("c100.onnx");
    // channel 1 -> class 40, 2 -> 41, 0 -> 42 (label l lights channel l % 3).
    let mut w = vec![0f32; 300];
    w[100 + 40] = 1.0;
    w[200 + 41] = 1.0;
    w[42] = 1.0;
    channel_mean_model(&m100, 32, &w, 100);
    let b100 = hd.join("cifar100/cifar-100-binary");
    std::fs::create_dir_all(&b100).unwrap();
    std::fs::write(b100.join("train.bin"), cifar_bytes(&[40, 41, 42, 99], true)).unwrap();
    let (code, out, err) = run(
        &[
            "audit",
            &m100.display().to_string(),
            "--data",
            "cifar100:train",
            "--json",
            "-",
        ],
        &[("HARDEN_DATA", &hd)],
    );
    assert_eq!(code, 0, "{err}");
    let a = json_of(&out);
    assert_eq!(a["clean"]["correct"], 3, "{a}");
    assert_eq!(a["class_names"][41], "lawn_mower");
    assert!(a["clean"].get("confusion_nonzero").is_some());
    // A truncated file.
    std::fs::write(bin.join("test_batch.bin"), vec![0u8; 5000]).unwrap();
    fails_with(
        &["audit", &ms, "--data", &bin.display().to_string()],
        "not a whole number of 3073-byte records",
    );
}

#[test]
fn unreadable_images_are_one_line_errors() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m.onnx");
    channel_mean_model(&m, 8, &by_colour(), 3);
    let ms = m.display().to_string();
    let case = |name: &str, write: &dyn Fn(&Path), needle: &str| {
        let data = d.path().join(name);
        save_rgb(&data.join("a/ok.png"), 8, 8, [1, 2, 3]);
        save_rgb(&data.join("b/ok.png"), 8, 8, [1, 2, 3]);
        write(&data.join("c"));
        let ds = data.display().to_string();
        fails_with(&["audit", &ms, "--data", &ds], needle);
    };
    case(
        "empty",
        &|c| {
            std::fs::create_dir_all(c).unwrap();
            std::fs::write(c.join("zero.png"), b"").unwrap();
        },
        "zero.png",
    );
    case(
        "deep",
        &|c| {
            std::fs::create_dir_all(c).unwrap();
            image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_pixel(
                8,
                8,
                image::Rgb([1, 2, 3]),
            )
            .save(c.join("deep.png"))
            .unwrap();
        },
        "deep.png has Rgb16 pixels",
    );
    case(
        "cmyk",
        &|c| {
            std::fs::create_dir_all(c).unwrap();
            std::fs::write(c.join("print.jpg"), cmyk_jpeg()).unwrap();
        },
        "print.jpg is a CMYK JPEG",
    );
}

/// A JPEG whose frame header declares four components, as CMYK and YCCK files do.
fn cmyk_jpeg() -> Vec<u8> {
    let mut jpg = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(8, 8, image::Rgb([9, 9, 9]))
        .write_to(&mut jpg, image::ImageFormat::Jpeg)
        .unwrap();
    let mut b = jpg.into_inner();
    let sof = b.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    b[sof + 9] = 4;
    b
}

#[test]
fn nan_weight_stops_the_audit_at_the_first_batch() {
    let m = harden::model::OnnxModel::load(&common::fixture("mlp.onnx")).unwrap();
    let mut proto = m.proto.clone();
    let g = proto.graph.as_ref().unwrap();
    // The last layer's bias: only the output it feeds becomes NaN.
    let bias = g
        .initializer
        .iter()
        .find(|t| t.dims == [10])
        .expect("a bias of 10 values");
    let mut v = model::float_values(bias).unwrap();
    v[4] = f32::NAN;
    let name = bias.name.clone();
    model::set_initializers(&mut proto, &[(name, v)]).unwrap();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("nan.onnx");
    std::fs::write(&p, prost::Message::encode_to_vec(&proto)).unwrap();
    let ps = p.display().to_string();
    let data = f("data/tiny.npz");
    fails_with(
        &["audit", &ps, "--data", &data],
        "the model's output is not finite: example 0 gives NaN at output 4 (of 10); 20 non-finite value(s) in 20 of 20 examples",
    );
    fails_with(
        &[
            "attack", &ps, "--data", &data, "--attack", "fgsm", "--eps", "0.1",
        ],
        "not finite",
    );
    // No report is half-written.
    let rep = d.path().join("rep");
    let (code, _, _) = run(
        &[
            "audit",
            &ps,
            "--data",
            &data,
            "--report",
            &rep.display().to_string(),
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(!rep.join("report.json").exists());
}

#[test]
fn a_thousand_classes_print_a_summary() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("k1000.onnx");
    // logits = x @ W with W [4, 1000]: class 0 always wins on positive inputs, the others
    // follow by a small margin.
    let k = 1000;
    let mut w = vec![0f32; 4 * k];
    for (i, v) in w.iter_mut().enumerate() {
        let c = i % k;
        *v = if c == 0 { 1.0 } else { 0.5 - c as f32 * 1e-4 };
    }
    write_model(
        &m,
        &[4],
        vec![model::node("MatMul", "mm", &["x", "w"], &["logits"])],
        vec![model::float_tensor("w", &[4, k as i64], &w)],
    );
    let x: Vec<f32> = (0..32).map(|i| 0.2 + 0.02 * i as f32).collect();
    let y: Vec<i64> = vec![3, 3, 7, 500, 999, 12, 3, 7];
    let npz = harden::npz::write_npz(&[
        ("x", harden::npz::Array::F32(&[8, 4], &x)),
        ("y", harden::npz::Array::I64(&[8], &y)),
    ])
    .unwrap();
    let data = d.path().join("d.npz");
    std::fs::write(&data, npz).unwrap();
    let rep = d.path().join("rep");
    let args = [
        "audit",
        &m.display().to_string(),
        "--data",
        &data.display().to_string(),
        "--eps",
        "0.05",
        "--attacks",
        "fgsm",
        "--runtime",
        "tract",
    ];
    let (code, out, err) = run(&args, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.len() < 20_000, "{} bytes:\n{out}", out.len());
    assert!(out.contains("1000 classes, 5 with examples"), "{out}");
    assert!(out.contains("most frequent confusions"), "{out}");
    assert!(out.contains("    3 -> 0          3"), "{out}");
    assert!(
        out.contains("WARNING: NO EXAMPLE WAS ATTACKED") && out.contains("examples-attacked"),
        "{out}"
    );
    // With names (and a report): the terminal still prints a summary.
    let names = d.path().join("names.txt");
    let list: Vec<String> = (0..k).map(|c| format!("c{c}")).collect();
    std::fs::write(&names, list.join("\n")).unwrap();
    let mut with_report: Vec<&str> = args.to_vec();
    let (reps, ns) = (rep.display().to_string(), names.display().to_string());
    with_report.extend(["--report", &reps, "--class-names", &ns]);
    let (code, out, err) = run(&with_report, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("NO EXAMPLE WAS ATTACKED") && out.len() < 2_000,
        "{out}"
    );
    let (code, out, err) = run(&[&args[..], &["--class-names", &ns]].concat(), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("3 c3 -> 0 c0") && out.len() < 20_000, "{out}");
    let size = |n: &str| std::fs::metadata(rep.join(n)).unwrap().len();
    assert!(size("report.json") < 100_000, "{}", size("report.json"));
    assert!(size("report.md") < 20_000, "{}", size("report.md"));
    assert!(size("report.html") < 40_000, "{}", size("report.html"));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("report.json")).unwrap()).unwrap();
    let a = &json["audit"];
    assert!(a["clean"].get("confusion").is_none());
    assert_eq!(
        a["clean"]["confusion_nonzero"][0],
        serde_json::json!([3, 0, 3])
    );
    let checks = a["sanity"].as_array().unwrap();
    let attacked = checks
        .iter()
        .find(|c| c["id"] == "examples-attacked")
        .unwrap();
    assert_eq!(attacked["status"], "flagged", "{attacked}");
    let md = std::fs::read_to_string(rep.join("report.md")).unwrap();
    assert!(md.contains("most frequent confusions") && md.contains("NO EXAMPLE WAS ATTACKED"));
    assert!(md.contains("| 3 c3 | 0 c0 | 3 |"), "{md}");
    assert_eq!(json["audit"]["class_names"][999], "c999");
}
