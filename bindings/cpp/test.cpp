// Tests the C++ wrapper on a real model:  test MODEL
// Prints one line per check and closes with "N passed, N failed".
#include <cstdio>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "keyformer.hpp"

static int passed, failed;

static void expect(bool ok, const std::string &what) {
    (ok ? passed : failed)++;
    std::printf("%s - %s\n", ok ? "ok" : "FAIL", what.c_str());
}

// The status of the keyformer::Error that `f` throws, or KF_OK if it throws none.
template <typename F>
static kf_status thrown(F f) {
    try {
        f();
    } catch (const keyformer::Error &e) {
        return e.status();
    }
    return KF_OK;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s MODEL\n", argv[0]);
        return 2;
    }
    kf_model_params mp = kf_model_params_default();
    mp.backend = KF_BACKEND_CPU;
    expect(thrown([&] { keyformer::Model("/nonexistent.gguf", mp); }) == KF_ERR_NOT_FOUND,
           "a missing model throws KF_ERR_NOT_FOUND");

    keyformer::Model model(argv[1], mp);
    expect(std::string(model.info().architecture) == "llama", "info");

    keyformer::GenerateOptions options;
    options.params.max_new_tokens = 6;
    options.params.cache.policy = KF_POLICY_KEYFORMER;
    std::string streamed;
    auto result = model.generate("The capital of France is", options,
                                 [&](uint32_t, std::string_view piece) {
                                     streamed += piece;
                                     return true;
                                 });
    expect(result.text == streamed && !result.text.empty(), "generate: streamed pieces make the text");
    expect(result.info.generated_tokens == 6 && result.info.stop_reason == KF_STOP_MAX_TOKENS,
           "generate: six tokens");
    auto again = model.generate("The capital of France is", options);
    expect(again.text == result.text, "generate: greedy is deterministic");

    auto stats = model.cache_stats();
    expect(stats.summary.policy == KF_POLICY_KEYFORMER &&
               stats.kept.size() == stats.summary.layers * stats.summary.kv_heads &&
               stats.kept[0] == stats.summary.kept,
           "cache_stats: summary and per-head counts");

    options.stop_strings = {" is"};
    auto stopped = model.generate("The capital of France is Paris. The capital of Italy",
                                  options);
    expect(stopped.info.stop_reason == KF_STOP_STOP_STRING &&
               stopped.text.find(" is") == std::string::npos,
           "generate: a stop string ends the text before it");
    options.stop_strings.clear();

    int seen = 0;
    bool threw = false;
    try {
        model.generate("Hello", options, [&](uint32_t, std::string_view) -> bool {
            if (++seen == 2) throw std::logic_error("from the callback");
            return true;
        });
    } catch (const std::logic_error &) {
        threw = true;
    }
    expect(threw && seen == 2, "an exception in the callback stops generation and is rethrown");

    options.params.max_new_tokens = 0;
    expect(thrown([&] { model.generate("Hello", options); }) == KF_ERR_INVALID_ARGUMENT,
           "bad parameters throw KF_ERR_INVALID_ARGUMENT");
    options.params.max_new_tokens = 12;

    auto ids = model.tokenize("The capital of France is");
    auto paris = model.tokenize(" Paris");
    auto ll = model.loglik(ids, paris);
    expect(ids.size() == 5 && ll.greedy && ll.logprob < 0 && ll.token_logprobs.size() == paris.size(),
           "tokenize and loglik");

    {
        keyformer::Session chat(model, std::string("You are a concise assistant."));
        options.params.cache.kv_budget = 48;
        auto first = chat.chat("What is the capital of France?", options);
        auto second = chat.chat("And what is the capital of Italy?", options);
        std::printf("    chat: %s / %s\n", first.text.c_str(), second.text.c_str());
        expect(!first.text.empty() && !second.text.empty(), "session: two turns");
        auto s = chat.cache_stats();
        expect(s.summary.tokens_seen > 48 && s.summary.kept <= 48, "session: the budget holds");
        auto kept = chat.cache_positions(0, 0);
        expect(kept.size() == s.summary.kept && kept.front() < kept.back(),
               "session: kept positions");
        keyformer::Session moved = std::move(chat);
        expect(moved.cache_stats().summary.tokens_seen == s.summary.tokens_seen,
               "session: moves keep the handle");
    }

    {
        // Three requests with different policies decoded together give their solo texts.
        const char *prompts[] = {"The capital of France is", "Once upon a time",
                                 "Water boils at"};
        const kf_policy policies[] = {KF_POLICY_FULL, KF_POLICY_KEYFORMER, KF_POLICY_H2O};
        keyformer::Batch batch(model);
        std::vector<keyformer::GenerateOptions> each(3);
        std::vector<std::string> streamed(3);
        for (int i = 0; i < 3; i++) {
            each[i].params.max_new_tokens = 8;
            each[i].params.cache.policy = policies[i];
            each[i].params.cache.kv_budget = 4;
            uint64_t id = batch.submit(prompts[i], each[i],
                                       [&, i](uint32_t, std::string_view piece) {
                                           streamed[i] += piece;
                                           return true;
                                       });
            expect(id == static_cast<uint64_t>(i), "batch: requests are numbered in order");
        }
        batch.run();
        for (int i = 0; i < 3; i++) {
            auto got = batch.result(i);
            auto alone = model.generate(prompts[i], each[i]);
            expect(got.text == alone.text && got.text == streamed[i] &&
                       got.info.generated_tokens == 8,
                   std::string("batch: request ") + std::to_string(i) + " matches its solo run");
        }
        expect(thrown([&] { batch.result(7); }) == KF_ERR_INVALID_ARGUMENT,
               "batch: an unknown request throws KF_ERR_INVALID_ARGUMENT");

        batch.submit("Hello", each[0], [&](uint32_t, std::string_view) -> bool {
            throw std::logic_error("from a batch callback");
        });
        bool rethrown = false;
        try {
            batch.run();
        } catch (const std::logic_error &) {
            rethrown = true;
        }
        expect(rethrown, "batch: an exception in a callback is rethrown by run");
    }

    keyformer::Model other = std::move(model);
    expect(other.get() != nullptr && model.get() == nullptr, "model: moves transfer the handle");
    expect(thrown([&] { model.info(); }) == KF_ERR_NULL_ARGUMENT,
           "model: a moved-from model reports NULL");

    std::printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
