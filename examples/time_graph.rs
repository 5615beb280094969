//! Times runs of an ONNX graph file on harden's runtimes (inputs filled with a fixed
//! pattern in [0, 1), shapes from the graph, dynamic dims set to 1), e.g. a gradient graph
//! written by the dump_grad example.
//! Usage: cargo run --example time_graph -- FILE.onnx [--runtime ort|tract] [--runs 20]
//!        [--threads 2]
mod common;

use std::time::Instant;

use harden::runtime::{self, RuntimeChoice};
use ndarray::{ArrayD, IxDyn};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = common::arg;
    let path = args
        .get(1)
        .ok_or_else(|| anyhow::anyhow!("usage: time_graph FILE.onnx"))?;
    let choice = match get("--runtime", "ort").as_str() {
        "tract" => RuntimeChoice::Tract,
        _ => RuntimeChoice::Ort,
    };
    let runs: usize = get("--runs", "20").parse()?;
    let threads: usize = get("--threads", "2").parse()?;
    let bytes = std::fs::read(path)?;
    let model = harden::model::OnnxModel::load(std::path::Path::new(path))?;
    let mut inputs = vec![];
    for info in model.inputs() {
        let dims: Vec<usize> = info.shape.iter().map(|d| d.fixed().unwrap_or(1)).collect();
        let len: usize = dims.iter().product();
        let v: Vec<f32> = (0..len)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        inputs.push(ArrayD::from_shape_vec(IxDyn(&dims), v)?);
    }
    let ort = common::ort();
    let mut rt = runtime::open(choice, &bytes, threads, &ort)?;
    let views: Vec<_> = inputs.iter().map(|a| a.view()).collect();
    for _ in 0..3 {
        rt.run(&views)?;
    }
    let mut ts = vec![];
    for _ in 0..runs {
        let t0 = Instant::now();
        rt.run(&views)?;
        ts.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(f64::total_cmp);
    println!(
        "{path} on {}: min {:.1} ms, median {:.1} ms over {runs} runs",
        rt.name(),
        ts[0],
        ts[runs / 2]
    );
    Ok(())
}
