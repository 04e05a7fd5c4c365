//! Regenerates include/keyformer.h from src/ffi.rs with cbindgen whenever the C API changes.
//! The header is committed, and CI fails when a build changes it (scripts/test-bindings.sh).
//! This script never fails the build: if the header cannot be made (a read-only checkout, a
//! cbindgen problem), it says so in a warning and the library builds as usual.

use std::path::Path;

fn main() {
    for input in ["src/ffi.rs", "cbindgen.toml", "include/keyformer.h"] {
        println!("cargo:rerun-if-changed={input}");
    }
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    // cbindgen unwraps in places; a panic there must not break the build either.
    let made = std::panic::catch_unwind(|| write_header(Path::new(&root)));
    match made {
        Ok(Ok(())) => {}
        Ok(Err(e)) => println!("cargo:warning=include/keyformer.h not regenerated: {e}"),
        Err(_) => println!("cargo:warning=include/keyformer.h not regenerated: cbindgen panicked"),
    }
}

fn write_header(root: &Path) -> Result<(), String> {
    let source = root.join("src/ffi.rs");
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml"))?;
    let text = std::fs::read_to_string(&source).map_err(|e| e.to_string())?;
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(&source)
        .with_header(intro_comment(&text))
        .generate()
        .map_err(|e| e.to_string())?;
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let header = root.join("include/keyformer.h");
    // Written only when it changed, so builds do not touch the tree or rebuild dependents.
    if std::fs::read(&header).ok().as_deref() != Some(fresh.as_slice()) {
        std::fs::create_dir_all(root.join("include")).map_err(|e| e.to_string())?;
        std::fs::write(&header, fresh).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The module documentation of src/ffi.rs (its `//!` lines) as a C comment.
fn intro_comment(source: &str) -> String {
    let lines: Vec<&str> = source
        .lines()
        .map_while(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    let mut comment = String::from("/*\n");
    for line in lines {
        comment.push_str(&format!(" * {line}").trim_end().replace("*/", "* /"));
        comment.push('\n');
    }
    comment.push_str(" */");
    comment
}
