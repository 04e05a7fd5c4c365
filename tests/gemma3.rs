//! Gemma-3-270M (its own Q4_K_M GGUF, fetched by scripts/fetch.sh) on the CPU backend in f32
//! against transformers loading the same file (tests/fixtures/gemma3/reference.json, from
//! tests/fixtures/make_gemma3_reference.py): next-token logits of three prompts, 16 greedy
//! tokens, and the perplexity of 2,048 tokens of aclsum text. Its 18 layers interleave five
//! local layers (a window of 512) with each global one, so the perplexity text runs past the
//! window.

mod common;

use std::sync::OnceLock;

use common::{fixture, load_cpu};
use keyformer::{CpuBackend, GenerateParams, Model};
use serde_json::Value;

fn reference() -> Value {
    let text = std::fs::read_to_string(fixture("gemma3/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    let items = v.as_array().unwrap().iter();
    items.map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The model, shared by the tests of this file; None (and a printed SKIP) when absent.
fn model(test: &str) -> Option<&'static Model<CpuBackend>> {
    static MODEL: OnceLock<Option<Model<CpuBackend>>> = OnceLock::new();
    let path = common::gemma3_path(test)?;
    MODEL.get_or_init(|| Some(load_cpu(&path))).as_ref()
}

#[test]
fn gemma3_tokenizer_gives_the_reference_prompt_ids() {
    let Some(m) = model("gemma3_tokenizer_gives_the_reference_prompt_ids") else {
        return;
    };
    // The script's inputs are keyformer's ids; these are Gemma's own pieces for them.
    let tok = m.tokenizer().unwrap();
    for n in reference()["next_token"].as_array().unwrap().iter().take(2) {
        let text = n["prompt"].as_str().unwrap();
        assert_eq!(tok.encode(text).unwrap(), ids(&n["ids"]), "{text}");
    }
}

#[test]
fn gemma3_next_token_logits_match_transformers() {
    let Some(m) = model("gemma3_next_token_logits_match_transformers") else {
        return;
    };
    for n in reference()["next_token"].as_array().unwrap() {
        let prompt = ids(&n["ids"]);
        let mut s = m.new_session(prompt.len()).unwrap();
        let logits = m.forward(&mut s, &prompt, false).unwrap();
        let want = n["top_logits"].as_array().unwrap();
        let mut worst = 0f32;
        for (id, want) in ids(&n["top_ids"]).iter().zip(want) {
            let diff = (logits[*id as usize] - want.as_f64().unwrap() as f32).abs();
            worst = worst.max(diff);
        }
        let best = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b]));
        println!("{:?}: top-20 logits within {worst:.2e}", n["prompt"]);
        assert_eq!(best, Some(ids(&n["top_ids"])[0] as usize));
        assert!(worst <= 1e-2, "{}: {worst}", n["prompt"]);
    }
}

#[test]
fn gemma3_greedy_tokens_match_transformers() {
    let Some(m) = model("gemma3_greedy_tokens_match_transformers") else {
        return;
    };
    let r = &reference()["greedy"];
    let params = GenerateParams {
        max_new_tokens: 16,
        stop_at_eos: false,
        ..Default::default()
    };
    let g = m
        .generate(&ids(&r["ids"]), &params, &mut |_, _| true)
        .unwrap();
    println!("greedy: {:?}", g.text);
    assert_eq!(g.tokens, ids(&r["tokens"]));
}

#[test]
fn gemma3_perplexity_past_the_local_window_matches_transformers() {
    let Some(m) = model("gemma3_perplexity_past_the_local_window_matches_transformers") else {
        return;
    };
    let text = std::fs::read_to_string(fixture("gemma3/perplexity_ids.json")).unwrap();
    let passage = ids(&serde_json::from_str(&text).unwrap());
    let want = reference()["perplexity"]["perplexity"].as_f64().unwrap();
    let mut s = m.new_session(passage.len()).unwrap();
    let logits = m.forward(&mut s, &passage, true).unwrap();
    let vocab = m.config.vocab_size;
    let nll: f64 = (0..passage.len() - 1)
        .map(|i| {
            let row = &logits[i * vocab..(i + 1) * vocab];
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            max + sum.ln() - row[passage[i + 1] as usize] as f64
        })
        .sum::<f64>()
        / (passage.len() - 1) as f64;
    let got = nll.exp();
    println!(
        "perplexity of {} tokens: {got:.4} (transformers {want:.4})",
        passage.len()
    );
    assert!((got - want).abs() / want <= 0.01, "{got} vs {want}");
}
