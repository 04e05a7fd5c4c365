//! Input crafted to hurt the host process (issue 23): special files where a model file is
//! expected, shard paths that leave the model folder, nonsense generation parameters. Each
//! gets a one-line error that names the problem, before anything big is read or run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::scratch_copy;
use keyformer::{CpuBackend, Error, Model};

fn load(path: &Path) -> Result<Model<CpuBackend>, Error> {
    Model::load(path, CpuBackend, &mut |_, _| {})
}

fn load_error(path: &Path) -> String {
    match load(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

/// tiny-llama with its weights moved to one shard listed by model.safetensors.index.json,
/// every tensor mapped to `shard_name` (the shard itself is model-00001-of-00001.safetensors).
fn sharded_copy(test: &str, shard_name: &str) -> PathBuf {
    let dir = scratch_copy("tiny-llama", test);
    let shard = dir.join("model-00001-of-00001.safetensors");
    std::fs::rename(dir.join("model.safetensors"), &shard).unwrap();
    let bytes = std::fs::read(&shard).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let weight_map: serde_json::Map<String, serde_json::Value> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .map(|k| (k.clone(), serde_json::json!(shard_name)))
        .collect();
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    dir
}

#[test]
fn sharded_model_inside_its_folder_loads() {
    // The control for the shard tests below: the same index with a good name loads.
    let dir = sharded_copy(
        "sharded_model_inside_its_folder_loads",
        "./model-00001-of-00001.safetensors",
    );
    load(&dir).unwrap();
}

#[test]
fn shard_path_with_dotdot_is_refused() {
    let dir = sharded_copy(
        "shard_path_with_dotdot_is_refused",
        "../../../../etc/passwd",
    );
    let err = load_error(&dir);
    assert!(
        err.contains("'../../../../etc/passwd' goes up with '..'"),
        "{err}"
    );
}

#[test]
fn absolute_shard_path_is_refused() {
    let dir = sharded_copy("absolute_shard_path_is_refused", "/etc/passwd");
    let err = load_error(&dir);
    assert!(err.contains("'/etc/passwd' is an absolute path"), "{err}");
}

#[test]
fn shard_symlink_leaving_the_folder_is_refused() {
    let dir = sharded_copy(
        "shard_symlink_leaving_the_folder_is_refused",
        "escape.safetensors",
    );
    // A real safetensors file, outside the folder, reached through a link inside it.
    let outside = dir.with_file_name("shard_symlink_outside.safetensors");
    std::fs::copy(dir.join("model-00001-of-00001.safetensors"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("escape.safetensors")).unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("'escape.safetensors' resolves to") && err.contains("outside the folder"),
        "{err}"
    );
}

#[test]
fn shard_that_is_not_a_string_is_refused() {
    let dir = sharded_copy("shard_that_is_not_a_string_is_refused", "x");
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"lm_head.weight": 7}}"#,
    )
    .unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("the shard of tensor 'lm_head.weight' is 7, not a file name"),
        "{err}"
    );
}

#[test]
fn safetensors_index_from_dev_zero_is_refused() {
    let dir = sharded_copy("safetensors_index_from_dev_zero_is_refused", "x");
    let index = dir.join("model.safetensors.index.json");
    std::fs::remove_file(&index).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &index).unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("is a character device, not a regular file"),
        "{err}"
    );
}

#[test]
fn oversized_safetensors_index_is_refused() {
    let dir = sharded_copy("oversized_safetensors_index_is_refused", "x");
    // A sparse file: 3 GiB long, no blocks written.
    let file = std::fs::File::create(dir.join("model.safetensors.index.json")).unwrap();
    file.set_len(3 << 30).unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("is 3 GiB, over the 64 MiB limit for model.safetensors.index.json"),
        "{err}"
    );
}

#[test]
fn config_json_from_dev_zero_is_refused() {
    let dir = scratch_copy("tiny-llama", "config_json_from_dev_zero_is_refused");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("config.json")).unwrap();
    let err = load_error(&dir);
    assert!(
        err.starts_with("invalid input: config.json:")
            && err.contains("is a character device, not a regular file"),
        "{err}"
    );
}

#[test]
fn dev_null_as_the_model_is_refused() {
    let err = load_error(Path::new("/dev/null"));
    assert_eq!(
        err,
        "invalid input: model: /dev/null is a character device, not a regular file"
    );
}

#[test]
fn safetensors_path_that_is_a_directory_is_refused() {
    let dir = scratch_copy(
        "tiny-llama",
        "safetensors_path_that_is_a_directory_is_refused",
    );
    let file = dir.join("model.safetensors");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("safetensors file:") && err.contains("model.safetensors is a directory"),
        "{err}"
    );
}

#[test]
fn shard_that_is_dev_null_is_refused() {
    let dir = sharded_copy("shard_that_is_dev_null_is_refused", "null.safetensors");
    std::os::unix::fs::symlink("/dev/null", dir.join("null.safetensors")).unwrap();
    let err = load_error(&dir);
    // /dev/null resolves outside the folder: refused before it is ever opened.
    assert!(err.contains("outside the folder"), "{err}");
}

/// The CLI with `args` after `generate`; returns (success, stderr).
fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyformer"))
        .arg("generate")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_dev_null_model_error_is_one_clear_line() {
    let (ok, stderr) = cli(&["--model", "/dev/null", "--prompt", "hi"]);
    assert!(!ok);
    assert_eq!(
        stderr,
        "error: invalid input: model: /dev/null is a character device, not a regular file\n"
    );
}

#[test]
fn freed_model_handle_is_never_mistaken_for_a_newer_one() {
    use keyformer::ffi::*;
    let path = std::ffi::CString::new(common::fixture("tiny-gpt2").to_str().unwrap()).unwrap();
    let mut params = kf_model_params_default();
    params.backend = kf_backend::KF_BACKEND_CPU as i32;
    let load = || {
        let mut m = std::ptr::null_mut();
        // SAFETY: a NUL-terminated path, valid params and a writable out pointer.
        let status = unsafe { kf_model_load(path.as_ptr(), &params, &mut m) };
        assert_eq!(status, kf_status::KF_OK);
        m
    };
    let mut freed = Vec::new();
    // The allocator tends to reuse a freed model's memory for the next one of the same size.
    for _ in 0..8 {
        let m = load();
        assert!(
            !freed.contains(&m),
            "a new model got a freed model's handle"
        );
        assert_eq!(kf_model_free(m), kf_status::KF_OK);
        freed.push(m);
    }
    let live = load();
    for &old in &freed {
        let mut info = std::mem::MaybeUninit::<kf_model_info>::uninit();
        // SAFETY: `info` is writable; the handle is what is under test.
        let status = unsafe { kf_model_describe(old, info.as_mut_ptr()) };
        assert_eq!(status, kf_status::KF_ERR_INVALID_HANDLE);
        assert_eq!(kf_model_free(old), kf_status::KF_ERR_INVALID_HANDLE);
    }
    assert_eq!(kf_model_free(live), kf_status::KF_OK);
}
