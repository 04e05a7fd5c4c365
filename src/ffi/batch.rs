//! Batches for C callers: requests are tokenized and checked when submitted, and kf_batch_run
//! hands them all to the engine's continuous-batching scheduler, calling each request's
//! callback with its tokens and keeping each one's generation for kf_batch_result.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::Mutex;

use super::handles::{BatchHandle, ModelHandle, try_lock};
use super::run::c_piece;
use super::status::{Failure, Outcome};
use super::{kf_batch_callback, kf_status};
use crate::backend::Backend;
use crate::engine::batch::Scheduler;
use crate::engine::generate::{GenerateParams, Generation};
use crate::engine::planner::{BatchLimits, Planner};
use crate::model::Model;
use crate::with_model;

/// A request's callback.
pub struct BatchCallback {
    f: kf_batch_callback,
    user_data: *mut c_void,
}

// SAFETY: the pointers are only handed back to the caller's function, on the thread that
// calls kf_batch_run, as the header documents; keyformer never dereferences them.
unsafe impl Send for BatchCallback {}

impl BatchCallback {
    /// # Safety
    /// `f` is None or a function that is safe to call with `user_data` during kf_batch_run.
    pub unsafe fn new(f: kf_batch_callback, user_data: *mut c_void) -> BatchCallback {
        BatchCallback { f, user_data }
    }

    /// Whether the request goes on after this token.
    fn call(&self, request: u64, token: u32, piece: &str) -> bool {
        let Some(f) = self.f else { return true };
        let bytes = c_piece(piece);
        // SAFETY: `new`'s contract; the piece outlives the call.
        unsafe {
            f(
                self.user_data,
                request,
                token,
                bytes.as_ptr().cast(),
                piece.len(),
            ) == 0
        }
    }
}

/// Where a submitted request stands.
enum Request {
    Waiting {
        prompt: Vec<u32>,
        params: GenerateParams,
        on_token: BatchCallback,
    },
    Done(Generation),
    /// The kf_batch_run that ran it failed before it finished.
    Failed(String),
}

/// What a batch handle holds: the planner it admits by, and every request submitted to it.
pub struct BatchState {
    planner: Planner,
    requests: BTreeMap<u64, Request>,
}

pub fn new(model: &ModelHandle, limits: &BatchLimits) -> Outcome<Mutex<BatchState>> {
    let m = try_lock(&model.model, "model")?;
    let planner = with_model!(&*m, m => Planner::for_model(m, limits))?;
    Ok(Mutex::new(BatchState {
        planner,
        requests: BTreeMap::new(),
    }))
}

/// Tokenizes and checks a request and queues it; returns its number.
pub fn submit(
    b: &BatchHandle,
    prompt: &str,
    params: GenerateParams,
    on_token: BatchCallback,
) -> Outcome<u64> {
    let mut state = try_lock(&b.state, "batch")?;
    let model = try_lock(&b.model.model, "model")?;
    let prompt = with_model!(&*model, m => {
        m.tokenizer().and_then(|tok| tok.encode(prompt)).and_then(|ids| {
            state.planner.check(m, &ids, &params)?;
            Ok(ids)
        })
    })?;
    let id = state.requests.len() as u64;
    state.requests.insert(
        id,
        Request::Waiting {
            prompt,
            params,
            on_token,
        },
    );
    Ok(id)
}

/// Runs every waiting request to its end.
pub fn run(b: &BatchHandle) -> Outcome {
    let mut state = try_lock(&b.state, "batch")?;
    let model = try_lock(&b.model.model, "model")?;
    let state = &mut *state;
    let outcome = with_model!(&*model, m => run_on(m, state));
    if let Err(failure) = &outcome {
        for r in state.requests.values_mut() {
            if matches!(r, Request::Waiting { .. }) {
                *r = Request::Failed(failure.message.clone());
            }
        }
    }
    outcome
}

fn run_on<B: Backend>(model: &Model<B>, state: &mut BatchState) -> Outcome {
    let mut scheduler = Scheduler::new(model, state.planner.clone());
    // The scheduler numbers its requests from 0: each one's number in the batch.
    let mut ids = Vec::new();
    for (&id, r) in &state.requests {
        if let Request::Waiting { prompt, params, .. } = r {
            scheduler.submit(prompt.clone(), params.clone())?;
            ids.push(id);
        }
    }
    let requests = &mut state.requests;
    while scheduler.running() + scheduler.waiting() > 0 {
        let finished = scheduler.step(&mut |i, token, piece| match &requests[&ids[i]] {
            Request::Waiting { on_token, .. } => on_token.call(ids[i], token, piece),
            _ => unreachable!("a running request is waiting for its result"),
        })?;
        for (i, generation) in finished {
            requests.insert(ids[i], Request::Done(generation));
        }
    }
    Ok(())
}

/// A finished request's generation.
pub fn result(b: &BatchHandle, request: u64) -> Outcome<Generation> {
    let state = try_lock(&b.state, "batch")?;
    let state_error = |message: String| Failure::new(kf_status::KF_ERR_INVALID_STATE, message);
    match state.requests.get(&request) {
        None => Err(Failure::invalid(format!(
            "request {request} was not submitted to this batch ({} were)",
            state.requests.len()
        ))),
        Some(Request::Waiting { .. }) => Err(state_error(format!(
            "request {request} has not run yet: call kf_batch_run"
        ))),
        Some(Request::Failed(why)) => Err(state_error(format!(
            "request {request} did not finish: its kf_batch_run failed ({why})"
        ))),
        Some(Request::Done(g)) => Ok(g.clone()),
    }
}
