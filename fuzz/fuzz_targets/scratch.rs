//! The readers under test take paths: each input is written to a file in a folder of this
//! process's own, on tmpfs where there is one.

use std::path::{Path, PathBuf};

pub fn dir() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("keyformer-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the scratch folder");
    dir
}

/// Writes `data` to `name` in the scratch folder and returns its path.
#[allow(dead_code)] // Not every target that includes this module writes single files.
pub fn file(name: &str, data: &[u8]) -> PathBuf {
    let path = dir().join(name);
    std::fs::write(&path, data).expect("write a scratch file");
    path
}
