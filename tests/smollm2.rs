//! SmolLM2-135M-Instruct (GGUF, Q4_1 with Q8_0 embeddings) on the CPU backend against
//! transformers' f32 reference (tests/fixtures/smollm2/reference.json, from make_fixtures.py).

mod common;

use std::sync::OnceLock;

use common::{fixture, load_cpu, smollm2_path};
use keyformer::{CpuBackend, GenerateParams, Model};
use serde_json::Value;

fn reference() -> Value {
    let text = std::fs::read_to_string(fixture("smollm2/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// One model shared by the tests of this file (loading dequantizes 98 MB of weights).
fn model(test: &str) -> Option<&'static Model<CpuBackend>> {
    static MODEL: OnceLock<Option<Model<CpuBackend>>> = OnceLock::new();
    let path = smollm2_path(test)?;
    MODEL.get_or_init(|| Some(load_cpu(&path))).as_ref()
}

#[test]
fn tokenizer_matches_transformers() {
    let Some(m) = model("tokenizer_matches_transformers") else {
        return;
    };
    let tok = m.tokenizer().unwrap();
    let cases = reference()["tokenizer"].as_array().unwrap().clone();
    assert!(cases.len() >= 20);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text).unwrap(),
            ids(&case["ids"]),
            "ids of {text:?}"
        );
        assert_eq!(
            tok.decode(&ids(&case["ids"])).unwrap(),
            text,
            "decode of {text:?}"
        );
    }
}

#[test]
fn chat_template_matches_transformers() {
    let Some(m) = model("chat_template_matches_transformers") else {
        return;
    };
    let chat = &reference()["chat"];
    let rendered = m
        .tokenizer()
        .unwrap()
        .apply_chat_template(chat["message"].as_str().unwrap())
        .unwrap();
    assert_eq!(rendered, chat["rendered"].as_str().unwrap());
}

#[test]
fn next_token_logits_match_transformers() {
    let Some(m) = model("next_token_logits_match_transformers") else {
        return;
    };
    let r = &reference()["next_token"];
    let prompt = m
        .tokenizer()
        .unwrap()
        .encode(r["prompt"].as_str().unwrap())
        .unwrap();
    assert_eq!(prompt, ids(&r["ids"]));
    assert_eq!(prompt, [504, 3575, 282, 4649, 314]);
    let mut s = m.new_session(prompt.len()).unwrap();
    let logits = m.forward(&mut s, &prompt, false).unwrap();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let top_ids = ids(&r["top_ids"]);
    for (rank, (want_id, want_logit)) in top_ids
        .iter()
        .zip(r["top_logits"].as_array().unwrap())
        .take(3)
        .enumerate()
    {
        let got = logits[*want_id as usize];
        let want = want_logit.as_f64().unwrap() as f32;
        println!("rank {rank}: token {want_id} logit {got:.3} (transformers {want:.3})");
        assert_eq!(order[rank] as u32, *want_id, "rank {rank}");
        assert!(
            (got - want).abs() <= 0.05,
            "token {want_id}: {got} vs {want}"
        );
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    let Some(m) = model("greedy_generation_matches_transformers") else {
        return;
    };
    let r = &reference()["greedy"];
    let prompt = m
        .tokenizer()
        .unwrap()
        .encode(r["prompt"].as_str().unwrap())
        .unwrap();
    let params = GenerateParams {
        max_new_tokens: 12,
        ..Default::default()
    };
    let mut streamed = String::new();
    let g = m
        .generate(&prompt, &params, &mut |_, piece| {
            streamed.push_str(piece);
            true
        })
        .unwrap();
    assert_eq!(g.tokens, ids(&r["tokens"]));
    assert_eq!(g.text, r["text"].as_str().unwrap());
    assert_eq!(streamed, g.text, "streamed pieces add up to the text");
}

#[test]
fn perplexity_matches_transformers() {
    let Some(m) = model("perplexity_matches_transformers") else {
        return;
    };
    let r = &reference()["perplexity"];
    let passage = ids(&r["ids"]);
    assert_eq!(passage.len(), 256);
    let encoded = m
        .tokenizer()
        .unwrap()
        .encode(r["text"].as_str().unwrap())
        .unwrap();
    assert_eq!(&encoded[..256], &passage[..]);
    let mut s = m.new_session(passage.len()).unwrap();
    let logits = m.forward(&mut s, &passage, true).unwrap();
    let vocab = m.config.vocab_size;
    let nll: f64 = (0..passage.len() - 1)
        .map(|i| {
            let row = &logits[i * vocab..(i + 1) * vocab];
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            lse - row[passage[i + 1] as usize] as f64
        })
        .sum::<f64>()
        / (passage.len() - 1) as f64;
    let ppl = nll.exp();
    let want = r["perplexity"].as_f64().unwrap();
    println!("perplexity {ppl:.4} (transformers {want:.4})");
    assert!((ppl - want).abs() / want <= 0.01, "{ppl} vs {want}");
}
