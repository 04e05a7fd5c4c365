//! What the opaque handles stand for, and the registry that makes them safe to misuse: C holds
//! only a number, every call looks it up among the live handles, so a freed, foreign or
//! NULL handle is an error rather than undefined behaviour. A handle is not the object's
//! address but a number never given out before in this process, so a freed handle stays
//! invalid even when a newer object lands at the same address. The registry owns one reference to
//! each object and every call in progress another, so freeing a handle while another thread
//! (or the handle's own session) still uses it is safe too.

use std::any::Any;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use super::batch::BatchState;
use super::status::{Failure, Outcome, null};
use super::{kf_batch, kf_model, kf_session, kf_status};
use crate::engine::select::AnyModel;
use crate::kv::stats::CacheStats;

/// A loaded model. `model` is locked for the whole of any call that runs it: backends need
/// not be thread-safe, and a second caller is refused rather than queued.
pub struct ModelHandle {
    pub model: Mutex<AnyModel>,
    /// The cache of the latest generation on this model, as of its latest token.
    pub latest: Mutex<Option<CacheStats>>,
    pub backend: CString,
    pub architecture: CString,
    pub vocab_size: usize,
    pub context_length: usize,
    pub layers: usize,
    pub kv_heads: usize,
}

/// A conversation with its own cache, on a model it keeps alive.
pub struct SessionHandle {
    pub model: Arc<ModelHandle>,
    pub system: Option<String>,
    /// The `Conversation<B>` for the model's backend, made at the first turn.
    pub conversation: Mutex<Option<Box<dyn Any + Send>>>,
    pub latest: Mutex<Option<CacheStats>>,
}

/// Requests decoded together on a model it keeps alive.
pub struct BatchHandle {
    pub model: Arc<ModelHandle>,
    /// Locked by every call on the batch; kf_batch_run holds it throughout.
    pub state: Mutex<BatchState>,
}

enum Entry {
    Model(Arc<ModelHandle>),
    Session(Arc<SessionHandle>),
    Batch(Arc<BatchHandle>),
}

impl Entry {
    fn kind(&self) -> &'static str {
        match self {
            Entry::Model(_) => "kf_model",
            Entry::Session(_) => "kf_session",
            Entry::Batch(_) => "kf_batch",
        }
    }
}

static LIVE: Mutex<BTreeMap<usize, Entry>> = Mutex::new(BTreeMap::new());

fn live() -> MutexGuard<'static, BTreeMap<usize, Entry>> {
    // Nothing panics while holding the lock, but a poisoned map is still a valid map.
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many handles this process has made: the next one's serial number.
static MADE: AtomicU64 = AtomicU64::new(0);

/// The handle with serial number `serial`: 2 * serial + 1 times an odd constant. Both steps
/// are one-to-one on 64-bit numbers (below 2^63 serials), so no two serials share a handle;
/// the product spreads them over the whole range, so a small integer or a stray pointer
/// passed by mistake is unlikely to name a live handle; and odd times odd is odd, so a handle
/// is never NULL.
fn handle_of(serial: u64) -> usize {
    (serial.wrapping_mul(2).wrapping_add(1)).wrapping_mul(0x9e37_79b9_7f4a_7c15) as usize
}

/// Registers an object under a new handle, which C gets.
fn add<T>(object: Arc<T>, entry: fn(Arc<T>) -> Entry) -> usize {
    let handle = handle_of(MADE.fetch_add(1, Ordering::Relaxed));
    live().insert(handle, entry(object));
    handle
}

pub fn add_model(handle: ModelHandle) -> *mut kf_model {
    add(Arc::new(handle), Entry::Model) as *mut kf_model
}

pub fn add_session(handle: SessionHandle) -> *mut kf_session {
    add(Arc::new(handle), Entry::Session) as *mut kf_session
}

pub fn add_batch(handle: BatchHandle) -> *mut kf_batch {
    add(Arc::new(handle), Entry::Batch) as *mut kf_batch
}

/// The live entry for `handle`, which must be of `kind`.
fn find<'m>(
    live: &'m BTreeMap<usize, Entry>,
    handle: usize,
    kind: &'static str,
) -> Outcome<&'m Entry> {
    let invalid = |message| Err(Failure::new(kf_status::KF_ERR_INVALID_HANDLE, message));
    match live.get(&handle) {
        _ if handle == 0 => Err(null(kind.trim_start_matches("kf_"))),
        Some(entry) if entry.kind() == kind => Ok(entry),
        Some(entry) => invalid(format!(
            "a {} was passed where a {kind} is expected",
            entry.kind()
        )),
        None => invalid(format!(
            "{handle:#x} is not a live {kind} (freed already, or never made by keyformer)"
        )),
    }
}

pub fn model(p: *const kf_model) -> Outcome<Arc<ModelHandle>> {
    match find(&live(), p as usize, "kf_model")? {
        Entry::Model(m) => Ok(m.clone()),
        _ => unreachable!("find checks the kind"),
    }
}

pub fn session(p: *const kf_session) -> Outcome<Arc<SessionHandle>> {
    match find(&live(), p as usize, "kf_session")? {
        Entry::Session(s) => Ok(s.clone()),
        _ => unreachable!("find checks the kind"),
    }
}

pub fn batch(p: *const kf_batch) -> Outcome<Arc<BatchHandle>> {
    match find(&live(), p as usize, "kf_batch")? {
        Entry::Batch(b) => Ok(b.clone()),
        _ => unreachable!("find checks the kind"),
    }
}

/// Drops the registry's reference to a handle of `kind`; NULL is a no-op, as with free().
pub fn remove(handle: usize, kind: &'static str) -> Outcome {
    if handle == 0 {
        return Ok(());
    }
    let entry = {
        let mut live = live();
        find(&live, handle, kind)?;
        live.remove(&handle)
    };
    // Dropped outside the registry lock: releasing a model takes a while.
    drop(entry);
    Ok(())
}

/// Locks what a call runs on, refusing at once when another call holds it.
pub fn try_lock<'a, T: ?Sized>(m: &'a Mutex<T>, what: &str) -> Outcome<MutexGuard<'a, T>> {
    match m.try_lock() {
        Ok(guard) => Ok(guard),
        Err(TryLockError::WouldBlock) => Err(Failure::new(
            kf_status::KF_ERR_BUSY,
            format!(
                "the {what} is busy in another call (on another thread, or the call whose callback this is): it runs one call at a time"
            ),
        )),
        // A panic inside an earlier call left its state unknown.
        Err(TryLockError::Poisoned(_)) => Err(Failure::new(
            kf_status::KF_ERR_INVALID_STATE,
            format!(
                "the {what} was left unusable by an internal error in an earlier call; free it"
            ),
        )),
    }
}

/// Locks a statistics snapshot, which is only ever held to copy it.
pub fn snapshot(m: &Mutex<Option<CacheStats>>) -> MutexGuard<'_, Option<CacheStats>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
