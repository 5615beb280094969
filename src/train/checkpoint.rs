//! Checkpoints: the whole state of a training run at a batch boundary (weights, optimiser
//! moments, best weights so far, history, position), so that `--resume` continues to the
//! same result as an uninterrupted run. Written atomically; one file per run.
//!
//! Format: `HARDENCK1\n`, a little-endian u64 header length, the JSON header
//! ([`Header`]), then the float arrays it lists, as little-endian f32, in its order.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use super::EpochRow;

const MAGIC: &[u8] = b"HARDENCK1\n";

/// Where a run is, and what it has learnt so far.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    /// Names the model and the settings; a checkpoint of another run is refused.
    pub fingerprint: String,
    /// Epochs completed.
    pub epoch: usize,
    /// Batches completed in the current epoch.
    pub batch: usize,
    pub params: Vec<Vec<f32>>,
    pub opt_m: Vec<Vec<f32>>,
    pub opt_v: Vec<Vec<f32>>,
    pub opt_t: u64,
    pub best: Best,
    pub history: Vec<EpochRow>,
    /// Epochs since the best one (early stopping).
    pub stale: usize,
    /// Running sums of the current epoch: loss, correct, examples.
    pub running: (f64, u64, u64),
    /// Seconds spent before this checkpoint (wall clock, across resumes).
    pub seconds: f64,
}

/// The best weights so far by validation robust accuracy (-1 without validation).
#[derive(Clone, Debug, PartialEq)]
pub struct Best {
    pub epoch: usize,
    pub robust: f64,
    pub clean: f64,
    pub params: Vec<Vec<f32>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    fingerprint: String,
    epoch: usize,
    batch: usize,
    opt_t: u64,
    best_epoch: usize,
    best_robust: f64,
    best_clean: f64,
    history: Vec<EpochRow>,
    stale: usize,
    running: (f64, u64, u64),
    seconds: f64,
    /// Lengths of the arrays that follow: params, opt_m, opt_v, best params.
    params: Vec<usize>,
    opt_m: Vec<usize>,
    opt_v: Vec<usize>,
    best: Vec<usize>,
}

pub fn save(path: &Path, s: &State) -> Result<()> {
    let lens = |v: &Vec<Vec<f32>>| v.iter().map(Vec::len).collect::<Vec<_>>();
    let header = Header {
        fingerprint: s.fingerprint.clone(),
        epoch: s.epoch,
        batch: s.batch,
        opt_t: s.opt_t,
        best_epoch: s.best.epoch,
        best_robust: s.best.robust,
        best_clean: s.best.clean,
        history: s.history.clone(),
        stale: s.stale,
        running: s.running,
        seconds: s.seconds,
        params: lens(&s.params),
        opt_m: lens(&s.opt_m),
        opt_v: lens(&s.opt_v),
        best: lens(&s.best.params),
    };
    let h = serde_json::to_vec(&header)?;
    let mut bytes = Vec::with_capacity(MAGIC.len() + 8 + h.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(h.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&h);
    for group in [&s.params, &s.opt_m, &s.opt_v, &s.best.params] {
        for a in group {
            for v in a {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    crate::files::write_atomic(path, &bytes)
}

pub fn load(path: &Path) -> Result<State> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let bad = || {
        anyhow!(
            "{} is not a harden checkpoint (or is damaged)",
            path.display()
        )
    };
    let rest = bytes.strip_prefix(MAGIC).ok_or_else(bad)?;
    if rest.len() < 8 {
        return Err(bad());
    }
    let (len, rest) = rest.split_at(8);
    let hlen = u64::from_le_bytes(len.try_into().map_err(|_| bad())?) as usize;
    if rest.len() < hlen {
        return Err(bad());
    }
    let (h, mut data) = rest.split_at(hlen);
    let h: Header = serde_json::from_slice(h).map_err(|_| bad())?;
    let mut take = |lens: &[usize]| -> Result<Vec<Vec<f32>>> {
        let mut out = vec![];
        for &n in lens {
            let nbytes = n.checked_mul(4).ok_or_else(bad)?;
            if data.len() < nbytes {
                return Err(bad());
            }
            let (a, r) = data.split_at(nbytes);
            out.push(
                a.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            );
            data = r;
        }
        Ok(out)
    };
    let params = take(&h.params)?;
    let opt_m = take(&h.opt_m)?;
    let opt_v = take(&h.opt_v)?;
    let best_params = take(&h.best)?;
    if !data.is_empty() {
        bail!("{} has trailing bytes: damaged checkpoint", path.display());
    }
    Ok(State {
        fingerprint: h.fingerprint,
        epoch: h.epoch,
        batch: h.batch,
        params,
        opt_m,
        opt_v,
        opt_t: h.opt_t,
        best: Best {
            epoch: h.best_epoch,
            robust: h.best_robust,
            clean: h.best_clean,
            params: best_params,
        },
        history: h.history,
        stale: h.stale,
        running: h.running,
        seconds: h.seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.ckpt");
        let s = State {
            fingerprint: "abc".into(),
            epoch: 2,
            batch: 7,
            params: vec![vec![1.0, -2.5], vec![3.0]],
            opt_m: vec![vec![0.1, 0.2], vec![0.3]],
            opt_v: vec![],
            opt_t: 99,
            best: Best {
                epoch: 1,
                robust: 0.625,
                clean: 0.8,
                params: vec![vec![f32::MIN_POSITIVE, 7.0], vec![-0.0]],
            },
            history: vec![EpochRow {
                epoch: 1,
                lr: 0.001,
                train_loss: Some(0.3),
                train_accuracy: None,
                val_clean: Some(0.8),
                val_robust: Some(0.625),
                seconds: 1.5,
            }],
            stale: 1,
            running: (12.25, 40, 64),
            seconds: 3.0,
        };
        save(&p, &s).unwrap();
        assert_eq!(load(&p).unwrap(), s);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&p, &bytes).unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("damaged"));
        std::fs::write(&p, b"hello").unwrap();
        assert!(load(&p).is_err());
    }
}
