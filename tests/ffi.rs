//! The engine pieces behind the C ABI, on SmolLM2: chat turns over a kept cache equal
//! recomputing the whole conversation, and log-likelihood agrees with generation. The ABI
//! itself is tested from C, C++ and Python by scripts/test-bindings.sh.

mod common;

use std::sync::OnceLock;

use common::{load_cpu, smollm2_path};
use keyformer::engine::conversation::Conversation;
use keyformer::{Budget, CacheConfig, CpuBackend, GenerateParams, Generation, Model, Policy};

fn model(test: &str) -> Option<&'static Model<CpuBackend>> {
    static MODEL: OnceLock<Option<Model<CpuBackend>>> = OnceLock::new();
    let path = smollm2_path(test)?;
    MODEL.get_or_init(|| Some(load_cpu(&path))).as_ref()
}

fn params(max_new_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_new_tokens,
        ..Default::default()
    }
}

fn say(
    conv: &mut Conversation<CpuBackend>,
    m: &Model<CpuBackend>,
    message: &str,
    p: &GenerateParams,
) -> Generation {
    let mut turn = conv.say(m, message, p).unwrap();
    while turn.next_token().unwrap().is_some() {}
    turn.finish().unwrap()
}

#[test]
fn first_turn_equals_generating_from_the_chat_template() {
    let Some(m) = model("first_turn_equals_generating_from_the_chat_template") else {
        return;
    };
    let tok = m.tokenizer().unwrap();
    let message = "What is the capital of France?";
    let prompt = tok
        .encode(&tok.apply_chat_template(message).unwrap())
        .unwrap();
    let expected = m.generate(&prompt, &params(12), &mut |_, _| true).unwrap();
    let mut conv = Conversation::new(None);
    let got = say(&mut conv, m, message, &params(12));
    assert_eq!(got.tokens, expected.tokens);
    assert_eq!(got.text, expected.text);
    assert_eq!(got.prompt_tokens, prompt.len());
}

#[test]
fn second_turn_on_the_kept_cache_equals_recomputing_the_chat() {
    let Some(m) = model("second_turn_on_the_kept_cache_equals_recomputing_the_chat") else {
        return;
    };
    let tok = m.tokenizer().unwrap();
    let (first, second) = ("Name a fruit.", "What colour is it?");
    let mut conv = Conversation::new(None);
    let reply = say(&mut conv, m, first, &params(24));
    let turn = say(&mut conv, m, second, &params(16));

    // SmolLM2's template, written out: the first turn's text, the reply, the second turn.
    let opening = tok.apply_chat_template(first).unwrap();
    let whole = format!(
        "{opening}{}<|im_end|>\n<|im_start|>user\n{second}<|im_end|>\n<|im_start|>assistant\n",
        reply.text
    );
    let prompt = tok.encode(&whole).unwrap();
    assert_eq!(
        turn.prompt_tokens + reply.prompt_tokens + reply.tokens.len(),
        prompt.len() + usize::from(reply.stop != keyformer::StopReason::Eos),
        "the second turn ran only what the chat added"
    );
    let expected = m.generate(&prompt, &params(16), &mut |_, _| true).unwrap();
    assert_eq!(
        turn.tokens, expected.tokens,
        "{:?} vs {:?}",
        turn.text, expected.text
    );
    assert_eq!(turn.stats.tokens_seen, expected.stats.tokens_seen);
}

#[test]
fn keyformer_chat_keeps_its_budget_across_turns() {
    let Some(m) = model("keyformer_chat_keeps_its_budget_across_turns") else {
        return;
    };
    let p = GenerateParams {
        max_new_tokens: 8,
        cache: CacheConfig {
            policy: Policy::Keyformer,
            budget: Budget::Tokens(32),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut conv = Conversation::new(Some("You are terse."));
    let mut seen = 0;
    for message in ["Hello!", "Name three colours.", "And three animals?"] {
        let g = say(&mut conv, m, message, &p);
        assert!(g.stats.tokens_seen > seen, "the conversation grows");
        seen = g.stats.tokens_seen;
        assert!(g.stats.layers.iter().all(|l| l.kept[0] <= 32));
    }
    let stats = conv
        .session()
        .map(|s| m.cache_stats(s, false).unwrap())
        .unwrap();
    assert!(stats.evictions > 0 && stats.tokens_seen > 32);
    let other = GenerateParams {
        cache: CacheConfig::default(),
        ..p
    };
    assert!(
        conv.say(m, "More?", &other).is_err(),
        "cache settings are fixed"
    );
}

#[test]
fn loglik_of_a_greedy_continuation_matches_generation() {
    let Some(m) = model("loglik_of_a_greedy_continuation_matches_generation") else {
        return;
    };
    let tok = m.tokenizer().unwrap();
    let context = tok.encode("The capital of France is").unwrap();
    let generated = m.generate(&context, &params(6), &mut |_, _| true).unwrap();
    let full = m
        .loglik(&context, &generated.tokens, &CacheConfig::default())
        .unwrap();
    assert!(full.greedy);
    assert_eq!(full.token_logprobs.len(), 6);
    let sum: f64 = full.token_logprobs.iter().sum();
    assert!((full.logprob - sum).abs() < 1e-9);

    // A budget that never fills evicts nothing: the token-by-token path then computes what the
    // full cache's single pass does.
    let roomy = CacheConfig {
        policy: Policy::Keyformer,
        budget: Budget::Tokens(64),
        ..Default::default()
    };
    let stepwise = m.loglik(&context, &generated.tokens, &roomy).unwrap();
    for (a, b) in full.token_logprobs.iter().zip(&stepwise.token_logprobs) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }
    assert_eq!(stepwise.stats.evictions, 0);

    let tight = CacheConfig {
        policy: Policy::Keyformer,
        budget: Budget::Tokens(3),
        ..Default::default()
    };
    let evicting = m.loglik(&context, &generated.tokens, &tight).unwrap();
    assert!(evicting.stats.evictions > 0);
    assert!(evicting.logprob.is_finite());
    assert!(m.loglik(&[], &generated.tokens, &tight).is_err());
    assert!(m.loglik(&context, &[u32::MAX], &tight).is_err());
}
