"""The lm-evaluation-harness adapter (keyformer.lm_eval_adapter) on the small local tasks in
lm_eval_task/. lm_eval is not a dependency of the package and CI does not install it, so
these tests skip without it; `pip install lm_eval` (no torch needed) runs them."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import MODEL

lm_eval = pytest.importorskip(
    "lm_eval",
    reason="lm_eval is not installed (pip install lm_eval): the lm-eval adapter test is skipped",
)
from keyformer.lm_eval_adapter import KeyformerLM  # noqa: E402 - registers "keyformer"

TASKS = Path(__file__).with_name("lm_eval_task")
ARGS = f"pretrained={MODEL},policy=keyformer,kv_ratio=0.5,backend=cpu"


@pytest.fixture(scope="module")
def lm():
    if not MODEL.exists():
        pytest.skip(f"{MODEL} not found (run scripts/fetch.sh)")
    return KeyformerLM.create_from_arg_string(ARGS, {"batch_size": 1, "device": None})


def requests(*args):
    return [SimpleNamespace(args=a) for a in args]


def test_simple_evaluate_on_the_local_tasks():
    if not MODEL.exists():
        pytest.skip(f"{MODEL} not found (run scripts/fetch.sh)")
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    results = lm_eval.simple_evaluate(
        model="keyformer",
        model_args=ARGS,
        tasks=["kf_facts", "kf_facts_gen", "kf_facts_ppl"],
        task_manager=TaskManager(include_path=str(TASKS)),
        limit=10,
    )
    print(make_table(results))
    r = results["results"]
    for task, metric in [("kf_facts", "acc"), ("kf_facts", "acc_norm"),
                         ("kf_facts_gen", "exact_match")]:
        value = next(v for k, v in r[task].items() if k.split(",")[0] == metric)
        assert 0.0 <= value <= 1.0, (task, metric, value)
    # Four choices: chance is 0.25; SmolLM2-135M with half the cache gets 0.7 of these.
    assert r["kf_facts"]["acc,none"] > 0.5
    ppl = r["kf_facts_ppl"]
    assert 1.0 < ppl["word_perplexity,none"] < math.inf
    assert 1.0 < ppl["byte_perplexity,none"] < math.inf and ppl["bits_per_byte,none"] > 0
    assert results["config"]["model"] == "keyformer"


def test_loglikelihood_splits_the_pair_like_lm_eval(lm):
    paris, london, spaced = lm.loglikelihood(requests(
        ("The capital of France is", " Paris"),
        ("The capital of France is", " London"),
        ("The capital of France is ", "Paris"),  # the space moves to the continuation
    ))
    assert paris[1] and not london[1] and paris[0] > london[0]
    assert spaced == paris
    direct = lm.model.loglik("The capital of France is", " Paris", **lm.cache)
    assert paris == (direct.logprob, direct.greedy)


def test_empty_context_needs_a_prefix(lm):
    with pytest.raises(ValueError, match="prefix_token_id"):
        lm.loglikelihood(requests(("", "Paris")))
    lm.prefix_token_id = 0
    try:
        ((logprob, _),) = lm.loglikelihood(requests(("", "Paris")))
        assert logprob < 0
    finally:
        lm.prefix_token_id = None


def test_rolling_scores_every_token_after_the_first(lm, monkeypatch):
    text = "Paris is the capital of France. Rome is the capital of Italy."
    tokens = lm.model.tokenize(text)
    full = lm.model.loglik(tokens[:1], tokens[1:]).logprob
    lm.cache["policy"] = "full"
    try:
        assert lm.loglikelihood_rolling(requests((text,))) == [pytest.approx(full)]
    finally:
        lm.cache["policy"] = "keyformer"

    # In windows of 6 tokens, with a keyformer budget of half of each window.
    calls = []
    real = lm.model.loglik
    monkeypatch.setattr(lm.model, "loglik",
                        lambda c, t, **cache: calls.append((c, t, cache)) or real(c, t, **cache))
    monkeypatch.setattr(lm, "max_length", 6)
    (windowed,) = lm.loglikelihood_rolling(requests((text,)))
    assert windowed < 0 and len(calls) > 2
    assert sum(len(t) for _, t, _ in calls) == len(tokens) - 1
    assert all(len(c) + len(t) <= 6 + 1 for c, t, _ in calls)
    assert all(cache["kv_budget"] == max(1, (len(c) + len(t)) // 2) for c, t, cache in calls)


def test_generate_until_stops_at_the_until_strings(lm):
    prompt = "Question: What is the capital of Italy?\nAnswer: Rome\n\n" \
             "Question: What is the capital of France?\nAnswer:"
    (text,) = lm.generate_until(requests((prompt, {"until": ["\n"], "max_gen_toks": 8})))
    assert text.strip() == "Paris"
    (text,) = lm.generate_until(requests(("Count: one, two, three,", {"until": [" five"]})))
    assert " five" not in text and "four" in text
