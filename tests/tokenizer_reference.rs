//! Tokenizers on long real text against Hugging Face's: tests/fixtures/tokenizer_reference.json
//! holds the ids transformers gives for 30 pieces of 3,000 characters of aclsum papers
//! (tests/fixtures/make_tokenizer_reference.py says how it was made; this file builds the same
//! text). Also SmolLM2's whitespace-before-a-digit case from issue 22.

use std::path::{Path, PathBuf};

use keyformer::model::tokenizer::TextTokenizer;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The papers of data/aclsum/test.jsonl with full texts, each paragraph preceded by its
/// section heading where the section changes, joined by blank lines; cut into `pieces` pieces
/// of `chars` characters.
fn aclsum_pieces(pieces: usize, chars: usize) -> Vec<String> {
    let data = root().join("data/aclsum");
    let rows = std::fs::read_to_string(data.join("test.jsonl")).expect("data/aclsum/test.jsonl");
    let mut parts: Vec<String> = Vec::new();
    let mut len = 0;
    for line in rows.lines() {
        let id = serde_json::from_str::<Value>(line).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let path = data.join("paper_jsons").join(format!("{id}.json"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let paper: Value = serde_json::from_str(&text).unwrap();
        let mut section = String::new();
        for p in paper["pdf_parse"]["body_text"].as_array().unwrap() {
            let heading: Vec<&str> = [&p["sec_num"], &p["section"]]
                .into_iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.is_empty())
                .collect();
            let heading = heading.join(" ");
            if !heading.is_empty() && heading != section {
                len += heading.chars().count() + 2;
                parts.push(heading.clone());
                section = heading;
            }
            let text = p["text"].as_str().unwrap().to_string();
            len += text.chars().count() + 2;
            parts.push(text);
        }
        if len > pieces * chars {
            break;
        }
    }
    let text: Vec<char> = parts.join("\n\n").chars().collect();
    assert!(
        text.len() >= pieces * chars,
        "not enough text in data/aclsum"
    );
    text.chunks(chars)
        .take(pieces)
        .map(|c| c.iter().collect())
        .collect()
}

#[test]
fn long_text_ids_match_the_transformers_fixture() {
    let fixture_path = root().join("tests/fixtures/tokenizer_reference.json");
    let Ok(fixture) = std::fs::read_to_string(&fixture_path) else {
        println!(
            "SKIP: {} is absent (the lead makes it on the GPU machine with \
             tests/fixtures/make_tokenizer_reference.py)",
            fixture_path.display()
        );
        return;
    };
    if !root().join("data/aclsum/test.jsonl").exists() {
        println!("SKIP: data/aclsum is absent (run scripts/fetch.sh)");
        return;
    }
    let fixture: Value = serde_json::from_str(&fixture).unwrap();
    let n = fixture["pieces"].as_u64().unwrap() as usize;
    let chars = fixture["piece_chars"].as_u64().unwrap() as usize;
    let pieces = aclsum_pieces(n, chars);
    for (piece, prefix) in pieces.iter().zip(fixture["prefixes"].as_array().unwrap()) {
        let prefix = prefix.as_str().unwrap();
        assert!(
            piece.starts_with(prefix),
            "the text differs from the fixture's: {prefix:?} vs {:?}",
            &piece[..prefix.len().min(piece.len())]
        );
    }
    for model in fixture["models"].as_array().unwrap() {
        let gguf = root().join(model["gguf"].as_str().unwrap());
        if !gguf.exists() {
            println!("SKIP: {} is absent", gguf.display());
            continue;
        }
        let tok = TextTokenizer::load(&gguf).unwrap();
        let mut same = 0;
        let mut first_difference = None;
        for (i, (piece, expected)) in pieces
            .iter()
            .zip(model["ids"].as_array().unwrap())
            .enumerate()
        {
            let expected: Vec<u32> = expected
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let ids = tok.encode_plain(piece).unwrap();
            if ids == expected {
                same += 1;
            } else if first_difference.is_none() {
                let at = ids
                    .iter()
                    .zip(&expected)
                    .take_while(|(a, b)| a == b)
                    .count();
                let show = |ids: &[u32]| -> Vec<String> {
                    ids.iter()
                        .skip(at.saturating_sub(2))
                        .take(6)
                        .map(|&id| tok.piece(id).unwrap_or_default())
                        .collect()
                };
                first_difference = Some(format!(
                    "piece {i}, token {at}: expected {:?}, got {:?}",
                    show(&expected),
                    show(&ids)
                ));
            }
        }
        println!(
            "{}: {same}/{n} pieces match ({})",
            gguf.display(),
            model["reference"].as_str().unwrap_or("")
        );
        assert_eq!(same, n, "{}: {}", gguf.display(), first_difference.unwrap());
    }
}

fn pieces_of(tok: &TextTokenizer, text: &str) -> Vec<String> {
    tok.encode_plain(text)
        .unwrap()
        .iter()
        .map(|&id| tok.piece(id).unwrap())
        .collect()
}

#[test]
fn smollm2_keeps_a_whitespace_run_before_a_digit_whole() {
    let path = root().join(SMOLLM2);
    if !Path::new(&path).exists() {
        println!("SKIP: {} is absent (run scripts/fetch.sh)", path.display());
        return;
    }
    let tok = TextTokenizer::load(&path).unwrap();
    // llama.cpp's `smollm` pre-tokenizer, which is SmolLM2's tokenizer.json: digits are split
    // off first, so the spaces before one stay one piece (issue 22).
    assert_eq!(
        pieces_of(&tok, "Introduction\n\n   1."),
        ["Introduction", "ĊĊĠĠĠ", "1", "."]
    );
}
