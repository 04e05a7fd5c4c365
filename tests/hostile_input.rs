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
        err.starts_with("config.json:")
            && err.contains("is a character device, not a regular file"),
        "{err}"
    );
}

#[test]
fn dev_null_as_the_model_is_refused() {
    let err = load_error(Path::new("/dev/null"));
    assert_eq!(
        err,
        "model: /dev/null is a character device, not a regular file"
    );
    // Through the C ABI it is a model error.
    use keyformer::ffi::*;
    let mut params = kf_model_params_default();
    params.backend = kf_backend::KF_BACKEND_CPU as i32;
    let mut m = std::ptr::null_mut();
    // SAFETY: a NUL-terminated path, valid params and a writable out pointer.
    let status = unsafe { kf_model_load(c"/dev/null".as_ptr(), &params, &mut m) };
    assert_eq!(status, kf_status::KF_ERR_MODEL);
    assert!(m.is_null());
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
        "error: model: /dev/null is a character device, not a regular file\n"
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

/// kf_generate_params_check on params edited by `edit`: (status, message).
fn c_check(edit: impl FnOnce(&mut keyformer::ffi::kf_generate_params)) -> (i32, String) {
    use keyformer::ffi::*;
    let mut p = kf_generate_params_default();
    edit(&mut p);
    // SAFETY: valid params; any stop strings the edit set outlive the call.
    let status = unsafe { kf_generate_params_check(&p) };
    // SAFETY: kf_last_error returns this thread's NUL-terminated message.
    let message = unsafe { std::ffi::CStr::from_ptr(kf_last_error()) };
    (status as i32, message.to_string_lossy().into_owned())
}

const INVALID_ARGUMENT: i32 = keyformer::ffi::kf_status::KF_ERR_INVALID_ARGUMENT as i32;

#[test]
fn cli_temperature_minus_one_is_parsed_then_refused_before_loading() {
    // The model does not exist: the parameter error must come first.
    let (ok, stderr) = cli(&[
        "--model",
        "/nonexistent/model.gguf",
        "--prompt",
        "hi",
        "--temperature",
        "-1",
    ]);
    assert!(!ok);
    assert_eq!(
        stderr,
        "error: invalid input: temperature -1 must be >= 0\n"
    );
    let (status, message) = c_check(|p| p.temperature = -1.0);
    assert_eq!(status, INVALID_ARGUMENT);
    assert_eq!(message, "invalid input: temperature -1 must be >= 0");
}

#[test]
fn cli_and_c_abi_agree_on_max_new_tokens_zero() {
    let (ok, stderr) = cli(&[
        "--model",
        "/nonexistent/model.gguf",
        "--prompt",
        "hi",
        "--max-new-tokens",
        "0",
    ]);
    assert!(!ok);
    let expected = "invalid input: max new tokens is 0: it must be at least 1";
    assert_eq!(stderr, format!("error: {expected}\n"));
    assert_eq!(
        c_check(|p| p.max_new_tokens = 0),
        (INVALID_ARGUMENT, expected.into())
    );
}

#[test]
fn cli_and_c_abi_agree_on_an_empty_stop_string() {
    let (ok, stderr) = cli(&[
        "--model",
        "/nonexistent/model.gguf",
        "--prompt",
        "hi",
        "--stop",
        "x",
        "--stop",
        "",
    ]);
    assert!(!ok);
    let expected = "invalid input: stop string 1 is empty: it would stop before the first token";
    assert_eq!(stderr, format!("error: {expected}\n"));
    let stops = [c"x".as_ptr(), c"".as_ptr()];
    let got = c_check(|p| {
        p.stop_strings = stops.as_ptr();
        p.n_stop_strings = 2;
    });
    assert_eq!(got, (INVALID_ARGUMENT, expected.into()));
}

#[test]
fn cli_cache_json_to_an_unwritable_path_fails_before_loading() {
    for flag in ["--cache-json", "--cache-map"] {
        let (ok, stderr) = cli(&[
            "--model",
            "/nonexistent/model.gguf",
            "--prompt",
            "hi",
            flag,
            "/nonexistent-dir/out",
        ]);
        assert!(!ok);
        assert!(
            stderr.starts_with(&format!(
                "error: invalid input: {flag} /nonexistent-dir/out: cannot write there:"
            )) && stderr.lines().count() == 1,
            "{stderr}"
        );
    }
}

#[test]
fn cli_and_c_abi_agree_that_budget_zero_means_the_ratio() {
    // C: kv_budget 0 is the default and leaves the budget to kv_ratio.
    assert_eq!(c_check(|p| p.cache.kv_budget = 0).0, 0);
    let Some(model) = common::smollm2_path("cli_and_c_abi_agree_that_budget_zero_means_the_ratio")
    else {
        return;
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("budget_zero");
    std::fs::create_dir_all(&dir).unwrap();
    let run = |extra: &[&str], out: &str| {
        let json = dir.join(out);
        let mut args = vec![
            "--model",
            model.to_str().unwrap(),
            "--backend",
            "cpu",
            "--prompt",
            "The capital of France is the city of",
            "--max-new-tokens",
            "3",
            "--policy",
            "h2o",
            "--cache-json",
            json.to_str().unwrap(),
        ];
        args.extend(extra);
        let (ok, stderr) = cli(&args);
        assert!(ok, "{stderr}");
        let stats: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
        stats["budget"].clone()
    };
    let with_zero = run(&["--kv-budget", "0"], "zero.json");
    let with_ratio = run(&["--kv-ratio", "0.5"], "ratio.json");
    assert_eq!(with_zero, with_ratio);
    assert!(with_zero.as_u64().is_some_and(|k| k > 0), "{with_zero}");
}

#[test]
fn batch_submit_refuses_what_the_cli_and_c_abi_refuse() {
    use keyformer::{BatchLimits, GenerateParams, Planner, Scheduler};
    let model = load(&common::fixture("tiny-gpt2")).unwrap();
    let limits = BatchLimits {
        max_batch: Some(2),
        memory: None,
    };
    let mut batch = Scheduler::new(&model, Planner::for_model(&model, &limits).unwrap());
    let zero = GenerateParams {
        max_new_tokens: 0,
        ..Default::default()
    };
    let err = batch.submit(vec![1, 2, 3], zero).unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid input: max new tokens is 0: it must be at least 1"
    );
    let empty_stop = GenerateParams {
        stop_strings: vec![String::new()],
        ..Default::default()
    };
    let err = batch
        .submit(vec![1, 2, 3], empty_stop)
        .unwrap_err()
        .to_string();
    assert!(err.contains("stop string 0 is empty"), "{err}");
    assert_eq!(batch.waiting(), 0);
}

#[test]
fn wgpu_probe_writes_nothing_to_the_host_stderr() {
    // Mesa's device-select layer printed libwayland's complaint when wgpu's instance enabled
    // the Wayland surface extension and no display was set.
    let layer = Path::new("/usr/share/vulkan/implicit_layer.d/VkLayer_MESA_device_select.json");
    if !layer.exists() {
        eprintln!("skipped: Mesa's Vulkan device-select layer is not installed, nothing to probe");
        return;
    }
    let Some(model) = common::smollm2_path("wgpu_probe_writes_nothing_to_the_host_stderr") else {
        return;
    };
    // --backend auto probes wgpu (and passes over a software adapter for the CPU).
    let out = Command::new(env!("CARGO_BIN_EXE_keyformer"))
        .args(["generate", "--model", model.to_str().unwrap()])
        .args(["--prompt", "hi", "--max-new-tokens", "1"])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DISPLAY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    if !stderr.contains("backend wgpu") {
        eprintln!("note: auto picked CUDA before probing wgpu, so this checked CUDA's probe only");
    }
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
    assert!(!stderr.lines().any(|l| l.starts_with("error")), "{stderr}");
}
