//! Batched and continuous generation on the CPU backend (and, where present, on the GPU
//! backends in f32): every sequence of a batch produces exactly the tokens it produces alone
//! (greedy), whatever its neighbours' prompt lengths and cache policies (in f16 on a GPU, up to
//! near-ties); continuous batching retires finished sequences and admits waiting ones without
//! changing anyone's tokens; the planner refuses a request that can never fit.

mod common;

use std::collections::BTreeMap;

use common::{fixture, load_cpu, random_prompt, smollm2_path};
use keyformer::backend::cuda::CudaDtype;
use keyformer::engine::select::{AnyModel, BackendChoice, BackendOptions};
use keyformer::{
    Backend, BatchLimits, Budget, CacheConfig, Error, Footprint, GenerateParams, Model, Planner,
    Policy, RequestId, Scheduler, StopReason, with_model,
};

use common::ARCHS;

fn params(policy: Policy, budget: usize, max_new_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_new_tokens,
        cache: CacheConfig {
            policy,
            budget: Budget::Tokens(budget),
            seed: 7,
            ..Default::default()
        },
        stop_at_eos: false,
        ..Default::default()
    }
}

/// Prompts of different lengths, each with another policy and budget.
fn requests(vocab: usize, max_new: usize) -> Vec<(Vec<u32>, GenerateParams)> {
    [
        (7, Policy::Full, 0),
        (29, Policy::Keyformer, 10),
        (18, Policy::H2o, 8),
        (3, Policy::Window, 4),
        (24, Policy::Streaming, 9),
        (12, Policy::Keyformer, 6),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (len, policy, budget))| {
        let max_new = max_new - i; // different lengths, so sequences finish at different steps
        (
            random_prompt(vocab, len, 100 + i as u64),
            params(policy, budget.max(1), max_new),
        )
    })
    .collect()
}

/// What each request produces alone, through the single-sequence generator.
fn solo<B: Backend>(model: &Model<B>, requests: &[(Vec<u32>, GenerateParams)]) -> Vec<Vec<u32>> {
    requests
        .iter()
        .map(|(prompt, p)| model.generate(prompt, p, &mut |_, _| true).unwrap().tokens)
        .collect()
}

/// Runs every request through one scheduler, step by step. Returns each request's tokens as
/// the callback saw them, its generation, and the requests that got a token at each step.
struct Batched {
    streamed: BTreeMap<RequestId, Vec<u32>>,
    generations: BTreeMap<RequestId, keyformer::Generation>,
    steps: Vec<Vec<RequestId>>,
    most_running: usize,
}

fn batched<B: Backend>(
    model: &Model<B>,
    limits: BatchLimits,
    requests: &[(Vec<u32>, GenerateParams)],
    stop_after: Option<(RequestId, usize)>,
) -> Batched {
    let mut s = Scheduler::new(model, Planner::for_model(model, &limits).unwrap());
    for (i, (prompt, p)) in requests.iter().enumerate() {
        assert_eq!(s.submit(prompt.clone(), p.clone()).unwrap(), i);
    }
    let mut out = Batched {
        streamed: BTreeMap::new(),
        generations: BTreeMap::new(),
        steps: Vec::new(),
        most_running: 0,
    };
    while s.running() + s.waiting() > 0 {
        let mut this_step = Vec::new();
        let finished = s
            .step(&mut |id, token, _| {
                this_step.push(id);
                let tokens = out.streamed.entry(id).or_default();
                tokens.push(token);
                stop_after != Some((id, tokens.len()))
            })
            .unwrap();
        out.most_running = out.most_running.max(this_step.len());
        out.steps.push(this_step);
        out.generations.extend(finished);
    }
    out
}

/// Runs the requests of `requests` alone and all together, and checks they agree.
fn every_sequence_matches_its_solo_run<B: Backend>(model: &Model<B>, what: &str) {
    let requests = requests(model.config.vocab_size, 30);
    let want = solo(model, &requests);
    let got = batched(model, BatchLimits::default(), &requests, None);
    assert_eq!(got.most_running, requests.len(), "{what}: all run together");
    for (id, (_, p)) in requests.iter().enumerate() {
        let g = &got.generations[&id];
        let policy = p.cache.policy.name();
        assert_eq!(g.tokens, want[id], "{what} request {id} ({policy})");
        assert_eq!(got.streamed[&id], g.tokens, "{what} request {id}: callback");
        assert_eq!(g.stop, StopReason::MaxTokens);
        if p.cache.policy != Policy::Full {
            assert!(
                g.stats.evictions > 0,
                "{what} request {id} ({policy}) evicts"
            );
        }
    }
    println!(
        "{what}: {} sequences of prompt lengths 3..29 and five policies match their solo runs",
        requests.len()
    );
}

#[test]
fn every_sequence_of_a_batch_matches_its_solo_run() {
    for arch in ARCHS {
        let model = load_cpu(&fixture(&format!("tiny-{arch}")));
        every_sequence_matches_its_solo_run(&model, arch);
    }
}

/// The tiny model of every architecture on each GPU backend present, in `dtype`.
fn gpu_models(dtype: CudaDtype) -> Vec<(AnyModel, &'static str)> {
    let mut models = Vec::new();
    for backend in [BackendChoice::Cuda, BackendChoice::Wgpu] {
        let options = BackendOptions {
            backend,
            dtype,
            ..Default::default()
        };
        for arch in ARCHS {
            match AnyModel::load(&fixture(&format!("tiny-{arch}")), &options, &mut |_, _| {}) {
                Ok((model, _)) => models.push((model, arch)),
                Err(e) if common::lacks_feature(&format!("{backend:?} {arch}"), &e) => {}
                Err(e) => {
                    common::skip_if_absent(&format!("{backend:?}"), &e);
                    break;
                }
            }
        }
    }
    models
}

/// The same on each GPU backend present, in f32 (in f16 batched matrix products may round
/// differently from single rows: see the next test).
#[test]
fn gpu_batches_match_their_solo_runs_in_f32() {
    for (model, arch) in gpu_models(CudaDtype::F32) {
        with_model!(&model, m => every_sequence_matches_its_solo_run(
            &**m,
            &format!("{} {arch}", m.backend.name())
        ));
    }
}

/// In f16 a batch's products and attention may round differently from a lone sequence's, so
/// where two tokens are nearly tied a batch may take the other one. On each GPU backend present,
/// each sequence must match its solo run up to its first difference, and there the solo run's
/// logits of the two tokens must be within 2% of the largest logit of each other.
#[test]
fn gpu_batches_match_their_solo_runs_in_f16_up_to_near_ties() {
    for (model, arch) in gpu_models(CudaDtype::F16) {
        with_model!(&model, m => matches_solo_up_to_near_ties(
            &**m,
            &format!("{} {arch}", m.backend.name())
        ));
    }
}

fn matches_solo_up_to_near_ties<B: Backend>(model: &Model<B>, what: &str) {
    let requests = requests(model.config.vocab_size, 30);
    let want = solo(model, &requests);
    let got = batched(model, BatchLimits::default(), &requests, None);
    let mut exact = 0;
    for (id, (prompt, p)) in requests.iter().enumerate() {
        let tokens = &got.generations[&id].tokens;
        assert_eq!(tokens.len(), want[id].len(), "{what} request {id}: length");
        let Some(k) = tokens.iter().zip(&want[id]).position(|(a, b)| a != b) else {
            exact += 1;
            continue;
        };
        // The solo run's logits at step k, after the tokens both runs share.
        let plan = model.plan_request(prompt, p).unwrap();
        let mut s = model
            .new_session_for(plan, prompt.len(), p.max_new_tokens)
            .unwrap();
        let mut logits = model.forward(&mut s, prompt, false).unwrap();
        for &t in &want[id][..k] {
            logits = model.forward(&mut s, &[t], false).unwrap();
        }
        let scale = logits.iter().fold(0f32, |m, x| m.max(x.abs()));
        let gap = logits[want[id][k] as usize] - logits[tokens[k] as usize];
        assert!(
            gap <= 0.02 * scale,
            "{what} request {id}: token {k} differs from the solo run's by a logit gap of {gap} (largest logit {scale})"
        );
        println!(
            "{what} request {id}: differs from token {k} on, a near-tie ({gap:.2e}, largest logit {scale:.2})"
        );
    }
    println!(
        "{what} f16: {exact} of {} sequences match their solo runs exactly",
        requests.len()
    );
}

#[test]
fn continuous_batching_gives_finished_slots_to_waiting_requests() {
    let model = load_cpu(&fixture("tiny-llama"));
    // Five requests of one footprint (12-token prompts, 7 cache slots), of different lengths.
    let policies = [Policy::Keyformer, Policy::H2o, Policy::Window];
    let requests: Vec<_> = (0..5)
        .map(|i| {
            let prompt = random_prompt(model.config.vocab_size, 12, 200 + i as u64);
            (prompt, params(policies[i % 3], 6, 12 - i))
        })
        .collect();
    let want = solo(&model, &requests);
    let (prompt, p) = &requests[0];
    let plan = model.plan_request(prompt, p).unwrap();
    let each = Footprint::new(&model.config, 4, &plan, 12, p.max_new_tokens);
    // Two at a time, by a max batch or by a memory limit that holds two.
    let limits = [
        BatchLimits {
            max_batch: Some(2),
            memory: None,
        },
        BatchLimits {
            max_batch: None,
            memory: Some(each.steady() + each.peak()),
        },
    ];
    for limit in limits {
        // Request 3 is stopped by its callback after 2 tokens.
        let got = batched(&model, limit, &requests, Some((3, 2)));
        assert_eq!(got.most_running, 2, "{limit:?}");
        for (id, want) in want.iter().enumerate() {
            let g = &got.generations[&id];
            if id == 3 {
                assert_eq!(g.stop, StopReason::Callback);
                assert_eq!(g.tokens, want[..2], "request 3 up to its stop");
            } else {
                assert_eq!(&g.tokens, want, "{limit:?}: request {id}");
            }
        }
        // A request starts at the step after the one where a slot freed, while the other
        // running sequence carries on.
        let first = |id| got.steps.iter().position(|s| s.contains(&id)).unwrap();
        let last = |id| got.steps.iter().rposition(|s| s.contains(&id)).unwrap();
        assert_eq!((first(0), first(1)), (0, 0));
        let freed = last(0).min(last(1));
        assert_eq!(first(2), freed + 1, "{limit:?}: {:?}", got.steps);
        assert!(last(0).max(last(1)) > freed, "the other sequence went on");
    }
}

#[test]
fn a_request_that_can_never_fit_is_refused() {
    let model = load_cpu(&fixture("tiny-gpt2"));
    let (prompt, p) = &requests(model.config.vocab_size, 8)[1];
    let limits = BatchLimits {
        max_batch: None,
        memory: Some(10_000),
    };
    let mut s = Scheduler::new(&model, Planner::for_model(&model, &limits).unwrap());
    let err = s.submit(prompt.clone(), p.clone()).unwrap_err();
    let message = err.to_string();
    println!("{message}");
    assert!(matches!(err, Error::InvalidInput(_)));
    assert!(
        message.contains("can never run") && message.contains("the batch has 10000 bytes"),
        "{message}"
    );
    assert_eq!(s.waiting(), 0);
    // Invalid parameters are refused at submission too.
    let err = s.submit(Vec::new(), p.clone()).unwrap_err();
    assert!(err.to_string().contains("prompt is empty"), "{err}");
}

#[test]
fn smollm2_batch_matches_solo_runs() {
    let Some(path) = smollm2_path("smollm2_batch_matches_solo_runs") else {
        return;
    };
    let model = load_cpu(&path);
    let tok = model.tokenizer().unwrap();
    let requests: Vec<(Vec<u32>, GenerateParams)> = [
        ("The capital of France is", Policy::Full, 1),
        (
            "Keyformer keeps a recent window and the key tokens of the KV cache. In short,",
            Policy::Keyformer,
            8,
        ),
        ("Once upon a time, in a small village,", Policy::H2o, 6),
    ]
    .into_iter()
    .map(|(text, policy, budget)| (tok.encode(text).unwrap(), params(policy, budget, 12)))
    .collect();
    let want = solo(&model, &requests);
    let got = batched(&model, BatchLimits::default(), &requests, None);
    for (id, want) in want.iter().enumerate() {
        let g = &got.generations[&id];
        println!("request {id}: {:?}", g.text);
        assert_eq!(&g.tokens, want, "request {id}");
    }
}
