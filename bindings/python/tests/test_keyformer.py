import threading

import pytest

import keyformer
from conftest import MODEL

PROMPT = "The capital of France is"


def test_version_and_info(model):
    assert keyformer.version().count(".") == 2
    assert model.architecture == "llama"
    assert model.vocab_size == 49152 and model.layers == 30 and model.kv_heads == 3
    assert model.backend.startswith("cpu")


def test_defaults_cross_the_boundary_intact():
    # A struct layout out of step with keyformer.h would scramble these.
    p = keyformer.lib.kf_generate_params_default()
    assert (p.max_new_tokens, p.top_p, p.stop_at_eos) == (128, 1.0, 1)
    c = p.cache
    assert (c.policy, c.kv_ratio, c.kv_budget, c.sinks, c.tau_init, c.tau_end) == (
        0, 0.5, 0, -1, 1.0, 2.0)
    assert abs(c.recent_ratio - 0.3) < 1e-6
    assert c.prefill_chunk == 0
    assert keyformer.lib.kf_model_params_default().quantize is None


def test_chunked_prefill_is_a_cache_keyword(model):
    one_pass = model.generate(PROMPT, max_new_tokens=4, policy="h2o", kv_budget=4)
    chunked = model.generate(PROMPT, max_new_tokens=4, policy="h2o", kv_budget=4,
                             prefill_chunk=2)
    whole = model.generate(PROMPT, max_new_tokens=4, policy="h2o", kv_budget=4,
                           prefill_chunk=64)
    assert whole.text == one_pass.text
    assert chunked.generated_tokens == 4
    with pytest.raises(ValueError):
        model.generate(PROMPT, max_new_tokens=4, prefill_chunk=-1)


def test_generate_is_greedy_and_reports_the_cache(model):
    g = model.generate(PROMPT, max_new_tokens=6, policy="keyformer")
    assert g.text.startswith(" Paris")
    assert (g.prompt_tokens, g.generated_tokens, g.stop_reason) == (5, 6, "max_tokens")
    s = g.stats
    assert s.policy == "keyformer" and s.budget == 2 and s.kept == 2
    assert s.tokens_seen == 10 and s.evictions > 0 and s.compression_ratio > 1
    assert model.generate(PROMPT, max_new_tokens=6, policy="keyformer").text == g.text


def test_stats_have_per_head_counts(model):
    model.generate(PROMPT, max_new_tokens=2, policy="h2o", kv_budget=3)
    s = model.stats()
    assert len(s.kept_per_head) == 30 and all(len(layer) == 3 for layer in s.kept_per_head)
    assert all(k == 3 for layer in s.kept_per_head for k in layer)


def test_callback_sees_every_token_and_can_stop(model):
    pieces = []
    g = model.generate(PROMPT, on_token=lambda t, p: pieces.append(p) or len(pieces) < 3,
                       max_new_tokens=10)
    assert len(pieces) == 3 and g.stop_reason == "callback" and g.generated_tokens == 3
    assert "".join(pieces) == g.text


def test_callback_exception_propagates(model):
    def boom(token, piece):
        raise RuntimeError("from the callback")

    with pytest.raises(RuntimeError, match="from the callback"):
        model.generate(PROMPT, on_token=boom)


def test_stream_yields_the_text(model):
    stream = model.stream(PROMPT, max_new_tokens=8, policy="streaming", kv_budget=6)
    pieces = list(stream)
    assert "".join(pieces) == stream.result.text and len(pieces) == 8
    assert stream.result.stats.policy == "streaming"


def test_stream_stops_early_and_frees_the_model(model):
    with model.stream(PROMPT, max_new_tokens=100) as stream:
        first = next(stream)
    assert first
    assert stream.result.stop_reason == "callback"
    model.generate(PROMPT, max_new_tokens=1)  # not busy any more


def test_stop_strings(model):
    g = model.generate("Count: one, two, three,", max_new_tokens=20, stop=[" five"])
    assert g.stop_reason == "stop_string" and " five" not in g.text


def test_errors_carry_status_and_message(model):
    with pytest.raises(keyformer.KeyformerError) as e:
        keyformer.Model("/nonexistent.gguf", backend="cpu")
    assert e.value.status == "KF_ERR_NOT_FOUND" and "/nonexistent.gguf" in e.value.message
    with pytest.raises(keyformer.KeyformerError) as e:
        model.generate(PROMPT, temperature=-1.0)
    assert e.value.status == "KF_ERR_INVALID_ARGUMENT" and "temperature" in e.value.message
    with pytest.raises(keyformer.KeyformerError, match="KF_ERR_INVALID_ARGUMENT"):
        model.generate("")
    with pytest.raises(keyformer.KeyformerError, match="KF_ERR_BACKEND"):
        keyformer.Model(MODEL, backend="wgpu", dtype="bf16")  # bf16 is CUDA only
    with pytest.raises(keyformer.KeyformerError) as e:
        keyformer.Model(MODEL, backend="cpu", quantize="q9")
    assert e.value.status == "KF_ERR_INVALID_ARGUMENT" and "q9" in e.value.message
    with pytest.raises(ValueError):
        model.generate(PROMPT, policy="lru")


def test_one_model_from_two_threads_is_refused(model):
    started, release = threading.Event(), threading.Event()

    def hold(token, piece):
        started.set()
        release.wait(10)
        return False

    worker = threading.Thread(target=lambda: model.generate(PROMPT, on_token=hold))
    worker.start()
    assert started.wait(10)
    try:
        with pytest.raises(keyformer.KeyformerError) as e:
            model.generate(PROMPT, max_new_tokens=1)
        assert e.value.status == "KF_ERR_BUSY"
        assert model.stats().tokens_seen >= 5  # stats never wait
    finally:
        release.set()
        worker.join()


def test_chat_keeps_the_cache_between_turns(model):
    with model.chat(system="You are a concise assistant.") as chat:
        first = chat.send("What is the capital of France?", max_new_tokens=16,
                          policy="keyformer", kv_budget=40)
        assert "Paris" in first.text
        second = chat.send("And of Italy?", max_new_tokens=16, policy="keyformer", kv_budget=40)
        assert second.prompt_tokens < first.prompt_tokens
        s = chat.stats()
        assert s.tokens_seen > first.stats.tokens_seen and s.kept <= 40
        kept = chat.positions(0, 0)
        assert len(kept) == s.kept and kept == sorted(kept)
        pieces = list(chat.stream("And of Spain?", max_new_tokens=4, policy="keyformer",
                                  kv_budget=40))
        assert len(pieces) >= 1
        with pytest.raises(keyformer.KeyformerError, match="KF_ERR_INVALID_ARGUMENT"):
            chat.send("More?", policy="h2o", kv_budget=40)


def test_loglik(model):
    ll = model.loglik(PROMPT, " Paris")
    assert ll.greedy and ll.logprob < 0 and abs(sum(ll.token_logprobs) - ll.logprob) < 1e-9
    worse = model.loglik(PROMPT, " London")
    assert worse.logprob < ll.logprob and not worse.greedy
    squeezed = model.loglik(model.tokenize(PROMPT), model.tokenize(" Paris is"),
                            policy="keyformer", kv_budget=2)
    assert squeezed.logprob < 0
    assert model.stats().policy == "keyformer"
    with pytest.raises(keyformer.KeyformerError, match="KF_ERR_INVALID_ARGUMENT"):
        model.loglik([], [1])


def test_batch_gives_each_prompt_its_solo_tokens(model):
    prompts = [PROMPT, "Once upon a time, in a small village,", "Keyformer keeps key tokens",
               PROMPT]
    options = [dict(policy="full"), dict(policy="keyformer", kv_budget=4),
               dict(policy="h2o", kv_budget=4), dict(policy="window", kv_budget=3)]
    solo = []
    for prompt, opts in zip(prompts, options):
        tokens = []
        g = model.generate(prompt, on_token=lambda t, p, tokens=tokens: tokens.append(t),
                           max_new_tokens=6, **opts)
        solo.append((tokens, g.text))
    with model.batch(max_batch=2) as batch:  # four requests, two at a time
        streamed = [[] for _ in prompts]
        requests = [
            batch.submit(prompt, on_token=lambda t, p, got=got: got.append(t), max_new_tokens=6,
                         **opts)
            for prompt, opts, got in zip(prompts, options, streamed)
        ]
        assert requests == [0, 1, 2, 3]
        batch.run()
        for i, r in enumerate(requests):
            g = batch.result(r)
            assert (streamed[i], g.text) == solo[i], i
            assert g.generated_tokens == 6 and g.stats.policy == options[i]["policy"]
    texts = [g.text for g in model.generate_batch(prompts[:2], max_new_tokens=6, policy="full")]
    assert texts[0] == solo[0][1]
    model.generate(PROMPT, max_new_tokens=1)  # the model is free again


def test_batch_errors(model):
    with model.batch(memory_limit=100_000) as small:
        with pytest.raises(keyformer.KeyformerError) as e:
            small.submit(PROMPT)
        assert e.value.status == "KF_ERR_INVALID_ARGUMENT" and "can never run" in e.value.message
    with model.batch() as batch:
        with pytest.raises(keyformer.KeyformerError, match="KF_ERR_INVALID_STATE"):
            batch.result(batch.submit(PROMPT, max_new_tokens=2))
        with pytest.raises(keyformer.KeyformerError, match="KF_ERR_INVALID_ARGUMENT"):
            batch.result(5)

        def boom(token, piece):
            raise RuntimeError("from a batch callback")

        batch.submit(PROMPT, on_token=boom, max_new_tokens=4)
        with pytest.raises(RuntimeError, match="from a batch callback"):
            batch.run()
        assert batch.result(1).stop_reason == "callback"
        assert batch.result(0).generated_tokens == 2


def test_tokenize(model):
    ids = model.tokenize(PROMPT)
    assert len(ids) == 5 and model.tokenize("") == []


def test_every_backend_through_the_abi_agrees_with_the_cpu():
    # A tiny random-weight model (no tokenizer: token ids only) on each backend present.
    tiny = MODEL.parents[1] / "tests/fixtures/tiny-llama"
    ids, cont = list(range(1, 17)), [17, 18, 19]
    with keyformer.Model(tiny, backend="cpu") as cpu:
        ref = cpu.loglik(ids, cont, policy="keyformer", kv_budget=8)
    ran = []
    for backend in ("cuda", "wgpu"):
        try:
            model = keyformer.Model(tiny, backend=backend, dtype="f32")
        except keyformer.KeyformerError as e:
            assert e.status == "KF_ERR_BACKEND"
            continue
        with model:
            got = model.loglik(ids, cont, policy="keyformer", kv_budget=8)
        assert abs(got.logprob - ref.logprob) < 1e-3 * max(1.0, abs(ref.logprob)), backend
        ran.append(backend)
    print("backends checked against the cpu:", ran or "none present")


def test_generation_options_follow_the_rules_of_the_cli_and_c(model):
    # Issue 23: one check for every front end; ctypes would wrap a negative size silently.
    for options, message in [
        ({"max_new_tokens": 0}, "max new tokens is 0: it must be at least 1"),
        ({"stop": ["x", ""]}, "stop string 1 is empty"),
        ({"temperature": -1.0}, "temperature -1 must be >= 0"),
    ]:
        with pytest.raises(keyformer.KeyformerError, match="KF_ERR_INVALID_ARGUMENT") as e:
            model.generate(PROMPT, **options)
        assert message in e.value.message
    with pytest.raises(ValueError, match="max_new_tokens -1 must be >= 0"):
        model.generate(PROMPT, max_new_tokens=-1)
    with model.batch(max_batch=2) as batch:
        with pytest.raises(keyformer.KeyformerError, match="max new tokens is 0"):
            batch.submit(PROMPT, max_new_tokens=0)
    # kv_budget 0 leaves the budget to kv_ratio, as on the command line.
    a = model.generate(PROMPT, max_new_tokens=2, policy="h2o", kv_budget=0, kv_ratio=0.5)
    b = model.generate(PROMPT, max_new_tokens=2, policy="h2o", kv_ratio=0.5)
    assert a.stats.budget == b.stats.budget > 0
