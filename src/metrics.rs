//! Classification metrics: accuracy, confusion matrix, per-class precision/recall/F1.
//!
//! With more than [`MANY_CLASSES`] classes the metrics stay small: the confusion matrix is
//! kept as its nonzero entries (`confusion_nonzero`, `[true, predicted, count]`) instead of
//! `confusion`, and `per_class` lists only classes that occur (as label or prediction).

use serde::Serialize;

/// Above this many classes, reports summarise (worst classes, top confusions) instead of
/// listing every class, and the confusion matrix is kept sparse.
pub const MANY_CLASSES: usize = 20;

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
    /// Sorted by class; every class up to [`MANY_CLASSES`] classes, above that only the
    /// classes with examples or predictions.
    pub per_class: Vec<ClassMetrics>,
    /// Rows: true class, columns: predicted class (up to [`MANY_CLASSES`] classes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub confusion: Vec<Vec<u64>>,
    /// Above [`MANY_CLASSES`] classes: the nonzero entries `[true, predicted, count]`,
    /// sorted by true then predicted class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confusion_nonzero: Option<Vec<[u64; 3]>>,
}

impl CleanMetrics {
    /// The metrics of class `c`, if listed.
    pub fn class(&self, c: usize) -> Option<&ClassMetrics> {
        self.per_class
            .binary_search_by_key(&c, |m| m.class)
            .ok()
            .map(|i| &self.per_class[i])
    }

    /// The nonzero entries of the confusion matrix, `(true, predicted, count)`, sorted by
    /// true then predicted class.
    pub fn nonzero(&self) -> Vec<(usize, usize, u64)> {
        match &self.confusion_nonzero {
            Some(v) => v
                .iter()
                .map(|e| (e[0] as usize, e[1] as usize, e[2]))
                .collect(),
            None => self
                .confusion
                .iter()
                .enumerate()
                .flat_map(|(t, row)| {
                    row.iter()
                        .enumerate()
                        .filter(|(_, c)| **c > 0)
                        .map(move |(p, c)| (t, p, *c))
                })
                .collect(),
        }
    }

    /// The `n` most frequent confusions (true class != predicted), most frequent first.
    pub fn top_confusions(&self, n: usize) -> Vec<(usize, usize, u64)> {
        let mut v: Vec<_> = self.nonzero().into_iter().filter(|e| e.0 != e.1).collect();
        v.sort_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        v.truncate(n);
        v
    }

    /// The `n` classes with examples and the lowest recall (ties: more examples first).
    pub fn worst_classes(&self, n: usize) -> Vec<&ClassMetrics> {
        let mut v: Vec<&ClassMetrics> = self.per_class.iter().filter(|m| m.support > 0).collect();
        v.sort_by(|a, b| {
            a.recall
                .unwrap_or(0.0)
                .total_cmp(&b.recall.unwrap_or(0.0))
                .then(b.support.cmp(&a.support))
                .then(a.class.cmp(&b.class))
        });
        v.truncate(n);
        v
    }
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
        let many = k > MANY_CLASSES;
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
            .filter(|m| !many || m.support > 0 || m.predicted > 0)
            .collect();
        let (confusion, confusion_nonzero) = if many {
            let nz = (0..k * k)
                .filter(|i| self.counts[*i] > 0)
                .map(|i| [(i / k) as u64, (i % k) as u64, self.counts[i]])
                .collect();
            (vec![], Some(nz))
        } else {
            let dense = (0..k)
                .map(|t| (0..k).map(|p| self.get(t, p)).collect())
                .collect();
            (dense, None)
        };
        CleanMetrics {
            labelled,
            correct,
            accuracy: ratio(correct, labelled),
            per_class,
            confusion,
            confusion_nonzero,
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
    fn many_classes_are_kept_sparse() {
        let k = 1000;
        let mut c = Confusion::new(k);
        for (t, p) in [(3, 3), (3, 7), (3, 7), (999, 0), (5, 5)] {
            c.add(t, p);
        }
        let m = c.metrics();
        assert!(m.confusion.is_empty());
        assert_eq!(
            m.confusion_nonzero.as_deref().unwrap(),
            &[[3, 3, 1], [3, 7, 2], [5, 5, 1], [999, 0, 1]]
        );
        // classes 0, 3, 5, 7, 999 occur
        let listed: Vec<usize> = m.per_class.iter().map(|x| x.class).collect();
        assert_eq!(listed, vec![0, 3, 5, 7, 999]);
        assert_eq!(m.class(7).unwrap().predicted, 2);
        assert!(m.class(8).is_none());
        assert_eq!(m.top_confusions(5), vec![(3, 7, 2), (999, 0, 1)]);
        let worst: Vec<usize> = m.worst_classes(2).iter().map(|x| x.class).collect();
        assert_eq!(worst, vec![999, 3]);
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.len() < 2000, "{}", json.len());
        assert!(!json.contains("\"confusion\""), "{json}");
        // Few classes: dense, and nonzero() reads it the same way.
        let mut c = Confusion::new(3);
        c.add(2, 1);
        let m = c.metrics();
        assert_eq!(m.per_class.len(), 3);
        assert!(m.confusion_nonzero.is_none());
        assert_eq!(m.nonzero(), vec![(2, 1, 1)]);
    }

    #[test]
    fn argmax_first_max() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }
}
