//! ROUGE-N and ROUGE-L F-measures with the tokenisation of Google's `rouge-score` package
//! (no stemming): lowercase, every run of characters other than a-z and 0-9 separates tokens.

use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Score {
    fn from_counts(overlap: usize, candidate: usize, reference: usize) -> Score {
        let precision = if candidate == 0 {
            0.0
        } else {
            overlap as f64 / candidate as f64
        };
        let recall = if reference == 0 {
            0.0
        } else {
            overlap as f64 / reference as f64
        };
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        Score {
            precision,
            recall,
            f1,
        }
    }
}

pub fn tokenize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect()
}

/// ROUGE-N: overlap of n-gram counts.
pub fn rouge_n(candidate: &str, reference: &str, n: usize) -> Score {
    fn grams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
        let mut counts = HashMap::new();
        for g in tokens.windows(n) {
            *counts.entry(g).or_default() += 1;
        }
        counts
    }
    let (c, r) = (tokenize(candidate), tokenize(reference));
    let (cg, rg) = (grams(&c, n), grams(&r, n));
    let overlap = cg
        .iter()
        .map(|(g, &k)| k.min(*rg.get(g).unwrap_or(&0)))
        .sum();
    Score::from_counts(overlap, cg.values().sum(), rg.values().sum())
}

/// ROUGE-L: longest common subsequence of the token sequences.
pub fn rouge_l(candidate: &str, reference: &str) -> Score {
    let (c, r) = (tokenize(candidate), tokenize(reference));
    let mut row = vec![0usize; r.len() + 1];
    for ct in &c {
        let mut diagonal = 0;
        for (j, rt) in r.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ct == rt {
                diagonal + 1
            } else {
                row[j + 1].max(row[j])
            };
            diagonal = above;
        }
    }
    Score::from_counts(row[r.len()], c.len(), r.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_texts_score_one() {
        assert_eq!(rouge_l("The cat sat.", "the CAT sat").f1, 1.0);
        assert_eq!(rouge_n("a b c", "a b c", 2).f1, 1.0);
    }

    #[test]
    fn lcs_by_hand() {
        // LCS of "a b c d e" and "a x c y e" is "a c e": P = R = 3/5.
        let s = rouge_l("a b c d e", "a x c y e");
        assert!((s.f1 - 0.6).abs() < 1e-12);
    }
}
