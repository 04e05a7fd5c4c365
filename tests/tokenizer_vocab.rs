//! llama.cpp's tokenizer test vocabularies: every case of `ggml-vocab-NAME.gguf.inp` must
//! tokenize to exactly the ids on the same line of `.out`, which llama.cpp's authors produced
//! with each model's own Hugging Face tokenizer (tests/test-tokenizer-0.cpp reads them the same
//! way: cases separated by a "__ggml_vocab_test__" line, no BOS, special tokens not parsed).
//! scripts/fetch.sh puts the files in data/vocab/.

use std::path::{Path, PathBuf};

use keyformer::model::tokenizer::TextTokenizer;

const VOCABS: [&str; 6] = [
    "gpt-2",
    "llama-bpe",
    "llama-spm",
    "qwen2",
    "phi-3",
    "starcoder",
];

fn vocab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/vocab")
}

/// The (input, expected ids) cases of one vocabulary.
fn read_cases(gguf: &Path) -> Vec<(String, Vec<u32>)> {
    let read = |ext: &str| {
        let path = gguf.with_extension(format!("gguf.{ext}"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let (inputs, outputs) = (read("inp"), read("out"));
    let separator = "\n__ggml_vocab_test__\n";
    let mut cases: Vec<&str> = inputs.split(separator).collect();
    // The file ends with a separator, which leaves nothing after it.
    if cases.last() == Some(&"") {
        cases.pop();
    }
    let expected: Vec<Vec<u32>> = outputs
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(|id| id.parse().expect("an id"))
                .collect()
        })
        .collect();
    assert_eq!(
        cases.len(),
        expected.len(),
        "{}: input and output case counts differ",
        gguf.display()
    );
    cases
        .into_iter()
        .map(str::to_string)
        .zip(expected)
        .collect()
}

#[test]
fn llama_cpp_vocab_cases_tokenize_to_the_expected_ids() {
    let dir = vocab_dir();
    if !dir.join("ggml-vocab-starcoder.gguf.out").exists() {
        println!(
            "SKIP: llama.cpp's vocabulary test files are not in {} (run scripts/fetch.sh)",
            dir.display()
        );
        return;
    }
    let mut failures = Vec::new();
    for name in VOCABS {
        let gguf = dir.join(format!("ggml-vocab-{name}.gguf"));
        let tok = TextTokenizer::load(&gguf).unwrap_or_else(|e| panic!("{name}: {e}"));
        let cases = read_cases(&gguf);
        let mut passed = 0;
        for (text, expected) in &cases {
            let ids = tok.encode_plain(text).expect("encode");
            if &ids == expected {
                passed += 1;
                continue;
            }
            let pieces = |ids: &[u32]| -> Vec<String> {
                ids.iter()
                    .map(|&id| tok.piece(id).unwrap_or_default())
                    .collect()
            };
            failures.push(format!(
                "{name}: {text:?}\n  expected {expected:?} {:?}\n  got      {ids:?} {:?}",
                pieces(expected),
                pieces(&ids)
            ));
        }
        println!("{name}: {passed}/{} cases pass", cases.len());
    }
    assert!(
        failures.is_empty(),
        "{} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn llama_cpp_vocab_files_decode_back_to_their_text() {
    let dir = vocab_dir();
    if !dir.join("ggml-vocab-starcoder.gguf.out").exists() {
        println!(
            "SKIP: llama.cpp's vocabulary test files are not in {} (run scripts/fetch.sh)",
            dir.display()
        );
        return;
    }
    for name in VOCABS {
        let gguf = dir.join(format!("ggml-vocab-{name}.gguf"));
        let tok = TextTokenizer::load(&gguf).unwrap();
        let mut same = 0;
        let cases = read_cases(&gguf);
        for (text, expected) in &cases {
            // Decoding the reference ids gives the text back; SentencePiece drops the one
            // space its prefix added, which for a text starting with spaces is the first one.
            let decoded = tok.decode(expected).unwrap();
            assert_eq!(&decoded, text, "{name}: decoding {expected:?}");
            same += 1;
        }
        println!("{name}: {same}/{} cases decode back", cases.len());
    }
}
