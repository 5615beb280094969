//! The checkpoint of a resumable audit (`harden audit --checkpoint FILE [--resume]`):
//! JSON Lines, a header naming the run (its settings as the CLI gives them) and then one
//! line per finished batch (its examples' outcomes, the adversarial pairs it keeps for
//! the report, its probability-like output rows). Each line is appended with one write
//! and synced, so a killed run leaves whole lines and at most one torn last line, which
//! `--resume` drops (that batch runs again). Resuming replays the finished batches and
//! attacks only the rest; since every number of the report is built from per-example
//! outcomes and every attack draw is per example, the resumed report equals an
//! uninterrupted run's.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::report::merge::PartPair;
use crate::robust::ExampleOutcome;

/// The header's `kind`.
pub const KIND: &str = "audit-checkpoint";

/// One finished batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// Data position of the batch's first example, and the batch's size (all examples
    /// read, the shard's or not).
    pub first: u64,
    pub n: u64,
    /// The batch's examples this audit scores, in data order.
    pub examples: Vec<ExampleOutcome>,
    /// Per eps, the adversarial pairs found in this batch (first ones, in data order).
    pub pairs: Vec<Vec<PartPair>>,
    /// Output rows that look like probability vectors.
    pub rows_like_probabilities: u64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    kind: String,
    run: Value,
}

/// An open checkpoint: the batches a resumed run replays, and the file it appends to.
pub struct AuditLog {
    path: PathBuf,
    file: File,
    done: std::collections::VecDeque<BatchRecord>,
}

fn sync_line(file: &mut File, path: &Path, v: &impl Serialize) -> Result<()> {
    let mut line = serde_json::to_string(v)?;
    line.push('\n');
    file.write_all(line.as_bytes())
        .and_then(|_| file.sync_data())
        .with_context(|| format!("--checkpoint {}: cannot write", path.display()))
}

impl AuditLog {
    /// Starts a checkpoint for the run `run` (replacing any file there).
    pub fn create(path: &Path, run: Value) -> Result<AuditLog> {
        let mut file = File::create(path)
            .with_context(|| format!("--checkpoint {}: cannot create", path.display()))?;
        sync_line(
            &mut file,
            path,
            &Header {
                kind: KIND.into(),
                run,
            },
        )?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file,
            done: Default::default(),
        })
    }

    /// Opens the checkpoint of the run `run` to resume it: an error when the file is
    /// missing, is not an audit checkpoint, or belongs to another run (naming the first
    /// setting that differs). A torn last line is dropped.
    pub fn resume(path: &Path, run: Value) -> Result<AuditLog> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow!("--resume: no checkpoint to resume at {shown} ({e}); run without --resume to start one")
        })?;
        let opening = format!("{{\"kind\":\"{KIND}\"");
        let torn_header = !text.contains('\n')
            && (text.starts_with(&opening) || opening.starts_with(text.as_str()));
        if torn_header {
            // Killed before its header was whole: nothing finished, start it again.
            return AuditLog::create(path, run);
        }
        let mut lines = text.split_inclusive('\n');
        let header: Option<Header> = lines
            .next()
            .filter(|l| l.ends_with('\n'))
            .and_then(|l| serde_json::from_str(l).ok());
        let Some(header) = header.filter(|h| h.kind == KIND) else {
            bail!("--resume: {shown} is not an audit checkpoint (harden audit --checkpoint writes one)");
        };
        if let Some((key, was, now)) = first_difference("", &header.run, &run) {
            bail!(
                "--resume: the checkpoint {shown} belongs to another run: {key} was {was}, now {now} (same model, data and flags needed; run without --resume to start over)"
            );
        }
        let mut good = text.find('\n').map_or(0, |i| i + 1);
        let mut done = std::collections::VecDeque::new();
        for l in lines {
            match serde_json::from_str::<BatchRecord>(l) {
                Ok(r) if l.ends_with('\n') => {
                    good += l.len();
                    done.push_back(r);
                }
                _ => break,
            }
        }
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("--checkpoint {shown}: cannot open"))?;
        // Drop a torn last line (the batch runs again), then append.
        file.set_len(good as u64)
            .with_context(|| format!("--checkpoint {shown}: cannot truncate"))?;
        drop(file);
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("--checkpoint {shown}: cannot open"))?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file,
            done,
        })
    }

    /// Batches finished by the run resumed (0 when starting).
    pub fn finished(&self) -> usize {
        self.done.len()
    }

    /// The finished batch starting at `first` with `n` examples, if the resumed run got
    /// that far (batches come in order).
    pub fn take(&mut self, first: u64, n: u64) -> Result<Option<BatchRecord>> {
        match self.done.front() {
            Some(r) if r.first == first && r.n == n => Ok(self.done.pop_front()),
            Some(r) => bail!(
                "--resume: the checkpoint {} has a batch of {} examples at {} where this run reads {n} at {first} (another data order or batch size?)",
                self.path.display(),
                r.n,
                r.first
            ),
            None => Ok(None),
        }
    }

    /// Appends a finished batch (one write, synced).
    pub fn append(&mut self, r: &BatchRecord) -> Result<()> {
        sync_line(&mut self.file, &self.path, r)
    }
}

/// The first key (as `a.b`) where two JSON values differ, with both values.
pub fn first_difference(path: &str, a: &Value, b: &Value) -> Option<(String, String, String)> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let vb = y.get(k).unwrap_or(&Value::Null);
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if let Some(d) = first_difference(&p, va, vb) {
                    return Some(d);
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map(|k| (format!("{path}.{k}"), "missing".into(), y[k].to_string()))
        }
        _ if a != b => Some((path.to_string(), a.to_string(), b.to_string())),
        _ => None,
    }
}
