//! Sharded audits: a deterministic partition of a data set's examples by position
//! (example i belongs to shard i % N), so that N processes (a Ray task, a Kubernetes
//! Indexed Job's pod, a Slurm array task, a CI matrix job each) audit disjoint parts whose
//! outcomes do not depend on N (every random draw of an attack on an example comes from a
//! stream of the seed and the example's position: `attack::example_rng`). Shards are
//! numbered from 0, as `JOB_COMPLETION_INDEX` is: `--shard 0/3`, `1/3`, `2/3`.

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

/// Shard `index` of `count` (0-based): examples whose position % count == index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub fn new(index: u64, count: u64) -> Result<Shard> {
        if count == 0 {
            bail!("--shard {index}/{count}: the number of shards must be at least 1");
        }
        if index >= count {
            bail!(
                "--shard {index}/{count}: shards are numbered from 0 to {} (0-based, as JOB_COMPLETION_INDEX)",
                count - 1
            );
        }
        Ok(Shard { index, count })
    }

    /// Whether the example at this position in the data belongs to this shard.
    pub fn holds(&self, example: u64) -> bool {
        example % self.count == self.index
    }

    /// How many of `total` examples (positions 0..total) the shard holds.
    pub fn size(&self, total: u64) -> u64 {
        total / self.count + u64::from(total % self.count > self.index)
    }

    /// Parses `K/N` (0-based K), `auto` or `auto/N`. `auto` takes K from
    /// `JOB_COMPLETION_INDEX` (a Kubernetes Indexed Job; N must be given) or from
    /// `SLURM_ARRAY_TASK_ID` less `SLURM_ARRAY_TASK_MIN` (a Slurm array; N defaults to
    /// `SLURM_ARRAY_TASK_COUNT`). `var` looks a variable up (the CLI passes the process
    /// environment; the library reads none).
    pub fn parse(s: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<Shard> {
        let (k, n) = match s.split_once('/') {
            Some((k, n)) => (k.trim(), Some(n.trim())),
            None => (s.trim(), None),
        };
        let number = |what: &str, v: &str| -> Result<u64> {
            v.parse::<u64>().map_err(|_| {
                anyhow!("--shard {s}: {what} '{v}' is not a whole number (give K/N with 0 <= K < N, or auto)")
            })
        };
        let count = n.map(|n| number("N", n)).transpose()?;
        if k != "auto" {
            let Some(count) = count else {
                bail!("--shard {s}: give K/N (shard K of N, K from 0), or auto");
            };
            return Shard::new(number("K", k)?, count);
        }
        let env_number = |name: &str| -> Result<Option<u64>> {
            var(name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| anyhow!("--shard {s}: {name}={v} is not a whole number"))
                })
                .transpose()
        };
        if let Some(k) = env_number("JOB_COMPLETION_INDEX")? {
            let Some(count) = count else {
                bail!("--shard auto: JOB_COMPLETION_INDEX={k} is set but not the number of shards; give --shard auto/N (N = the Job's completions)");
            };
            return Shard::new(k, count);
        }
        if let Some(id) = env_number("SLURM_ARRAY_TASK_ID")? {
            let min = env_number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let count = match count {
                Some(c) => c,
                None => env_number("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                    anyhow!("--shard auto: SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT; give --shard auto/N")
                })?,
            };
            let k = id.checked_sub(min).ok_or_else(|| {
                anyhow!(
                    "--shard auto: SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}"
                )
            })?;
            return Shard::new(k, count);
        }
        bail!("--shard auto: neither JOB_COMPLETION_INDEX (Kubernetes Indexed Job) nor SLURM_ARRAY_TASK_ID (Slurm array) is set; give --shard K/N")
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            Shard::parse("1/3", &none).unwrap(),
            Shard { index: 1, count: 3 }
        );
        for (bad, says) in [
            ("3/2", "numbered from 0 to 1"),
            ("0/0", "at least 1"),
            ("2", "give K/N"),
            ("a/2", "not a whole number"),
            ("auto", "neither JOB_COMPLETION_INDEX"),
        ] {
            let e = Shard::parse(bad, &none).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn auto_reads_kubernetes_and_slurm() {
        let k8s = |k: &str| (k == "JOB_COMPLETION_INDEX").then(|| "2".to_string());
        assert_eq!(
            Shard::parse("auto/4", &k8s).unwrap(),
            Shard { index: 2, count: 4 }
        );
        assert!(Shard::parse("auto", &k8s).is_err());
        let slurm = |k: &str| match k {
            "SLURM_ARRAY_TASK_ID" => Some("5".to_string()),
            "SLURM_ARRAY_TASK_MIN" => Some("1".to_string()),
            "SLURM_ARRAY_TASK_COUNT" => Some("6".to_string()),
            _ => None,
        };
        assert_eq!(
            Shard::parse("auto", &slurm).unwrap(),
            Shard { index: 4, count: 6 }
        );
    }

    #[test]
    fn shards_partition_the_examples() {
        for n in 1..5u64 {
            for total in 0..11u64 {
                let shards: Vec<Shard> = (0..n).map(|k| Shard::new(k, n).unwrap()).collect();
                for i in 0..total {
                    assert_eq!(shards.iter().filter(|s| s.holds(i)).count(), 1);
                }
                let sizes: u64 = shards.iter().map(|s| s.size(total)).sum();
                assert_eq!(sizes, total);
                for s in &shards {
                    assert_eq!(
                        s.size(total),
                        (0..total).filter(|i| s.holds(*i)).count() as u64
                    );
                }
            }
        }
    }
}
