//! Classification metrics: accuracy, confusion matrix, per-class precision/recall/F1.

use serde::Serialize;

/// Counts of (true label, predicted label) pairs.
#[derive(Clone, Debug)]
pub struct Confusion {
    k: usize,
    counts: Vec<u64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClassMetrics {
    pub class: usize,
    pub support: u64,
    pub predicted: u64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CleanMetrics {
    pub labelled: u64,
    pub correct: u64,
    pub accuracy: Option<f64>,
    pub per_class: Vec<ClassMetrics>,
    /// Rows: true class, columns: predicted class.
    pub confusion: Vec<Vec<u64>>,
}

impl Confusion {
    pub fn new(k: usize) -> Self {
        Confusion {
            k,
            counts: vec![0; k * k],
        }
    }

    /// Records one example; both indices must be `< k`.
    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.counts[truth * self.k + predicted] += 1;
    }

    pub fn get(&self, truth: usize, predicted: usize) -> u64 {
        self.counts[truth * self.k + predicted]
    }

    pub fn metrics(&self) -> CleanMetrics {
        let k = self.k;
        let labelled: u64 = self.counts.iter().sum();
        let correct: u64 = (0..k).map(|c| self.get(c, c)).sum();
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let per_class = (0..k)
            .map(|c| {
                let tp = self.get(c, c);
                let support: u64 = (0..k).map(|p| self.get(c, p)).sum();
                let predicted: u64 = (0..k).map(|t| self.get(t, c)).sum();
                let precision = ratio(tp, predicted);
                let recall = ratio(tp, support);
                let f1 = match (precision, recall) {
                    (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
                    (Some(_), Some(_)) => Some(0.0),
                    _ => None,
                };
                ClassMetrics {
                    class: c,
                    support,
                    predicted,
                    precision,
                    recall,
                    f1,
                }
            })
            .collect();
        CleanMetrics {
            labelled,
            correct,
            accuracy: ratio(correct, labelled),
            per_class,
            confusion: (0..k)
                .map(|t| (0..k).map(|p| self.get(t, p)).collect())
                .collect(),
        }
    }
}

/// Index of the largest value (first on ties; NaN never wins).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_recall_f1_by_hand() {
        let mut c = Confusion::new(3);
        // truth 0: predicted 0,0,1 ; truth 1: predicted 1 ; truth 2: predicted 0
        for (t, p) in [(0, 0), (0, 0), (0, 1), (1, 1), (2, 0)] {
            c.add(t, p);
        }
        let m = c.metrics();
        assert_eq!(m.labelled, 5);
        assert_eq!(m.correct, 3);
        assert_eq!(m.accuracy, Some(0.6));
        let c0 = &m.per_class[0];
        assert_eq!(c0.precision, Some(2.0 / 3.0));
        assert_eq!(c0.recall, Some(2.0 / 3.0));
        let c2 = &m.per_class[2];
        assert_eq!(c2.precision, None);
        assert_eq!(c2.recall, Some(0.0));
        assert_eq!(m.confusion[2], vec![1, 0, 0]);
    }

    #[test]
    fn argmax_first_max() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }
}
