//! Errors at the boundary: a status code and a message per failure, the thread-local last
//! error, the panic guard every entry point runs in, and checked access to C arguments.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::kf_status;
use crate::error::Error;

/// Why a call failed, as the caller will see it.
#[derive(Debug)]
pub struct Failure {
    pub status: kf_status,
    pub message: String,
}

impl Failure {
    pub fn new(status: kf_status, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(kf_status::KF_ERR_INVALID_ARGUMENT, message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        use kf_status::*;
        let status = match &e {
            Error::Io { .. } => KF_ERR_IO,
            Error::NotFound(_) => KF_ERR_NOT_FOUND,
            Error::Malformed { .. }
            | Error::File { .. }
            | Error::Unsupported { .. }
            | Error::MissingTensor(_)
            | Error::Shape { .. }
            | Error::UnknownArchitecture { .. }
            | Error::Config(_)
            | Error::Tokenizer(_) => KF_ERR_MODEL,
            Error::InvalidInput(_) => KF_ERR_INVALID_ARGUMENT,
            Error::Backend { .. } | Error::NanLogits => KF_ERR_BACKEND,
        };
        Failure::new(status, e.to_string())
    }
}

pub type Outcome<T = ()> = std::result::Result<T, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A message holding NUL (from a path, say) is cut there rather than lost.
    let bytes = message.split('\0').next().unwrap_or_default();
    let message = CString::new(bytes).unwrap_or_default();
    // `try_with`: during thread teardown the message is dropped rather than panicking.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = message);
}

/// The calling thread's latest error message; valid until its next failing call.
pub fn last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|e| e.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// Runs an entry point's body: a failure or a panic becomes a status code and the thread's
/// last error, so nothing unwinds into the caller.
pub fn guard(body: impl FnOnce() -> Outcome) -> kf_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => kf_status::KF_OK,
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("unknown panic");
            set_last_error(&format!("internal error in keyformer: {what}"));
            kf_status::KF_ERR_INTERNAL
        }
    }
}

pub fn null(name: &str) -> Failure {
    Failure::new(kf_status::KF_ERR_NULL_ARGUMENT, format!("{name} is NULL"))
}

/// A NUL-terminated UTF-8 argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that lives for `'a`.
pub unsafe fn str_arg<'a>(p: *const c_char, name: &str) -> Outcome<&'a str> {
    if p.is_null() {
        return Err(null(name));
    }
    // SAFETY: the caller's promise above.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|e| {
        Failure::new(
            kf_status::KF_ERR_INVALID_UTF8,
            format!(
                "{name} is not valid UTF-8 (bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// A required out pointer.
///
/// # Safety
/// `p` is NULL or points to writable memory for a `T` for `'a`.
pub unsafe fn out_arg<'a, T>(p: *mut T, name: &str) -> Outcome<&'a mut T> {
    // SAFETY: the caller's promise above; the value is only written, never read.
    unsafe { p.as_mut() }.ok_or_else(|| null(name))
}

/// An array the call reads: NULL is allowed only when `len` is 0.
///
/// # Safety
/// `p` is NULL or points to `len` initialised values that live for `'a`.
pub unsafe fn slice_arg<'a, T>(p: *const T, len: usize, name: &str) -> Outcome<&'a [T]> {
    match (p.is_null(), len) {
        (_, 0) => Ok(&[]),
        (true, _) => Err(null(name)),
        // SAFETY: the caller's promise above.
        (false, _) => Ok(unsafe { std::slice::from_raw_parts(p, len) }),
    }
}

/// A caller buffer: NULL with size 0 means none; NULL with a size, or a buffer of size 0, is
/// an error.
///
/// # Safety
/// `p` is NULL or points to `len` writable values for `'a`.
pub unsafe fn buffer_arg<'a, T>(p: *mut T, len: usize, name: &str) -> Outcome<Option<&'a mut [T]>> {
    match (p.is_null(), len) {
        (true, 0) => Ok(None),
        (true, _) => Err(null(name)),
        (false, 0) => Err(Failure::invalid(format!(
            "{name} has size 0: pass NULL with size 0 for no buffer"
        ))),
        // SAFETY: the caller's promise above.
        (false, _) => Ok(Some(unsafe { std::slice::from_raw_parts_mut(p, len) })),
    }
}

/// Copies `items` into an optional caller buffer and reports how many there are; a buffer too
/// small gets what fits and KF_ERR_BUFFER_TOO_SMALL.
pub fn fill<T: Copy>(items: &[T], buf: Option<&mut [T]>, count: &mut usize, what: &str) -> Outcome {
    *count = items.len();
    let Some(buf) = buf else { return Ok(()) };
    let n = items.len().min(buf.len());
    buf[..n].copy_from_slice(&items[..n]);
    if n < items.len() {
        return Err(too_small(what, items.len(), buf.len()));
    }
    Ok(())
}

pub fn too_small(what: &str, needed: usize, size: usize) -> Failure {
    Failure::new(
        kf_status::KF_ERR_BUFFER_TOO_SMALL,
        format!("the buffer for {what} is too small: it holds {size}, {needed} are needed"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> String {
        // SAFETY: last_error returns a NUL-terminated string owned by this thread.
        unsafe { CStr::from_ptr(last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_an_internal_error_with_its_message() {
        assert_eq!(guard(|| panic!("boom")), kf_status::KF_ERR_INTERNAL);
        assert!(message().contains("boom"), "{}", message());
        let status = guard(|| Err(Failure::invalid("bad\0tail")));
        assert_eq!(status, kf_status::KF_ERR_INVALID_ARGUMENT);
        assert_eq!(message(), "bad");
        // Success leaves the last message as it was, like errno.
        assert_eq!(guard(|| Ok(())), kf_status::KF_OK);
        assert_eq!(message(), "bad");
    }

    #[test]
    fn buffers_follow_the_null_and_zero_size_rules() {
        let mut storage = [0u32; 2];
        let p = storage.as_mut_ptr();
        // SAFETY: `p` has 2 writable values; the NULL cases are never dereferenced.
        unsafe {
            assert!(
                buffer_arg(std::ptr::null_mut::<u32>(), 0, "b")
                    .unwrap()
                    .is_none()
            );
            let e = buffer_arg(std::ptr::null_mut::<u32>(), 3, "b").unwrap_err();
            assert_eq!(e.status, kf_status::KF_ERR_NULL_ARGUMENT);
            let e = buffer_arg(p, 0, "b").unwrap_err();
            assert_eq!(e.status, kf_status::KF_ERR_INVALID_ARGUMENT);
            let mut count = 0;
            let e = fill(
                &[7, 8, 9],
                buffer_arg(p, 2, "b").unwrap(),
                &mut count,
                "ids",
            );
            assert_eq!(e.unwrap_err().status, kf_status::KF_ERR_BUFFER_TOO_SMALL);
            assert_eq!(count, 3);
        }
        assert_eq!(storage, [7, 8]);
    }

    #[test]
    fn buffer_too_small_message_reads_as_a_sentence() {
        // Issue 23 quoted "the kept counts needs room for 90".
        let e = fill(
            &[0usize; 90],
            Some(&mut [0usize; 10]),
            &mut 0,
            "the kept counts",
        );
        assert_eq!(
            e.unwrap_err().message,
            "the buffer for the kept counts is too small: it holds 10, 90 are needed"
        );
    }
}
