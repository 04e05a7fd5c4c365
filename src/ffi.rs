//! keyformer's C API: run decoder-only language models with a Keyformer-reduced KV cache.
//!
//! OBJECTS. A kf_model is a loaded model (kf_model_load, kf_model_free). A kf_session is a
//! chat that keeps its KV cache between turns (kf_session_new, kf_session_free). A kf_batch
//! decodes many requests on one model together (kf_batch_new, kf_batch_free). All are opaque
//! handles. Parameter structs start from their kf_*_default() function; then set the fields
//! you need.
//!
//! ERRORS. Every function that can fail returns a kf_status: KF_OK (0) or an error code, and
//! kf_last_error() then gives the calling thread's message. Bad input never crashes the
//! process: a NULL argument, a freed or foreign handle, invalid UTF-8, a zero-size buffer or a
//! parameter out of range each give an error code with a message, and an internal error (a
//! Rust panic) is caught and reported as KF_ERR_INTERNAL. Out arguments are written only on
//! KF_OK, except where a function says otherwise.
//!
//! OWNERSHIP. Strings are NUL-terminated UTF-8. The library keeps no pointer the caller passed
//! after the call returns, and frees none. What it returns is borrowed unless a function says
//! to free it: handles with their own free function, text from the *_alloc functions with
//! kf_string_free. Free functions accept NULL.
//!
//! BUFFERS. Where a function fills a caller buffer (a pointer and its size), NULL with size 0
//! means no buffer, and a non-NULL buffer of size 0 is an error (KF_ERR_INVALID_ARGUMENT). A
//! buffer too small gets what fits, the size needed is reported, and the call returns
//! KF_ERR_BUFFER_TOO_SMALL.
//!
//! THREADS. Every function may be called from any thread. A model runs one call at a time:
//! kf_generate, kf_loglik, kf_tokenize, kf_session_chat, kf_session_cache_positions (on any
//! of its sessions), kf_batch_new, kf_batch_submit and kf_batch_run (on any of its batches)
//! hold it for the whole call, and another such call on the same model, from another thread
//! or from inside a callback of the running one, fails at once with KF_ERR_BUSY; nothing
//! waits. Load one model per thread to run them in parallel.
//! kf_cache_stats, kf_session_cache_stats, kf_model_describe, kf_last_error and kf_version never
//! wait and never fail busy: call them from a callback, or from another thread while a
//! generation runs. A callback runs on the thread that made the call, before the call returns,
//! and must return normally (no longjmp, no C++ exception through the library). Freeing a
//! handle makes it invalid at once and for good (a handle is never given out twice, so it
//! never names an object made later); the object itself is released when the last call using it
//! has returned (a model, when its last session is freed too).
#![allow(non_camel_case_types)]

mod batch;
mod convert;
mod handles;
mod run;
mod status;

use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::Mutex;

use crate::engine::select::AnyModel;
use handles::{BatchHandle, ModelHandle, SessionHandle};
use run::{Callback, TextOut};
use status::{guard, out_arg, slice_arg, str_arg};

/// The version of this header's ABI: kf_abi_version() returns the library's.
pub const KF_ABI_VERSION: u32 = 1;

/// What a call returned. Every error comes with a message from kf_last_error().
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum kf_status {
    KF_OK = 0,
    /// A required pointer argument is NULL.
    KF_ERR_NULL_ARGUMENT = 1,
    /// A parameter is out of range, or the input is unusable (an empty prompt, one longer than
    /// the model's context, a budget below the policy's minimum, a zero-size buffer).
    KF_ERR_INVALID_ARGUMENT = 2,
    /// A string argument is not valid UTF-8.
    KF_ERR_INVALID_UTF8 = 3,
    /// A handle that was freed already, was never made by keyformer, or is of the wrong kind.
    KF_ERR_INVALID_HANDLE = 4,
    /// A caller buffer is too small: it holds what fits, and the size needed is reported.
    KF_ERR_BUFFER_TOO_SMALL = 5,
    /// The model or session is running another call (see THREADS above).
    KF_ERR_BUSY = 6,
    /// The model path does not exist.
    KF_ERR_NOT_FOUND = 7,
    /// A file could not be read.
    KF_ERR_IO = 8,
    /// The model's files are malformed or unsupported (architecture, tensor type, tokenizer,
    /// missing chat template).
    KF_ERR_MODEL = 9,
    /// The backend is not available (not built in, no device, no driver) or failed.
    KF_ERR_BACKEND = 10,
    /// The object cannot do this now: a session or model with no generation yet, or one left
    /// unusable by an earlier failure (then free it).
    KF_ERR_INVALID_STATE = 11,
    /// A bug inside keyformer, caught at the boundary.
    KF_ERR_INTERNAL = 12,
}

/// Where a model runs (kf_model_params.backend).
#[repr(C)]
pub enum kf_backend {
    /// CUDA if a GPU and its libraries are present, else wgpu if a Vulkan, Metal or DX12
    /// adapter is (a software one included), else the CPU.
    KF_BACKEND_AUTO = 0,
    KF_BACKEND_CPU = 1,
    KF_BACKEND_CUDA = 2,
    /// WGSL compute shaders through wgpu; device is the adapter's index.
    KF_BACKEND_WGPU = 3,
}

/// Weight and KV-cache storage on a GPU (kf_model_params.dtype): F16 (on wgpu, where the
/// adapter has it, else F32), BF16 (CUDA only) or F32. The CPU computes in f32.
#[repr(C)]
pub enum kf_dtype {
    KF_DTYPE_F16 = 0,
    KF_DTYPE_BF16 = 1,
    KF_DTYPE_F32 = 2,
}

/// Which KV-cache entries are kept (kf_cache_params.policy).
#[repr(C)]
#[derive(Clone, Copy)]
pub enum kf_policy {
    /// Keep every token.
    KF_POLICY_FULL = 0,
    /// The most recent tokens only.
    KF_POLICY_WINDOW = 1,
    /// StreamingLLM: attention sinks plus the most recent tokens.
    KF_POLICY_STREAMING = 2,
    /// Heavy hitters by accumulated attention, plus a recent window.
    KF_POLICY_H2O = 3,
    /// Key tokens by Gumbel-noise attention score at a rising temperature, plus a recent window.
    KF_POLICY_KEYFORMER = 4,
}

/// Why a generation ended.
#[repr(C)]
pub enum kf_stop_reason {
    KF_STOP_MAX_TOKENS = 0,
    /// The model produced an end-of-sequence token (not part of the text).
    KF_STOP_EOS = 1,
    /// The text reached a stop string (the text ends before it).
    KF_STOP_STOP_STRING = 2,
    /// The token callback returned non-zero.
    KF_STOP_CALLBACK = 3,
    /// The model's context length was reached.
    KF_STOP_CONTEXT = 4,
}

/// A loaded model (opaque).
pub struct kf_model {
    _opaque: [u8; 0],
}

/// A chat that keeps its KV cache between turns (opaque).
pub struct kf_session {
    _opaque: [u8; 0],
}

/// Requests decoded together on one model (opaque).
pub struct kf_batch {
    _opaque: [u8; 0],
}

/// How a batch admits requests; start from kf_batch_params_default(). Requests run in order
/// of submission, as many at once as these allow; the others wait for a place.
#[repr(C)]
pub struct kf_batch_params {
    /// Most requests decoded together; 0 admits as many as fit in memory. Default 0.
    pub max_batch: usize,
    /// Bytes for the KV caches and activations of the requests running at once; 0 takes the
    /// GPU's free memory when the batch is made, less a tenth (at least 512 MiB), or 2 GiB on
    /// the CPU. On a GPU a limit above that is lowered to it. Default 0.
    pub memory_limit: usize,
}

/// How to load a model; start from kf_model_params_default().
#[repr(C)]
pub struct kf_model_params {
    /// A kf_backend value. Default KF_BACKEND_AUTO.
    pub backend: i32,
    /// GPU index (CUDA device or wgpu adapter). Default 0.
    pub device: u32,
    /// A kf_dtype value, for GPU backends. Default KF_DTYPE_F16.
    pub dtype: i32,
    /// NULL (the default) or "" keeps float matrices as floats; otherwise they are quantized
    /// while loading to this block format ("q8_0", "q6_k", "q4_k", ...) or llama.cpp mix
    /// ("q4_k_m", "q5_k_m"): a Hugging Face folder's, and a GGUF file's F32/F16/BF16 ones (its
    /// block-format tensors keep their formats). Norms and biases stay f32.
    pub quantize: *const c_char,
}

/// The KV-cache policy and its budget; start from kf_cache_params_default().
#[repr(C)]
#[derive(Clone, Copy)]
pub struct kf_cache_params {
    /// A kf_policy value. Default KF_POLICY_FULL.
    pub policy: i32,
    /// The budget as a fraction of the prompt, in (0, 1], used when kv_budget is 0; raised to
    /// the policy's minimum for short prompts. Default 0.5.
    pub kv_ratio: f32,
    /// The budget in tokens per layer and KV head; 0 uses kv_ratio. Below the policy's
    /// minimum it is an error. Default 0.
    pub kv_budget: usize,
    /// Share of the budget kept as the recent window (h2o, keyformer), in [0, 1). Default 0.3.
    pub recent_ratio: f32,
    /// Attention sinks always kept; -1 takes the policy's default (4 for streaming, else 0).
    pub sinks: i32,
    /// Keyformer's score temperature at the prompt and at the last new token; it rises
    /// linearly in between. Both > 0. Default 1 and 2.
    pub tau_init: f32,
    pub tau_end: f32,
    /// Seed of keyformer's Gumbel noise. Default 0.
    pub seed: u64,
    /// Run the prompt this many tokens at a time, evicting down to the budget after each
    /// chunk, so the cache holds at most budget + chunk tokens per layer while prefilling; 0
    /// runs it in one pass (scored as a whole, as the paper does). Default 0.
    pub prefill_chunk: usize,
}

/// How to generate; start from kf_generate_params_default().
#[repr(C)]
pub struct kf_generate_params {
    /// At least 1. Default 128.
    pub max_new_tokens: usize,
    /// 0 is greedy decoding; otherwise >= 0. Default 0.
    pub temperature: f32,
    /// Sample among the k most likely tokens; 0 keeps all. Default 0.
    pub top_k: usize,
    /// Sample among the most likely tokens whose probability reaches top_p, in (0, 1].
    /// Default 1.
    pub top_p: f32,
    /// Sampling seed: the same seed gives the same text. Default 0.
    pub seed: u64,
    /// n_stop_strings non-empty strings; generation stops when the text contains one of them.
    /// Read during the call only. Default none.
    pub stop_strings: *const *const c_char,
    pub n_stop_strings: usize,
    /// Non-zero: stop at the model's end-of-sequence tokens. Default 1.
    pub stop_at_eos: i32,
    pub cache: kf_cache_params,
}

/// What a model's KV cache holds.
#[repr(C)]
pub struct kf_stats {
    pub policy: kf_policy,
    /// Tokens kept per layer and KV head (k); 0 for the full cache, which has no budget.
    pub budget: usize,
    pub sinks: usize,
    /// The recent window w.
    pub recent: usize,
    /// Tokens the sequence has seen: prompt and generated tokens run through the model.
    pub tokens_seen: usize,
    pub layers: usize,
    pub kv_heads: usize,
    /// Tokens held per KV head, the most of any layer (layers differ only within a prefill).
    pub kept: usize,
    /// K and V bytes allocated now, and what a full cache would hold for tokens_seen.
    pub kv_bytes_held: usize,
    pub kv_bytes_full: usize,
    /// Tokens evicted so far, summed over layers and KV heads.
    pub evictions: u64,
    /// kv_bytes_full / kv_bytes_held.
    pub compression_ratio: f64,
    /// Keyformer's score temperature at the latest step (1 for policies that do not score).
    pub tau: f32,
}

/// How a generation went.
#[repr(C)]
pub struct kf_generation {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub stop_reason: kf_stop_reason,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// The cache when generation ended.
    pub stats: kf_stats,
}

/// A model's description. The strings belong to the model and live until kf_model_free.
#[repr(C)]
pub struct kf_model_info {
    /// The backend and device, e.g. "cpu (2 threads)".
    pub backend: *const c_char,
    /// "gpt2", "gptj", "mpt" or "llama".
    pub architecture: *const c_char,
    pub vocab_size: usize,
    pub context_length: usize,
    pub layers: usize,
    pub kv_heads: usize,
}

/// The result of kf_loglik.
#[repr(C)]
pub struct kf_loglik_result {
    /// Sum of the continuation tokens' natural-log probabilities.
    pub logprob: f64,
    /// Whether greedy decoding would have produced the whole continuation.
    pub greedy: bool,
}

/// Called once per generated token with its id and the text it completes: piece_len bytes at
/// piece, NUL-terminated, valid during the call only, and empty while a character is
/// incomplete. Return 0 to go on, non-zero to stop after this token.
pub type kf_token_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        token: u32,
        piece: *const c_char,
        piece_len: usize,
    ) -> c_int,
>;

/// Called once per generated token of a batch request, as kf_token_callback is, with the
/// number kf_batch_submit gave the request. Return 0 to go on, non-zero to stop that request
/// after this token (the others go on).
pub type kf_batch_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        request: u64,
        token: u32,
        piece: *const c_char,
        piece_len: usize,
    ) -> c_int,
>;

/// The library's version, e.g. "0.1.0": a static string.
#[unsafe(no_mangle)]
pub extern "C" fn kf_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The library's KF_ABI_VERSION: a program built with another header must not use it.
#[unsafe(no_mangle)]
pub extern "C" fn kf_abi_version() -> u32 {
    KF_ABI_VERSION
}

/// The message of the calling thread's latest failed call ("" before any). Valid until the
/// thread's next call into the library; do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn kf_last_error() -> *const c_char {
    status::last_error()
}

/// The name of a status code, e.g. "KF_ERR_BUSY", or "unknown status": a static string.
#[unsafe(no_mangle)]
pub extern "C" fn kf_status_name(status: i32) -> *const c_char {
    convert::status_name(status).as_ptr().cast()
}

/// The default model parameters: see each field.
#[unsafe(no_mangle)]
pub extern "C" fn kf_model_params_default() -> kf_model_params {
    convert::model_params_default()
}

/// The default cache parameters (the full cache): see each field.
#[unsafe(no_mangle)]
pub extern "C" fn kf_cache_params_default() -> kf_cache_params {
    convert::cache_params_default()
}

/// The default generation parameters (greedy, 128 new tokens, the full cache): see each field.
#[unsafe(no_mangle)]
pub extern "C" fn kf_generate_params_default() -> kf_generate_params {
    convert::generate_params_default()
}

/// Checks generation parameters without a model, as every call that takes them does first,
/// and as the command line does before it loads one: max_new_tokens at least 1, no empty stop
/// string, sampling and cache fields in range. The checks that need the model and prompt
/// (context length, the policy's minimum budget) come with the call. params may be NULL for
/// the defaults. Errors: KF_ERR_INVALID_ARGUMENT, KF_ERR_INVALID_UTF8, KF_ERR_NULL_ARGUMENT
/// (n_stop_strings > 0 with NULL stop_strings, or a NULL stop string).
///
/// # Safety
/// params is NULL or a valid kf_generate_params whose stop strings are NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kf_generate_params_check(params: *const kf_generate_params) -> kf_status {
    // SAFETY: the caller's promise above.
    guard(|| unsafe { convert::generate_params(params) }.map(drop))
}

/// Loads a model: a .gguf file or a Hugging Face folder (config.json, safetensors,
/// tokenizer.json). params may be NULL for the defaults. On KF_OK *model is a new handle, to
/// be freed with kf_model_free. Errors: KF_ERR_NOT_FOUND, KF_ERR_IO, KF_ERR_MODEL,
/// KF_ERR_BACKEND (the backend asked for is missing, or cannot store the dtype; auto falls
/// back to the CPU), KF_ERR_INVALID_ARGUMENT (a params field out of range).
///
/// # Safety
/// path is NULL or a NUL-terminated string; params is NULL or a valid kf_model_params; model
/// is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kf_model_load(
    path: *const c_char,
    params: *const kf_model_params,
    model: *mut *mut kf_model,
) -> kf_status {
    guard(|| {
        // SAFETY: the caller's promises above.
        let (path, out) = unsafe { (str_arg(path, "path")?, out_arg(model, "model")?) };
        let defaults = kf_model_params_default();
        // SAFETY: as above.
        let params = unsafe { params.as_ref() }.unwrap_or(&defaults);
        let options = convert::backend_options(params)?;
        // SAFETY: as above (quantize is NULL or a NUL-terminated string).
        let quantize = unsafe { convert::weight_kind(params.quantize) }?;
        let (any, _note) = AnyModel::load_with(path.as_ref(), quantize, &options, &mut |_, _| {})?;
        let c = any.config();
        let handle = ModelHandle {
            backend: CString::new(any.backend_name()).unwrap_or_default(),
            architecture: CString::new(c.arch.name).unwrap_or_default(),
            vocab_size: c.vocab_size,
            context_length: c.max_context,
            layers: c.layers,
            kv_heads: c.kv_heads,
            model: Mutex::new(any),
            latest: Mutex::new(None),
        };
        *out = handles::add_model(handle);
        Ok(())
    })
}

/// Frees a model handle; NULL is a no-op. Its sessions keep the model itself alive until
/// they are freed. Errors: KF_ERR_INVALID_HANDLE (freed already).
#[unsafe(no_mangle)]
pub extern "C" fn kf_model_free(model: *mut kf_model) -> kf_status {
    guard(|| handles::remove(model as usize, "kf_model"))
}

/// Describes a model. Errors: KF_ERR_NULL_ARGUMENT, KF_ERR_INVALID_HANDLE.
///
/// # Safety
/// info is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kf_model_describe(
    model: *const kf_model,
    info: *mut kf_model_info,
) -> kf_status {
    guard(|| {
        let m = handles::model(model)?;
        // SAFETY: the caller's promise above.
        let info = unsafe { out_arg(info, "info")? };
        *info = kf_model_info {
            // The strings live as long as the model handle's object does.
            backend: m.backend.as_ptr(),
            architecture: m.architecture.as_ptr(),
            vocab_size: m.vocab_size,
            context_length: m.context_length,
            layers: m.layers,
            kv_heads: m.kv_heads,
        };
        Ok(())
    })
}

/// Token ids of text as the model's tokenizer encodes it (with the BOS token where the model
/// adds one). *count gets the number of tokens; tokens (capacity entries) gets them, or as
/// many as fit with KF_ERR_BUFFER_TOO_SMALL; tokens may be NULL with capacity 0 to ask for
/// the count. Errors: KF_ERR_NULL_ARGUMENT, KF_ERR_INVALID_UTF8, KF_ERR_INVALID_HANDLE,
/// KF_ERR_BUSY, KF_ERR_BUFFER_TOO_SMALL, KF_ERR_INVALID_ARGUMENT (zero-size buffer).
///
/// # Safety
/// text is NULL or NUL-terminated; tokens is NULL or has capacity writable entries; count is
/// NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kf_tokenize(
    model: *mut kf_model,
    text: *const c_char,
    tokens: *mut u32,
    capacity: usize,
    count: *mut usize,
) -> kf_status {
    guard(|| {
        let m = handles::model(model)?;
        // SAFETY: the caller's promises above.
        let (text, tokens, count) = unsafe {
            (
                str_arg(text, "text")?,
                status::buffer_arg(tokens, capacity, "tokens")?,
                out_arg(count, "count")?,
            )
        };
        let ids = run::tokenize(&m, text)?;
        status::fill(&ids, tokens, count, "the token ids")
    })
}

/// Generates text from a raw prompt (no chat template; use a kf_session for chat).
///
/// params may be NULL for the defaults. on_token, when not NULL, is called with user_data for
/// every new token and may call kf_cache_stats(model, ...). The text goes to text, a buffer of
/// text_size bytes (NUL-terminated), and its length in bytes (without the NUL) to *text_len
/// when text_len is not NULL; text may be NULL with text_size 0 when only the callback wants
/// the text. result, when not NULL, gets the token counts, stop reason, timings and the final
/// cache statistics.
///
/// Errors: KF_ERR_NULL_ARGUMENT, KF_ERR_INVALID_UTF8 (prompt or a stop string),
/// KF_ERR_INVALID_HANDLE, KF_ERR_BUSY, KF_ERR_INVALID_ARGUMENT (a params field out of range,
/// an empty or over-long prompt, a non-NULL text with text_size 0), KF_ERR_BACKEND.
/// KF_ERR_BUFFER_TOO_SMALL: generation ran; text holds the longest whole-character prefix
/// that fits, *text_len the full length, and result is filled.
///
/// # Safety
/// Pointers are NULL or valid as described; text has text_size writable bytes; on_token is a
/// valid function for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kf_generate(
    model: *mut kf_model,
    prompt: *const c_char,
    params: *const kf_generate_params,
    on_token: kf_token_callback,
    user_data: *mut c_void,
    text: *mut c_char,
    text_size: usize,
    text_len: *mut usize,
    result: *mut kf_generation,
) -> kf_status {
    guard(|| {
        let m = handles::model(model)?;
        // SAFETY: the caller's promises above.
        let (prompt, params, out, on_token) = unsafe {
            (
                str_arg(prompt, "prompt")?,
                convert::generate_params(params)?,
                TextOut::buffer(text, text_size, text_len)?,
                Callback::new(on_token, user_data),
            )
        };
        let generation = run::generate(&m, prompt, &params, &on_token)?;
        // SAFETY: as above.
        unsafe { run::report(generation, out, result) }
    })
}

/// As kf_generate, with the text returned in *text: a new string to free with kf_string_free
/// (*text is NULL on error). A text holding NUL characters ends at the first one there.
///
/// # Safety
/// As kf_generate; text is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kf_generate_alloc(
    model: *mut kf_model,
    prompt: *const c_char,
    params: *const kf_generate_params,
    on_token: kf_token_callback,
    user_data: *mut c_void,
    text: *mut *mut c_char,
    result: *mut kf_generation,
) -> kf_status {
    guard(|| {
        // SAFETY: the caller's promises above.
        let out = unsafe { TextOut::alloc(text)? };
        let m = handles::model(model)?;
        // SAFETY: as above.
        let (prompt, params, on_token) = unsafe {
            (
                str_arg(prompt, "prompt")?,
                convert::generate_params(params)?,
                Callback::new(on_token, user_data),
            )
        };
        let generation = run::generate(&m, prompt, &params, &on_token)?;
        // SAFETY: as above.
        unsafe { run::report(generation, out, result) }
    })
}

/// Frees a string from a *_alloc function; NULL is a no-op. Never pass it other pointers.
///
/// # Safety
/// text is NULL or a string a *_alloc function returned, not freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kf_string_free(text: *mut c_char) {
    if !text.is_null() {
        // SAFETY: the caller's promise: it came from CString::into_raw in TextOut.
        drop(unsafe { CString::from_raw(text) });
    }
}

/// The KV cache of the generation running on this model (from its callback, or from another
/// thread), or of the latest one that finished: kf_generate, a session turn or kf_loglik.
/// kept, when not NULL, gets the tokens held per (layer, KV head), layer-major: kept_len must
/// be at least layers * kv_heads, else KF_ERR_BUFFER_TOO_SMALL with *stats filled. Errors:
/// KF_ERR_NULL_ARGUMENT, KF_ERR_INVALID_HANDLE, KF_ERR_INVALID_STATE (nothing ran yet),
/// KF_ERR_BUFFER_TOO_SMALL, KF_ERR_INVALID_ARGUMENT (zero-size kept).
///
/// # Safety
/// stats is NULL or writable; kept is NULL or has kept_len writable entries.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kf_cache_stats(
    model: *const kf_model,
    stats: *mut kf_stats,
    kept: *mut usize,
    kept_len: usize,
) -> kf_status {
    guard(|| {
        let m = handles::model(model)?;
        // SAFETY: the caller's promises above.
        unsafe { convert::report_stats(&m.latest, "model", stats, kept, kept_len) }
    })
}

/// Log-likelihood of continuation following context (token ids, e.g. from kf_tokenize) with
/// the KV cache that cache describes (NULL: defaults, the full cache). The context is the
/// prompt, budgets are relative to it, and the continuation goes through the cache one token
/// at a time as if generated, so the policy evicts as in generation. token_logprobs, when not
/// NULL, gets each continuation token's log-probability (continuation_len entries). Errors:
/// KF_ERR_NULL_ARGUMENT, KF_ERR_INVALID_HANDLE, KF_ERR_BUSY, KF_ERR_INVALID_ARGUMENT (an
/// empty context or continuation, a token id outside the vocabulary, longer than the
/// context length, a cache field out of range), KF_ERR_BACKEND.
///
/// # Safety
/// context and continuation point to their lengths of token ids; token_logprobs is NULL or has
/// continuation_len writable entries; cache is NULL or valid; result is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kf_loglik(
    model: *mut kf_model,
    context: *const u32,
    context_len: usize,
    continuation: *const u32,
    continuation_len: usize,
    cache: *const kf_cache_params,
    token_logprobs: *mut f64,
    result: *mut kf_loglik_result,
) -> kf_status {
    guard(|| {
        let m = handles::model(model)?;
        // SAFETY: the caller's promises above.
        let (context, continuation, out) = unsafe {
            (
                slice_arg(context, context_len, "context")?,
                slice_arg(continuation, continuation_len, "continuation")?,
                out_arg(result, "result")?,
            )
        };
        let defaults = kf_cache_params_default();
        // SAFETY: as above.
        let cache = convert::cache_config(unsafe { cache.as_ref() }.unwrap_or(&defaults))?;
        let ll = run::loglik(&m, context, continuation, &cache)?;
        if !token_logprobs.is_null() {
            // SAFETY: as above: continuation_len == ll.token_logprobs.len() entries.
            let dst = unsafe { std::slice::from_raw_parts_mut(token_logprobs, continuation_len) };
            dst.copy_from_slice(&ll.token_logprobs);
        }
        *out = kf_loglik_result {
            logprob: ll.logprob,
            greedy: ll.greedy,
        };
        Ok(())
    })
}

/// Starts a chat on a model. system_prompt may be NULL to keep the chat template's default.
/// On KF_OK *session is a new handle, to be freed with kf_session_free; it keeps the model
/// alive. Errors: KF_ERR_NULL_ARGUMENT, KF_ERR_INVALID_UTF8, KF_ERR_INVALID_HANDLE.
///
/// # Safety
/// system_prompt is NULL or NUL-terminated; session is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kf_session_new(
    model: *mut kf_model,
    system_prompt: *const c_char,
    session: *mut *mut kf_session,
) -> kf_status {
    guard(|| {
        let m = handles::model(model)?;
        // SAFETY: the caller's promises above.
        let out = unsafe { out_arg(session, "session")? };
        let system = match system_prompt.is_null() {
            true => None,
            // SAFETY: as above.
            false => Some(unsafe { str_arg(system_prompt, "system_prompt")? }.to_string()),
        };
        *out = handles::add_session(SessionHandle {
            model: m,
            system,
            conversation: Mutex::new(None),
            latest: Mutex::new(None),
        });
        Ok(())
    })
}

/// Frees a session and its cache; NULL is a no-op. Errors: KF_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn kf_session_free(session: *mut kf_session) -> kf_status {
    guard(|| handles::remove(session as usize, "kf_session"))
}

/// One chat turn: adds the user message, in the model's chat template, to what the session's
/// cache already holds, and generates the reply, exactly as kf_generate does otherwise. Only
/// the new text runs through the model. The cache fields of params must be the same at every
/// turn (KF_ERR_INVALID_ARGUMENT otherwise); a kv_ratio budget is a fraction of the whole
/// chat so far. Besides kf_generate's errors: KF_ERR_MODEL (no chat template),
/// KF_ERR_INVALID_STATE (an earlier turn failed inside the model: free the session). After
/// KF_ERR_BUFFER_TOO_SMALL the turn still counts.
///
/// # Safety
/// As kf_generate.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kf_session_chat(
    session: *mut kf_session,
    message: *const c_char,
    params: *const kf_generate_params,
    on_token: kf_token_callback,
    user_data: *mut c_void,
    text: *mut c_char,
    text_size: usize,
    text_len: *mut usize,
    result: *mut kf_generation,
) -> kf_status {
    guard(|| {
        let s = handles::session(session)?;
        // SAFETY: the caller's promises above.
        let (message, params, out, on_token) = unsafe {
            (
                str_arg(message, "message")?,
                convert::generate_params(params)?,
                TextOut::buffer(text, text_size, text_len)?,
                Callback::new(on_token, user_data),
            )
        };
        let generation = run::chat(&s, message, &params, &on_token)?;
        // SAFETY: as above.
        unsafe { run::report(generation, out, result) }
    })
}

/// As kf_session_chat, with the reply returned as in kf_generate_alloc.
///
/// # Safety
/// As kf_generate_alloc.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kf_session_chat_alloc(
    session: *mut kf_session,
    message: *const c_char,
    params: *const kf_generate_params,
    on_token: kf_token_callback,
    user_data: *mut c_void,
    text: *mut *mut c_char,
    result: *mut kf_generation,
) -> kf_status {
    guard(|| {
        // SAFETY: the caller's promises above.
        let out = unsafe { TextOut::alloc(text)? };
        let s = handles::session(session)?;
        // SAFETY: as above.
        let (message, params, on_token) = unsafe {
            (
                str_arg(message, "message")?,
                convert::generate_params(params)?,
                Callback::new(on_token, user_data),
            )
        };
        let generation = run::chat(&s, message, &params, &on_token)?;
        // SAFETY: as above.
        unsafe { run::report(generation, out, result) }
    })
}

/// As kf_cache_stats, for this session's cache: during a turn (from its callback or another
/// thread) or between turns. KF_ERR_INVALID_STATE before the first turn.
///
/// # Safety
/// As kf_cache_stats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kf_session_cache_stats(
    session: *const kf_session,
    stats: *mut kf_stats,
    kept: *mut usize,
    kept_len: usize,
) -> kf_status {
    guard(|| {
        let s = handles::session(session)?;
        // SAFETY: the caller's promises above.
        unsafe { convert::report_stats(&s.latest, "session", stats, kept, kept_len) }
    })
}

/// The original positions (0 = the first prompt token) of the tokens a session's cache holds
/// in one layer and KV head, ascending: what the policy kept. *count gets how many;
/// positions (capacity entries) gets them as kf_tokenize fills tokens. Not during a turn
/// (KF_ERR_BUSY). Errors: KF_ERR_NULL_ARGUMENT, KF_ERR_INVALID_HANDLE, KF_ERR_BUSY,
/// KF_ERR_INVALID_STATE (before the first turn), KF_ERR_INVALID_ARGUMENT (layer or kv_head
/// out of range, zero-size buffer), KF_ERR_BUFFER_TOO_SMALL.
///
/// # Safety
/// positions is NULL or has capacity writable entries; count is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kf_session_cache_positions(
    session: *mut kf_session,
    layer: usize,
    kv_head: usize,
    positions: *mut u32,
    capacity: usize,
    count: *mut usize,
) -> kf_status {
    guard(|| {
        let s = handles::session(session)?;
        // SAFETY: the caller's promises above.
        let (positions, count) = unsafe {
            (
                status::buffer_arg(positions, capacity, "positions")?,
                out_arg(count, "count")?,
            )
        };
        let kept = run::positions(&s, layer, kv_head)?;
        status::fill(&kept, positions, count, "the positions")
    })
}

/// The default batch parameters: see each field.
#[unsafe(no_mangle)]
pub extern "C" fn kf_batch_params_default() -> kf_batch_params {
    kf_batch_params {
        max_batch: 0,
        memory_limit: 0,
    }
}

/// Makes a batch on a model: requests submitted to it are decoded together, each with its own
/// KV cache, policy and budget, and each produces exactly the tokens kf_generate produces for
/// it alone (up to rounding on a GPU). params may be NULL for the defaults. On KF_OK *batch
/// is a new handle, to be freed with kf_batch_free; it keeps the model alive. Errors:
/// KF_ERR_NULL_ARGUMENT, KF_ERR_INVALID_HANDLE, KF_ERR_BUSY.
///
/// # Safety
/// params is NULL or a valid kf_batch_params; batch is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kf_batch_new(
    model: *mut kf_model,
    params: *const kf_batch_params,
    batch: *mut *mut kf_batch,
) -> kf_status {
    guard(|| {
        let m = handles::model(model)?;
        // SAFETY: the caller's promises above.
        let out = unsafe { out_arg(batch, "batch")? };
        let defaults = kf_batch_params_default();
        // SAFETY: as above.
        let params = unsafe { params.as_ref() }.unwrap_or(&defaults);
        let state = batch::new(&m, &convert::batch_limits(params))?;
        *out = handles::add_batch(BatchHandle { model: m, state });
        Ok(())
    })
}

/// Frees a batch and the results it holds; NULL is a no-op. Errors: KF_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn kf_batch_free(batch: *mut kf_batch) -> kf_status {
    guard(|| handles::remove(batch as usize, "kf_batch"))
}

/// Adds a request to a batch: a raw prompt (no chat template) and its generation parameters
/// (NULL for the defaults), checked now. It runs at the next kf_batch_run, which calls
/// on_token (when not NULL) with user_data for each of its tokens. *request gets its number
/// in the batch (0, 1, ... in order of submission) for the callback and kf_batch_result.
/// Errors: kf_generate's argument errors, KF_ERR_BUSY (the model or the batch is running
/// another call: submit between runs), and KF_ERR_INVALID_ARGUMENT when the request could
/// not run even alone in the batch's memory (the message gives the bytes it needs and the
/// bytes the batch has).
///
/// # Safety
/// prompt is NULL or NUL-terminated; params is NULL or valid, its stop strings read during
/// the call only; on_token is a valid function until the kf_batch_run that runs the request
/// returns; request is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kf_batch_submit(
    batch: *mut kf_batch,
    prompt: *const c_char,
    params: *const kf_generate_params,
    on_token: kf_batch_callback,
    user_data: *mut c_void,
    request: *mut u64,
) -> kf_status {
    guard(|| {
        let b = handles::batch(batch)?;
        // SAFETY: the caller's promises above.
        let (prompt, params, out, on_token) = unsafe {
            (
                str_arg(prompt, "prompt")?,
                convert::generate_params(params)?,
                out_arg(request, "request")?,
                batch::BatchCallback::new(on_token, user_data),
            )
        };
        *out = batch::submit(&b, prompt, params, on_token)?;
        Ok(())
    })
}

/// Runs every request submitted since the last run to its end: new prompts are prefilled
/// between decode steps, each step decodes one token of every running request together, and
/// a finished request's place goes to the next waiting one. Callbacks run on the calling
/// thread. Errors: KF_ERR_INVALID_HANDLE, KF_ERR_BUSY, KF_ERR_BACKEND; after an error the
/// requests that had not finished give KF_ERR_INVALID_STATE from kf_batch_result, and the
/// batch takes new requests.
#[unsafe(no_mangle)]
pub extern "C" fn kf_batch_run(batch: *mut kf_batch) -> kf_status {
    guard(|| {
        let b = handles::batch(batch)?;
        batch::run(&b)
    })
}

/// A finished request's text, as kf_generate_alloc returns it (a new string to free with
/// kf_string_free), and its token counts, stop reason, timings and final cache statistics in
/// *result when result is not NULL. Errors: KF_ERR_NULL_ARGUMENT, KF_ERR_INVALID_HANDLE,
/// KF_ERR_BUSY (during kf_batch_run), KF_ERR_INVALID_ARGUMENT (no such request),
/// KF_ERR_INVALID_STATE (not run yet, or its run failed).
///
/// # Safety
/// text is NULL or writable; result is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kf_batch_result(
    batch: *mut kf_batch,
    request: u64,
    text: *mut *mut c_char,
    result: *mut kf_generation,
) -> kf_status {
    guard(|| {
        // SAFETY: the caller's promises above.
        let out = unsafe { TextOut::alloc(text)? };
        let b = handles::batch(batch)?;
        let generation = batch::result(&b, request)?;
        // SAFETY: as above.
        unsafe { run::report(generation, out, result) }
    })
}
