//! Quality smoke test on SmolLM2 (CPU, sized for CI): summaries of five ~1,500-token aclsum
//! papers with 64 greedy tokens at kv-ratio 0.5, each policy's output scored by ROUGE-L against
//! the full cache's output. The table is printed; the assertions are the margins measured.

mod common;

use std::path::Path;

use common::{load_cpu, smollm2_path};
use keyformer::eval::{aclsum, rouge};
use keyformer::{Budget, CacheConfig, GenerateParams, Policy};

const DOCS: usize = 5;
const PROMPT_TOKENS: usize = 1500;

#[test]
fn policies_against_the_full_cache_on_aclsum() {
    let test = "policies_against_the_full_cache_on_aclsum";
    let Some(path) = smollm2_path(test) else {
        return;
    };
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/aclsum/test.jsonl");
    if !data.exists() {
        println!(
            "SKIP {test}: {} not found (run scripts/fetch.sh)",
            data.display()
        );
        return;
    }
    let model = load_cpu(&path);
    let tok = model.tokenizer().unwrap();
    let instruction = "Summarize the following paper in three sentences.\n\n";
    let overhead = tok
        .encode(&tok.apply_chat_template(instruction).unwrap())
        .unwrap()
        .len();
    let count = |text: &str| tok.encode(text).map(|ids| ids.len()).unwrap_or(usize::MAX);
    let docs: Vec<(String, String)> = aclsum::load(&data)
        .unwrap()
        .iter()
        .map(|d| {
            (
                d.id.clone(),
                d.text_within(PROMPT_TOKENS - overhead, &count),
            )
        })
        .filter(|(_, text)| count(text) + overhead >= PROMPT_TOKENS - 100)
        .take(DOCS)
        .collect();
    assert_eq!(docs.len(), DOCS, "enough long documents");

    let mut table: Vec<(Policy, Vec<f64>)> = Policy::ALL.iter().map(|&p| (p, Vec::new())).collect();
    for (id, text) in &docs {
        let prompt = tok
            .encode(
                &tok.apply_chat_template(&format!("{instruction}{text}"))
                    .unwrap(),
            )
            .unwrap();
        let mut full_text = String::new();
        for (policy, scores) in table.iter_mut() {
            let params = GenerateParams {
                max_new_tokens: 64,
                cache: CacheConfig {
                    policy: *policy,
                    budget: Budget::Ratio(0.5),
                    ..Default::default()
                },
                ..Default::default()
            };
            let g = model.generate(&prompt, &params, &mut |_, _| true).unwrap();
            if *policy == Policy::Full {
                full_text = g.text.clone();
            }
            scores.push(rouge::rouge_l(&g.text, &full_text).f1);
            println!(
                "{id} ({} prompt tokens) {:>9}: {:?}",
                prompt.len(),
                policy.name(),
                g.text
            );
        }
    }
    println!("\nROUGE-L F1 against the full cache's output, kv-ratio 0.5, 64 greedy tokens:");
    println!(
        "| policy | {} | mean |",
        docs.iter()
            .map(|d| d.0.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    for (policy, scores) in &table {
        let cells: Vec<String> = scores.iter().map(|s| format!("{s:.3}")).collect();
        println!(
            "| {} | {} | {:.3} |",
            policy.name(),
            cells.join(" | "),
            mean(scores)
        );
    }
    let of = |p: Policy| mean(&table.iter().find(|(q, _)| *q == p).unwrap().1);
    assert_eq!(of(Policy::Full), 1.0);
    // Measured on 2026-11-26: window 0.197, streaming 0.210, h2o 0.386, keyformer 0.301.
    assert!(
        of(Policy::Keyformer) >= of(Policy::Window),
        "keyformer keeps more of the full output than the window"
    );
    assert!(
        of(Policy::H2o) >= of(Policy::Window),
        "h2o keeps more of the full output than the window"
    );
}
