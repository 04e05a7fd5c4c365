//! Running a model for C callers: the token loop with its callback and statistics snapshots,
//! chat turns on sessions, log-likelihood, and handing the text back.

use std::any::Any;
use std::ffi::{CString, c_char, c_void};

use super::handles::{ModelHandle, SessionHandle, snapshot, try_lock};
use super::status::{Failure, Outcome, buffer_arg, out_arg, too_small};
use super::{convert, kf_generation, kf_status, kf_stop_reason, kf_token_callback};
use crate::backend::Backend;
use crate::engine::conversation::{Conversation, Turn};
use crate::engine::generate::{GenerateParams, Generation, Generator, StopReason};
use crate::engine::loglik::LogLikelihood;
use crate::error::Result;
use crate::kv::policy::CacheConfig;
use crate::kv::stats::CacheStats;
use crate::model::Model;
use crate::with_model;

/// The caller's per-token callback.
pub struct Callback {
    f: kf_token_callback,
    user_data: *mut c_void,
}

impl Callback {
    /// # Safety
    /// `f` is None or a function that is safe to call with `user_data` during the call.
    pub unsafe fn new(f: kf_token_callback, user_data: *mut c_void) -> Callback {
        Callback { f, user_data }
    }

    /// Whether generation goes on after this token.
    fn call(&self, token: u32, piece: &str) -> bool {
        let Some(f) = self.f else { return true };
        let bytes = c_piece(piece);
        // SAFETY: `new`'s contract; the piece outlives the call.
        unsafe { f(self.user_data, token, bytes.as_ptr().cast(), piece.len()) == 0 }
    }
}

/// A token's text as callbacks get it: its bytes and a NUL.
pub fn c_piece(piece: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(piece.len() + 1);
    bytes.extend_from_slice(piece.as_bytes());
    bytes.push(0);
    bytes
}

/// A generation token by token: the engine's Generator, or a chat turn.
trait TokenStream {
    fn next_token(&mut self) -> Result<Option<(u32, String)>>;
    fn stats(&self) -> Result<CacheStats>;
    fn stop_callback(&mut self);
    fn finish(self) -> Result<Generation>;
}

impl<B: Backend> TokenStream for Generator<'_, B> {
    fn next_token(&mut self) -> Result<Option<(u32, String)>> {
        Generator::next_token(self)
    }
    fn stats(&self) -> Result<CacheStats> {
        Generator::stats(self, false)
    }
    fn stop_callback(&mut self) {
        Generator::stop_callback(self)
    }
    fn finish(self) -> Result<Generation> {
        Generator::finish(self)
    }
}

impl<B: Backend> TokenStream for Turn<'_, B> {
    fn next_token(&mut self) -> Result<Option<(u32, String)>> {
        Turn::next_token(self)
    }
    fn stats(&self) -> Result<CacheStats> {
        Turn::stats(self, false)
    }
    fn stop_callback(&mut self) {
        Turn::stop_callback(self)
    }
    fn finish(self) -> Result<Generation> {
        Turn::finish(self)
    }
}

/// Runs a generation to its end. Before each callback the cache statistics are published, so
/// kf_cache_stats answers from the callback or another thread without touching the model.
fn drive(
    mut stream: impl TokenStream,
    on_token: &Callback,
    publish: &dyn Fn(&CacheStats),
) -> Result<Generation> {
    publish(&stream.stats()?);
    while let Some((id, piece)) = stream.next_token()? {
        publish(&stream.stats()?);
        if !on_token.call(id, &piece) {
            stream.stop_callback();
        }
    }
    let generation = stream.finish()?;
    publish(&generation.stats);
    Ok(generation)
}

pub fn generate(
    h: &ModelHandle,
    prompt: &str,
    params: &GenerateParams,
    on_token: &Callback,
) -> Outcome<Generation> {
    let model = try_lock(&h.model, "model")?;
    let publish = |s: &CacheStats| *snapshot(&h.latest) = Some(s.clone());
    Ok(with_model!(&*model, m => {
        m.tokenizer()
            .and_then(|tok| tok.encode(prompt))
            .and_then(|ids| drive(m.start(&ids, params)?, on_token, &publish))
    })?)
}

pub fn tokenize(h: &ModelHandle, text: &str) -> Outcome<Vec<u32>> {
    let model = try_lock(&h.model, "model")?;
    Ok(with_model!(&*model, m => m.tokenizer().and_then(|tok| tok.encode(text)))?)
}

pub fn loglik(
    h: &ModelHandle,
    context: &[u32],
    continuation: &[u32],
    cache: &CacheConfig,
) -> Outcome<LogLikelihood> {
    let model = try_lock(&h.model, "model")?;
    let ll = with_model!(&*model, m => m.loglik(context, continuation, cache))?;
    *snapshot(&h.latest) = Some(ll.stats.clone());
    Ok(ll)
}

/// A session's conversation: `Conversation<B>` for its model's backend, behind `dyn Any` so
/// sessions need no enum of backends.
type Slot = Option<Box<dyn Any + Send>>;

pub fn chat(
    s: &SessionHandle,
    message: &str,
    params: &GenerateParams,
    on_token: &Callback,
) -> Outcome<Generation> {
    let mut slot = try_lock(&s.conversation, "session")?;
    let model = try_lock(&s.model.model, "model")?;
    let publish = |stats: &CacheStats| {
        *snapshot(&s.model.latest) = Some(stats.clone());
        *snapshot(&s.latest) = Some(stats.clone());
    };
    let system = s.system.as_deref();
    with_model!(&*model, m => chat_on(m, &mut slot, system, message, params, on_token, &publish))
}

fn chat_on<B: Backend + 'static>(
    model: &Model<B>,
    slot: &mut Slot,
    system: Option<&str>,
    message: &str,
    params: &GenerateParams,
    on_token: &Callback,
    publish: &dyn Fn(&CacheStats),
) -> Outcome<Generation>
where
    Conversation<B>: Send,
{
    let conversation = slot
        .get_or_insert_with(|| Box::new(Conversation::<B>::new(system)))
        .downcast_mut::<Conversation<B>>()
        .ok_or_else(wrong_backend)?;
    if let Some(why) = conversation.broken() {
        return Err(Failure::new(
            kf_status::KF_ERR_INVALID_STATE,
            format!("this session cannot continue ({why}): free it"),
        ));
    }
    let turn = conversation.say(model, message, params)?;
    Ok(drive(turn, on_token, publish)?)
}

fn wrong_backend() -> Failure {
    Failure::new(
        kf_status::KF_ERR_INTERNAL,
        "the session's conversation belongs to another backend",
    )
}

pub fn positions(s: &SessionHandle, layer: usize, kv_head: usize) -> Outcome<Vec<u32>> {
    let slot = try_lock(&s.conversation, "session")?;
    let model = try_lock(&s.model.model, "model")?;
    with_model!(&*model, m => positions_on(m, &slot, layer, kv_head))
}

fn positions_on<B: Backend + 'static>(
    model: &Model<B>,
    slot: &Slot,
    layer: usize,
    kv_head: usize,
) -> Outcome<Vec<u32>> {
    let session = match slot {
        None => None,
        Some(any) => any
            .downcast_ref::<Conversation<B>>()
            .ok_or_else(wrong_backend)?
            .session(),
    };
    let session = session.ok_or_else(|| {
        Failure::new(
            kf_status::KF_ERR_INVALID_STATE,
            "the session has no cache before its first turn",
        )
    })?;
    let shape = &session.shape;
    if layer >= shape.layers || kv_head >= shape.kv_heads {
        return Err(Failure::invalid(format!(
            "layer {layer}, kv head {kv_head} is outside the cache's {} layers of {} kv heads",
            shape.layers, shape.kv_heads
        )));
    }
    let mut heads = model.backend.cache_positions(&session.cache, layer)?;
    let mut kept = std::mem::take(&mut heads[kv_head]);
    // GPU backends keep slots in any order.
    kept.sort_unstable();
    Ok(kept)
}

/// Where the generated text goes.
pub enum TextOut<'a> {
    Buffer {
        buf: Option<&'a mut [u8]>,
        len: Option<&'a mut usize>,
    },
    Alloc(&'a mut *mut c_char),
}

impl<'a> TextOut<'a> {
    /// # Safety
    /// `text` is NULL or has `size` writable bytes; `len` is NULL or writable; both for `'a`.
    pub unsafe fn buffer(text: *mut c_char, size: usize, len: *mut usize) -> Outcome<TextOut<'a>> {
        // SAFETY: the caller's promises above.
        unsafe {
            Ok(TextOut::Buffer {
                buf: buffer_arg(text.cast::<u8>(), size, "text")?,
                len: len.as_mut(),
            })
        }
    }

    /// Clears `*text` at once, so it is NULL whatever fails later.
    ///
    /// # Safety
    /// `text` is NULL or writable for `'a`.
    pub unsafe fn alloc(text: *mut *mut c_char) -> Outcome<TextOut<'a>> {
        // SAFETY: the caller's promise above.
        let out = unsafe { out_arg(text, "text")? };
        *out = std::ptr::null_mut();
        Ok(TextOut::Alloc(out))
    }

    fn write(self, text: &str) -> Outcome {
        match self {
            TextOut::Buffer { buf, len } => {
                if let Some(len) = len {
                    *len = text.len();
                }
                let Some(buf) = buf else { return Ok(()) };
                // The longest whole-character prefix that leaves room for the NUL.
                let cut = (0..=text.len().min(buf.len() - 1))
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                buf[..cut].copy_from_slice(&text.as_bytes()[..cut]);
                buf[cut] = 0;
                if cut < text.len() {
                    return Err(too_small("the text", text.len() + 1, buf.len()));
                }
                Ok(())
            }
            TextOut::Alloc(out) => {
                let first = text.split('\0').next().unwrap_or_default();
                *out = CString::new(first).unwrap_or_default().into_raw();
                Ok(())
            }
        }
    }
}

/// Hands a finished generation to the caller.
///
/// # Safety
/// `result` is NULL or writable.
pub unsafe fn report(g: Generation, text: TextOut, result: *mut kf_generation) -> Outcome {
    // SAFETY: the caller's promise above.
    if let Some(r) = unsafe { result.as_mut() } {
        *r = kf_generation {
            prompt_tokens: g.prompt_tokens,
            generated_tokens: g.tokens.len(),
            stop_reason: match g.stop {
                StopReason::MaxTokens => kf_stop_reason::KF_STOP_MAX_TOKENS,
                StopReason::Eos => kf_stop_reason::KF_STOP_EOS,
                StopReason::StopString => kf_stop_reason::KF_STOP_STOP_STRING,
                StopReason::Callback => kf_stop_reason::KF_STOP_CALLBACK,
                StopReason::Context => kf_stop_reason::KF_STOP_CONTEXT,
            },
            prefill_ms: g.prefill_ms,
            decode_ms: g.decode_ms,
            stats: convert::stats(&g.stats),
        };
    }
    text.write(&g.text)
}
