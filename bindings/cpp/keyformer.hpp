// keyformer.hpp: a header-only C++17 wrapper over the keyformer C API (keyformer.h).
//
// Handles become move-only RAII objects, errors become keyformer::Error exceptions carrying
// the status code and message, text becomes std::string, and the per-token callback any
// callable; an exception thrown by the callback stops generation and is rethrown by the call.
// The thread-safety rules are the C API's (see keyformer.h): one call at a time per model.
#ifndef KEYFORMER_HPP
#define KEYFORMER_HPP

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "keyformer.h"

namespace keyformer {

class Error : public std::runtime_error {
public:
    Error(kf_status status, const std::string &message)
        : std::runtime_error(std::string(kf_status_name(status)) + ": " + message),
          status_(status) {}
    kf_status status() const noexcept { return status_; }

private:
    kf_status status_;
};

namespace detail {

inline void check(kf_status status) {
    if (status != KF_OK) throw Error(status, kf_last_error());
}

}  // namespace detail

// Called per token with its id and the text it completes; return false to stop.
using TokenFn = std::function<bool(uint32_t token, std::string_view piece)>;

// Generation settings: the C parameters plus stop strings the wrapper keeps alive.
struct GenerateOptions {
    kf_generate_params params = kf_generate_params_default();
    std::vector<std::string> stop_strings;
};

struct Result {
    std::string text;
    kf_generation info;
};

struct Stats {
    kf_stats summary;
    // Tokens held per (layer, KV head), layer-major.
    std::vector<size_t> kept;
};

struct LogLikelihood {
    double logprob;
    bool greedy;
    std::vector<double> token_logprobs;
};

namespace detail {

// Runs one generating C call with the options and callback, returning its text.
template <typename Call>
Result run(const GenerateOptions &options, const TokenFn &on_token, Call call) {
    std::vector<const char *> stops;
    for (const auto &s : options.stop_strings) stops.push_back(s.c_str());
    kf_generate_params params = options.params;
    params.stop_strings = stops.data();
    params.n_stop_strings = stops.size();

    struct Context {
        const TokenFn *fn;
        std::exception_ptr error;
    } context{&on_token, nullptr};
    kf_token_callback trampoline = [](void *user, uint32_t token, const char *piece,
                                      size_t len) -> int {
        auto *c = static_cast<Context *>(user);
        try {
            return (*c->fn)(token, std::string_view(piece, len)) ? 0 : 1;
        } catch (...) {
            // Exceptions must not cross the C library: keep it, stop, rethrow after.
            c->error = std::current_exception();
            return 1;
        }
    };

    char *text = nullptr;
    Result result{};
    kf_status status = call(&params, on_token ? trampoline : nullptr, &context, &text,
                            &result.info);
    std::unique_ptr<char, void (*)(char *)> owned(text, kf_string_free);
    if (context.error) std::rethrow_exception(context.error);
    check(status);
    result.text = owned.get();
    return result;
}

// Stats from a C stats call, with the per-(layer, head) counts.
template <typename Call>
Stats stats(Call call) {
    Stats s{};
    check(call(&s.summary, nullptr, 0));
    s.kept.resize(s.summary.layers * s.summary.kv_heads);
    if (!s.kept.empty()) check(call(&s.summary, s.kept.data(), s.kept.size()));
    return s;
}

}  // namespace detail

class Model {
public:
    explicit Model(const std::string &path,
                   const kf_model_params &params = kf_model_params_default()) {
        detail::check(kf_model_load(path.c_str(), &params, &handle_));
    }
    ~Model() { kf_model_free(handle_); }
    Model(Model &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    Model &operator=(Model &&other) noexcept {
        std::swap(handle_, other.handle_);
        return *this;
    }
    Model(const Model &) = delete;
    Model &operator=(const Model &) = delete;

    kf_model *get() const noexcept { return handle_; }

    kf_model_info info() const {
        kf_model_info info;
        detail::check(kf_model_describe(handle_, &info));
        return info;
    }

    // Raw-prompt generation (for chat, use a Session).
    Result generate(const std::string &prompt, const GenerateOptions &options = {},
                    const TokenFn &on_token = {}) {
        return detail::run(options, on_token,
                           [&](const kf_generate_params *p, kf_token_callback cb, void *user,
                               char **text, kf_generation *info) {
                               return kf_generate_alloc(handle_, prompt.c_str(), p, cb, user,
                                                        text, info);
                           });
    }

    // The cache of the generation running on this model, or of the latest one.
    Stats cache_stats() const {
        return detail::stats([&](kf_stats *s, size_t *kept, size_t len) {
            return kf_cache_stats(handle_, s, kept, len);
        });
    }

    std::vector<uint32_t> tokenize(const std::string &text) {
        size_t count = 0;
        detail::check(kf_tokenize(handle_, text.c_str(), nullptr, 0, &count));
        std::vector<uint32_t> ids(count);
        if (count) detail::check(kf_tokenize(handle_, text.c_str(), ids.data(), count, &count));
        return ids;
    }

    LogLikelihood loglik(const std::vector<uint32_t> &context,
                         const std::vector<uint32_t> &continuation,
                         const kf_cache_params &cache = kf_cache_params_default()) {
        LogLikelihood ll{0.0, false, std::vector<double>(continuation.size())};
        kf_loglik_result r;
        detail::check(kf_loglik(handle_, context.data(), context.size(), continuation.data(),
                                continuation.size(), &cache, ll.token_logprobs.data(), &r));
        ll.logprob = r.logprob;
        ll.greedy = r.greedy;
        return ll;
    }

private:
    kf_model *handle_ = nullptr;
};

// A chat that keeps its KV cache between turns. It keeps its model alive inside the library.
class Session {
public:
    explicit Session(Model &model, const std::optional<std::string> &system = std::nullopt) {
        detail::check(
            kf_session_new(model.get(), system ? system->c_str() : nullptr, &handle_));
    }
    ~Session() { kf_session_free(handle_); }
    Session(Session &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    Session &operator=(Session &&other) noexcept {
        std::swap(handle_, other.handle_);
        return *this;
    }
    Session(const Session &) = delete;
    Session &operator=(const Session &) = delete;

    Result chat(const std::string &message, const GenerateOptions &options = {},
                const TokenFn &on_token = {}) {
        return detail::run(options, on_token,
                           [&](const kf_generate_params *p, kf_token_callback cb, void *user,
                               char **text, kf_generation *info) {
                               return kf_session_chat_alloc(handle_, message.c_str(), p, cb,
                                                            user, text, info);
                           });
    }

    Stats cache_stats() const {
        return detail::stats([&](kf_stats *s, size_t *kept, size_t len) {
            return kf_session_cache_stats(handle_, s, kept, len);
        });
    }

    // Original positions kept in one layer and KV head, ascending.
    std::vector<uint32_t> cache_positions(size_t layer, size_t kv_head) {
        size_t count = 0;
        detail::check(kf_session_cache_positions(handle_, layer, kv_head, nullptr, 0, &count));
        std::vector<uint32_t> positions(count);
        if (count)
            detail::check(kf_session_cache_positions(handle_, layer, kv_head, positions.data(),
                                                     count, &count));
        return positions;
    }

private:
    kf_session *handle_ = nullptr;
};

// Many requests decoded together on one model, each with its own cache, policy and budget:
// submit them, run() them all, then read each one's result(). Each request produces the tokens
// Model::generate produces for it alone (up to rounding on a GPU). The callback of a request
// runs on run()'s thread; an exception it throws stops that request and is rethrown by run()
// once the others have finished.
class Batch {
public:
    explicit Batch(Model &model, const kf_batch_params &params = kf_batch_params_default()) {
        detail::check(kf_batch_new(model.get(), &params, &handle_));
    }
    ~Batch() { kf_batch_free(handle_); }
    Batch(Batch &&other) noexcept
        : handle_(std::exchange(other.handle_, nullptr)), pending_(std::move(other.pending_)) {}
    Batch &operator=(Batch &&other) noexcept {
        std::swap(handle_, other.handle_);
        std::swap(pending_, other.pending_);
        return *this;
    }
    Batch(const Batch &) = delete;
    Batch &operator=(const Batch &) = delete;

    // Adds a request and returns its number in the batch (0, 1, ... in order).
    uint64_t submit(const std::string &prompt, const GenerateOptions &options = {},
                    TokenFn on_token = {}) {
        std::vector<const char *> stops;
        for (const auto &s : options.stop_strings) stops.push_back(s.c_str());
        kf_generate_params params = options.params;
        params.stop_strings = stops.data();
        params.n_stop_strings = stops.size();
        // The callback lives here until run() returns.
        auto pending = std::make_unique<Pending>(Pending{std::move(on_token), nullptr});
        kf_batch_callback trampoline = [](void *user, uint64_t, uint32_t token, const char *piece,
                                          size_t len) -> int {
            auto *p = static_cast<Pending *>(user);
            try {
                return p->fn(token, std::string_view(piece, len)) ? 0 : 1;
            } catch (...) {
                p->error = std::current_exception();
                return 1;
            }
        };
        uint64_t request = 0;
        detail::check(kf_batch_submit(handle_, prompt.c_str(), &params,
                                      pending->fn ? trampoline : nullptr, pending.get(),
                                      &request));
        pending_.push_back(std::move(pending));
        return request;
    }

    // Runs every request submitted since the last run to its end.
    void run() {
        kf_status status = kf_batch_run(handle_);
        auto ran = std::move(pending_);
        pending_.clear();
        for (const auto &p : ran)
            if (p->error) std::rethrow_exception(p->error);
        detail::check(status);
    }

    // A finished request's text and generation details.
    Result result(uint64_t request) const {
        char *text = nullptr;
        Result result{};
        kf_status status = kf_batch_result(handle_, request, &text, &result.info);
        std::unique_ptr<char, void (*)(char *)> owned(text, kf_string_free);
        detail::check(status);
        result.text = owned.get();
        return result;
    }

private:
    struct Pending {
        TokenFn fn;
        std::exception_ptr error;
    };
    kf_batch *handle_ = nullptr;
    std::vector<std::unique_ptr<Pending>> pending_;
};

}  // namespace keyformer

#endif  // KEYFORMER_HPP
