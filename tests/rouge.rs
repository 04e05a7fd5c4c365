//! ROUGE against Google's rouge-score package: 25 (candidate, reference) pairs whose scores
//! tests/fixtures/rouge/make_rouge_fixture.py computed with it.

mod common;

use keyformer::eval::rouge::{Score, rouge_l, rouge_n};

#[test]
fn matches_rouge_score() {
    let text =
        std::fs::read_to_string(common::fixture("rouge/rouge_score_reference.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() >= 20);
    let close = |got: Score, want: &serde_json::Value, what: &str| {
        let want: Vec<f64> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (g, w) in [got.precision, got.recall, got.f1].iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6, "{what}: {got:?} vs {want:?}");
        }
    };
    for case in &cases {
        let (c, r) = (
            case["candidate"].as_str().unwrap(),
            case["reference"].as_str().unwrap(),
        );
        close(
            rouge_n(c, r, 1),
            &case["rouge1"],
            &format!("rouge1 of {c:?}"),
        );
        close(
            rouge_n(c, r, 2),
            &case["rouge2"],
            &format!("rouge2 of {c:?}"),
        );
        close(rouge_l(c, r), &case["rougeL"], &format!("rougeL of {c:?}"));
    }
}
