//! A tiny `keyformer eval` sweep end to end on the CPU (2 papers, 2 ratios, 2 policies):
//! the results, tables and plots exist and parse, and `eval report` rewrites the same tables
//! from the JSON.

mod common;

use std::path::Path;
use std::process::Command;

fn check_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[1..4], b"PNG", "{}", path.display());
}

#[test]
fn tiny_summarize_and_perplexity_sweeps() {
    let test = "tiny_summarize_and_perplexity_sweeps";
    let Some(model) = common::smollm2_path(test) else {
        return;
    };
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/aclsum");
    if !data.join("paper_jsons").exists() {
        println!(
            "SKIP {test}: {} not found (run scripts/fetch.sh)",
            data.display()
        );
        return;
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
    let _ = std::fs::remove_dir_all(&out);
    let run = |args: &[&str]| {
        let status = Command::new(env!("CARGO_BIN_EXE_keyformer"))
            .args(["eval"])
            .args(args)
            .args([
                "--model",
                model.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
            ])
            .args([
                "--policies",
                "full,keyformer",
                "--ratios",
                "0.3,0.5",
                "--backend",
                "cpu",
            ])
            .args(["--out", out.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success(), "{args:?}");
    };
    run(&[
        "summarize",
        "--docs",
        "2",
        "--prompt-tokens",
        "300",
        "--new-tokens",
        "8",
    ]);
    run(&["perplexity", "--tokens", "64"]);

    let summaries: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("summaries.json")).unwrap())
            .unwrap();
    // Per paper: the full cache once, keyformer at two ratios.
    assert_eq!(summaries.len(), 2 * 3);
    for s in &summaries {
        let f1 = s["vs_full"]["rouge_l"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&f1));
        assert!(s["prompt_tokens"].as_u64().unwrap() >= 100);
    }
    let ppl: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("perplexity.json")).unwrap())
            .unwrap();
    assert_eq!(ppl.len(), 3);
    assert!(
        ppl.iter()
            .all(|r| r["perplexity"].as_f64().unwrap().is_finite())
    );
    let table = std::fs::read_to_string(out.join("summaries.md")).unwrap();
    assert!(table.contains("| keyformer |"), "{table}");
    for png in [
        "rouge_l_vs_reference.png",
        "rouge_l_vs_full.png",
        "perplexity.png",
    ] {
        check_png(&out.join(png));
    }

    // The tables rewritten from the recorded JSON are the ones the runs wrote.
    let written: Vec<String> = ["summaries.md", "perplexity.md"]
        .iter()
        .map(|f| std::fs::read_to_string(out.join(f)).unwrap())
        .collect();
    for f in ["summaries.md", "perplexity.md"] {
        std::fs::remove_file(out.join(f)).unwrap();
    }
    let status = Command::new(env!("CARGO_BIN_EXE_keyformer"))
        .args([
            "eval",
            "report",
            out.to_str().unwrap(),
            "--ratios",
            "0.3,0.5",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    for (f, before) in ["summaries.md", "perplexity.md"].iter().zip(&written) {
        assert_eq!(
            &std::fs::read_to_string(out.join(f)).unwrap(),
            before,
            "{f}"
        );
    }
}
