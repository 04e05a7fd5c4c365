/* Tests the C API's contract: every error path (NULLs, invalid UTF-8, zero-size and small
 * buffers, out-of-range parameters, freed and foreign handles, busy models), the thread-safety
 * rule, sessions, statistics, log-likelihood and batches.
 *
 *     test_api MODEL
 *
 * Prints one line per check and closes with "N passed, N failed". */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keyformer.h"

static int passed, failed;

static void expect(int ok, const char *what) {
    if (ok) {
        passed++;
        printf("ok - %s\n", what);
    } else {
        failed++;
        printf("FAIL - %s\n", what);
    }
}

/* Checks a status, and that an error comes with a message. */
static void expect_status(kf_status got, kf_status want, const char *what) {
    char line[512];
    int ok = got == want && (want == KF_OK || kf_last_error()[0] != '\0');
    snprintf(line, sizeof line, "%s: %s%s%s", what, kf_status_name(got),
             got == want ? "" : ", expected ", got == want ? "" : kf_status_name(want));
    expect(ok, line);
    if (!ok && got != KF_OK) printf("    message: %s\n", kf_last_error());
}

static const char *model_path;

static kf_generate_params small_params(void) {
    kf_generate_params p = kf_generate_params_default();
    p.max_new_tokens = 3;
    return p;
}

static kf_status generate(kf_model *m, const char *prompt, const kf_generate_params *p) {
    return kf_generate(m, prompt, p, NULL, NULL, NULL, 0, NULL, NULL);
}

static void test_load_errors(void) {
    kf_model *m = NULL;
    kf_model_params p = kf_model_params_default();
    expect_status(kf_model_load(NULL, NULL, &m), KF_ERR_NULL_ARGUMENT, "load: NULL path");
    expect_status(kf_model_load(model_path, NULL, NULL), KF_ERR_NULL_ARGUMENT,
                  "load: NULL out handle");
    expect_status(kf_model_load("models/\xff\xfe.gguf", NULL, &m), KF_ERR_INVALID_UTF8,
                  "load: path not UTF-8");
    p.backend = KF_BACKEND_CPU;
    expect_status(kf_model_load("/nonexistent/model.gguf", &p, &m), KF_ERR_NOT_FOUND,
                  "load: missing file");
    const char *junk = "/tmp/keyformer-test-junk.gguf";
    FILE *f = fopen(junk, "wb");
    fputs("GGUF but not really", f);
    fclose(f);
    expect_status(kf_model_load(junk, &p, &m), KF_ERR_MODEL, "load: malformed file");
    remove(junk);
    p.backend = 99;
    expect_status(kf_model_load(model_path, &p, &m), KF_ERR_INVALID_ARGUMENT,
                  "load: backend out of range");
    p = kf_model_params_default();
    p.dtype = -5;
    expect_status(kf_model_load(model_path, &p, &m), KF_ERR_INVALID_ARGUMENT,
                  "load: dtype out of range");
    p = kf_model_params_default();
    p.backend = KF_BACKEND_CPU;
    p.quantize = "q9";
    expect_status(kf_model_load(model_path, &p, &m), KF_ERR_INVALID_ARGUMENT,
                  "load: unknown quantize type");
    p = kf_model_params_default();
    p.backend = KF_BACKEND_CUDA;
    kf_status cuda = kf_model_load(model_path, &p, &m);
    expect(cuda == KF_ERR_BACKEND || cuda == KF_OK,
           "load: cuda gives a model or KF_ERR_BACKEND (no GPU)");
    kf_model_free(m);
    m = NULL;
    p.backend = KF_BACKEND_WGPU;
    p.dtype = KF_DTYPE_BF16;
    expect_status(kf_model_load(model_path, &p, &m), KF_ERR_BACKEND,
                  "load: a dtype the backend cannot store");
    expect(m == NULL, "load: no handle written on failure");
}

static void test_generate_errors(kf_model *m) {
    kf_generate_params p = small_params();
    expect_status(generate(NULL, "hi", &p), KF_ERR_NULL_ARGUMENT, "generate: NULL model");
    expect_status(generate(m, NULL, &p), KF_ERR_NULL_ARGUMENT, "generate: NULL prompt");
    expect_status(generate(m, "caf\xc3", &p), KF_ERR_INVALID_UTF8, "generate: prompt not UTF-8");
    expect_status(generate(m, "", &p), KF_ERR_INVALID_ARGUMENT, "generate: empty prompt");

    static const char *spoiled[] = {
        "max_new_tokens 0", "temperature -1", "top_p 0", "policy 42", "kv_ratio 2",
        "recent_ratio 1", "sinks -2", "tau_init 0", "budget below the minimum",
    };
    for (int i = 0; i < (int)(sizeof spoiled / sizeof spoiled[0]); i++) {
        kf_generate_params q = small_params();
        switch (i) {
        case 0: q.max_new_tokens = 0; break;
        case 1: q.temperature = -1; break;
        case 2: q.top_p = 0; break;
        case 3: q.cache.policy = 42; break;
        case 4: q.cache.policy = KF_POLICY_KEYFORMER, q.cache.kv_ratio = 2; break;
        case 5: q.cache.policy = KF_POLICY_H2O, q.cache.recent_ratio = 1; break;
        case 6: q.cache.sinks = -2; break;
        case 7: q.cache.policy = KF_POLICY_KEYFORMER, q.cache.tau_init = 0; break;
        case 8: q.cache.policy = KF_POLICY_STREAMING, q.cache.kv_budget = 2; break;
        }
        char what[128];
        snprintf(what, sizeof what, "generate: %s", spoiled[i]);
        expect_status(generate(m, "Hello", &q), KF_ERR_INVALID_ARGUMENT, what);
    }

    const char *stops[] = {"\n", NULL};
    p.stop_strings = NULL;
    p.n_stop_strings = 1;
    expect_status(generate(m, "Hello", &p), KF_ERR_NULL_ARGUMENT, "generate: NULL stop list");
    p.stop_strings = stops;
    p.n_stop_strings = 2;
    expect_status(generate(m, "Hello", &p), KF_ERR_NULL_ARGUMENT, "generate: NULL stop string");
    stops[1] = "";
    expect_status(generate(m, "Hello", &p), KF_ERR_INVALID_ARGUMENT,
                  "generate: empty stop string");
    stops[1] = "\xc0";
    expect_status(generate(m, "Hello", &p), KF_ERR_INVALID_UTF8,
                  "generate: stop string not UTF-8");

    /* A prompt longer than the model's context (8192 tokens for SmolLM2). */
    size_t n = 9000;
    char *long_prompt = malloc(n * 3 + 1);
    for (size_t i = 0; i < n; i++) memcpy(long_prompt + 3 * i, " ab", 3);
    long_prompt[n * 3] = '\0';
    p = small_params();
    expect_status(generate(m, long_prompt, &p), KF_ERR_INVALID_ARGUMENT,
                  "generate: prompt longer than the context");
    free(long_prompt);

    char buf[8];
    size_t len = 0;
    expect_status(kf_generate(m, "Hello", &p, NULL, NULL, buf, 0, &len, NULL),
                  KF_ERR_INVALID_ARGUMENT, "generate: zero-size text buffer");
    expect_status(kf_generate(m, "Hello", &p, NULL, NULL, NULL, 8, &len, NULL),
                  KF_ERR_NULL_ARGUMENT, "generate: NULL text with a size");
    char *alloc = (char *)1;
    expect_status(kf_generate_alloc(m, NULL, &p, NULL, NULL, &alloc, NULL),
                  KF_ERR_NULL_ARGUMENT, "generate_alloc: NULL prompt");
    expect(alloc == NULL, "generate_alloc: *text is NULL after an error");
    expect_status(kf_generate_alloc(m, "Hello", &p, NULL, NULL, NULL, NULL),
                  KF_ERR_NULL_ARGUMENT, "generate_alloc: NULL text pointer");
}

static void test_buffers(kf_model *m) {
    kf_generate_params p = small_params();
    char full[256], tiny[4];
    size_t full_len = 0, tiny_len = 0;
    kf_generation result;
    expect_status(kf_generate(m, "The capital of France is", &p, NULL, NULL, full, sizeof full,
                              &full_len, &result),
                  KF_OK, "generate: into a buffer");
    expect(strlen(full) == full_len && full_len > 0 && result.generated_tokens == 3,
           "generate: text_len and result match the text");
    expect_status(kf_generate(m, "The capital of France is", &p, NULL, NULL, tiny, sizeof tiny,
                              &tiny_len, NULL),
                  KF_ERR_BUFFER_TOO_SMALL, "generate: buffer too small");
    expect(tiny_len == full_len && strlen(tiny) <= 3 && strncmp(tiny, full, strlen(tiny)) == 0,
           "generate: a small buffer holds a NUL-terminated prefix, text_len the full length");

    char *alloc = NULL;
    expect_status(kf_generate_alloc(m, "The capital of France is", &p, NULL, NULL, &alloc, NULL),
                  KF_OK, "generate_alloc");
    expect(alloc && strcmp(alloc, full) == 0, "generate_alloc: same text as the buffer");
    kf_string_free(alloc);
    kf_string_free(NULL);

    uint32_t ids[2];
    size_t count = 0;
    expect_status(kf_tokenize(m, "The capital of France is", NULL, 0, &count), KF_OK,
                  "tokenize: count only");
    expect(count == 5, "tokenize: 5 tokens");
    expect_status(kf_tokenize(m, "The capital of France is", ids, 2, &count),
                  KF_ERR_BUFFER_TOO_SMALL, "tokenize: buffer too small");
    expect_status(kf_tokenize(m, "The capital", ids, 2, NULL), KF_ERR_NULL_ARGUMENT,
                  "tokenize: NULL count");
}

static void test_stats(kf_model *m) {
    kf_stats s;
    size_t kept[2];
    expect_status(kf_cache_stats(m, NULL, NULL, 0), KF_ERR_NULL_ARGUMENT, "stats: NULL out");
    expect_status(kf_cache_stats(m, &s, kept, 0), KF_ERR_INVALID_ARGUMENT,
                  "stats: zero-size kept buffer");
    expect_status(kf_cache_stats(m, &s, kept, 2), KF_ERR_BUFFER_TOO_SMALL,
                  "stats: kept buffer too small");
    expect(s.layers == 30 && s.kv_heads == 3, "stats: filled even when kept is too small");
}

struct reentry {
    kf_model *model;
    kf_status inner;
    kf_stats stats;
    kf_status stats_status;
    int calls;
};

/* Calls back into the library from inside a generation on the same model. */
static int reenter(void *user_data, uint32_t token, const char *piece, size_t len) {
    struct reentry *r = user_data;
    (void)token, (void)piece, (void)len;
    if (r->calls++ == 0) {
        kf_generate_params p = small_params();
        r->inner = generate(r->model, "Hi", &p);
        r->stats_status = kf_cache_stats(r->model, &r->stats, NULL, 0);
    }
    return r->calls == 2; /* stop after the second token */
}

static void test_callbacks(kf_model *m) {
    struct reentry r = {m, KF_OK, {0}, KF_OK, 0};
    kf_generate_params p = small_params();
    p.max_new_tokens = 10;
    p.cache.policy = KF_POLICY_KEYFORMER;
    kf_generation result;
    expect_status(kf_generate(m, "The capital of France is", &p, reenter, &r, NULL, 0, NULL,
                              &result),
                  KF_OK, "callback: generation with a callback");
    expect(r.inner == KF_ERR_BUSY, "callback: kf_generate on the same model inside is BUSY");
    expect(r.stats_status == KF_OK && r.stats.policy == KF_POLICY_KEYFORMER &&
               r.stats.tokens_seen == 5,
           "callback: kf_cache_stats works inside the callback");
    expect(result.stop_reason == KF_STOP_CALLBACK && result.generated_tokens == 2,
           "callback: a non-zero return stops after that token");
}

/* Two threads on one model: the second is refused while the first generates. */
struct gate {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int started, tried;
    kf_model *model;
    kf_status status;
};

static int hold(void *user_data, uint32_t token, const char *piece, size_t len) {
    struct gate *g = user_data;
    (void)token, (void)piece, (void)len;
    pthread_mutex_lock(&g->lock);
    g->started = 1;
    pthread_cond_broadcast(&g->cond);
    while (!g->tried) pthread_cond_wait(&g->cond, &g->lock);
    pthread_mutex_unlock(&g->lock);
    return 1;
}

static void *generate_holding(void *arg) {
    struct gate *g = arg;
    kf_generate_params p = small_params();
    g->status = kf_generate(g->model, "Hello", &p, hold, g, NULL, 0, NULL, NULL);
    return NULL;
}

static void *generate_plain(void *arg) {
    struct gate *g = arg;
    kf_generate_params p = small_params();
    g->status = generate(g->model, "The capital of France is", &p);
    return NULL;
}

static void test_threads(kf_model *m) {
    struct gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, m, KF_OK};
    pthread_t t;
    pthread_create(&t, NULL, generate_holding, &g);
    pthread_mutex_lock(&g.lock);
    while (!g.started) pthread_cond_wait(&g.cond, &g.lock);
    pthread_mutex_unlock(&g.lock);
    kf_generate_params p = small_params();
    kf_status second = generate(m, "Hi", &p);
    const char *message = kf_last_error();
    expect_status(second, KF_ERR_BUSY, "threads: one model from two threads is refused");
    expect(strstr(message, "busy") != NULL, "threads: the message says the model is busy");
    kf_stats s;
    expect_status(kf_cache_stats(m, &s, NULL, 0), KF_OK,
                  "threads: kf_cache_stats from another thread during generation");
    pthread_mutex_lock(&g.lock);
    g.tried = 1;
    pthread_cond_broadcast(&g.cond);
    pthread_mutex_unlock(&g.lock);
    pthread_join(t, NULL);
    expect_status(g.status, KF_OK, "threads: the first thread's generation finished");

    /* Two models, one per thread, run at the same time. */
    kf_model_params mp = kf_model_params_default();
    mp.backend = KF_BACKEND_CPU;
    kf_model *other = NULL;
    expect_status(kf_model_load(model_path, &mp, &other), KF_OK, "threads: load a second model");
    struct gate a = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, m, KF_ERR_INTERNAL};
    struct gate b = a;
    b.model = other;
    pthread_t ta, tb;
    pthread_create(&ta, NULL, generate_plain, &a);
    pthread_create(&tb, NULL, generate_plain, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    expect(a.status == KF_OK && b.status == KF_OK, "threads: two models in two threads");
    expect_status(kf_model_free(other), KF_OK, "threads: free the second model");
}

struct session_reentry {
    kf_session *session;
    kf_status chat, stats, positions;
};

/* Calls back into the session whose turn is running. */
static int reenter_session(void *user_data, uint32_t token, const char *piece, size_t len) {
    struct session_reentry *r = user_data;
    kf_stats st;
    uint32_t pos[8];
    size_t count;
    (void)token, (void)piece, (void)len;
    r->chat = kf_session_chat(r->session, "Hi", NULL, NULL, NULL, NULL, 0, NULL, NULL);
    r->stats = kf_session_cache_stats(r->session, &st, NULL, 0);
    r->positions = kf_session_cache_positions(r->session, 0, 0, pos, 8, &count);
    return 1;
}

static void test_sessions(kf_model *m) {
    kf_session *s = NULL;
    kf_generate_params p = small_params();
    p.cache.policy = KF_POLICY_KEYFORMER;
    p.cache.kv_budget = 24;
    expect_status(kf_session_new(m, NULL, NULL), KF_ERR_NULL_ARGUMENT, "session: NULL out");
    expect_status(kf_session_new(m, "\xff", &s), KF_ERR_INVALID_UTF8,
                  "session: system prompt not UTF-8");
    expect_status(kf_session_new(m, "You answer in one word.", &s), KF_OK, "session: new");
    kf_stats st;
    uint32_t pos[64];
    size_t count = 0;
    expect_status(kf_session_cache_stats(s, &st, NULL, 0), KF_ERR_INVALID_STATE,
                  "session: stats before the first turn");
    expect_status(kf_session_cache_positions(s, 0, 0, pos, 64, &count), KF_ERR_INVALID_STATE,
                  "session: positions before the first turn");
    expect_status(kf_session_chat(s, NULL, &p, NULL, NULL, NULL, 0, NULL, NULL),
                  KF_ERR_NULL_ARGUMENT, "session: NULL message");
    kf_generation r1, r2;
    expect_status(kf_session_chat(s, "What is the capital of France?", &p, NULL, NULL, NULL, 0,
                                  NULL, &r1),
                  KF_OK, "session: first turn");
    expect_status(kf_session_chat(s, "And of Italy?", &p, NULL, NULL, NULL, 0, NULL, &r2), KF_OK,
                  "session: second turn");
    expect(r2.stats.tokens_seen > r1.stats.tokens_seen + r2.prompt_tokens - 1 &&
               r2.prompt_tokens < r1.prompt_tokens,
           "session: the second turn runs only the new text on the kept cache");
    expect(r2.stats.kept <= 24 && r2.stats.budget == 24, "session: the budget holds");
    expect_status(kf_session_cache_positions(s, 0, 0, pos, 64, &count), KF_OK,
                  "session: positions");
    expect(count == r2.stats.kept && pos[0] < pos[count - 1], "session: positions ascend");
    expect_status(kf_session_cache_positions(s, 99, 0, pos, 64, &count),
                  KF_ERR_INVALID_ARGUMENT, "session: layer out of range");
    expect_status(kf_session_cache_positions(s, 0, 0, pos, 1, &count), KF_ERR_BUFFER_TOO_SMALL,
                  "session: positions buffer too small");
    struct session_reentry r = {s, KF_OK, KF_OK, KF_OK};
    expect_status(kf_session_chat(s, "And of Spain?", &p, reenter_session, &r, NULL, 0, NULL,
                                  NULL),
                  KF_OK, "session: a turn with a callback");
    expect(r.chat == KF_ERR_BUSY && r.positions == KF_ERR_BUSY && r.stats == KF_OK,
           "session: inside its callback, chat and positions are BUSY, stats work");
    p.cache.kv_budget = 32;
    expect_status(kf_session_chat(s, "And Spain?", &p, NULL, NULL, NULL, 0, NULL, NULL),
                  KF_ERR_INVALID_ARGUMENT, "session: cache settings changed between turns");
    expect_status(kf_model_free((kf_model *)s), KF_ERR_INVALID_HANDLE,
                  "session: a session passed as a model");
    expect_status(kf_session_free(s), KF_OK, "session: free");
    expect_status(kf_session_free(s), KF_ERR_INVALID_HANDLE, "session: double free");
    expect_status(kf_session_chat(s, "Hi", &p, NULL, NULL, NULL, 0, NULL, NULL),
                  KF_ERR_INVALID_HANDLE, "session: used after free");
}

static void test_loglik(kf_model *m) {
    uint32_t context[8], cont[4];
    size_t n_context = 0, n_cont = 0;
    kf_tokenize(m, "The capital of France is", context, 8, &n_context);
    kf_tokenize(m, " Paris", cont, 4, &n_cont);
    kf_loglik_result r;
    double per_token[4];
    kf_cache_params c = kf_cache_params_default();
    c.policy = KF_POLICY_KEYFORMER;
    expect_status(kf_loglik(m, context, n_context, cont, n_cont, &c, per_token, &r), KF_OK,
                  "loglik");
    expect(r.greedy && r.logprob < 0 && r.logprob == per_token[0],
           "loglik: ' Paris' is the greedy continuation");
    expect_status(kf_loglik(m, context, 0, cont, n_cont, &c, NULL, &r), KF_ERR_INVALID_ARGUMENT,
                  "loglik: empty context");
    expect_status(kf_loglik(m, NULL, 3, cont, n_cont, &c, NULL, &r), KF_ERR_NULL_ARGUMENT,
                  "loglik: NULL context");
    expect_status(kf_loglik(m, context, n_context, cont, n_cont, &c, NULL, NULL),
                  KF_ERR_NULL_ARGUMENT, "loglik: NULL result");
    cont[0] = 4000000000u;
    expect_status(kf_loglik(m, context, n_context, cont, n_cont, &c, NULL, &r),
                  KF_ERR_INVALID_ARGUMENT, "loglik: token outside the vocabulary");
}

/* Token ids as a callback sees them. */
struct tokens {
    uint32_t ids[16];
    size_t n;
};

static int collect(void *user_data, uint32_t token, const char *piece, size_t len) {
    struct tokens *t = user_data;
    (void)piece, (void)len;
    if (t->n < 16) t->ids[t->n++] = token;
    return 0;
}

struct batch_request {
    uint64_t request;
    struct tokens got;
    int wrong_request;
    size_t stop_after; /* 0: never */
    /* Calls back into the library from inside the run. */
    kf_model *model;
    kf_batch *batch;
    kf_status inner_generate, inner_submit;
};

static int collect_batch(void *user_data, uint64_t request, uint32_t token, const char *piece,
                         size_t len) {
    struct batch_request *r = user_data;
    uint64_t ignored;
    r->wrong_request |= request != r->request;
    collect(&r->got, token, piece, len);
    if (r->model) {
        kf_generate_params p = small_params();
        r->inner_generate = generate(r->model, "Hi", &p);
        r->inner_submit = kf_batch_submit(r->batch, "Hi", &p, NULL, NULL, &ignored);
        r->model = NULL;
    }
    return r->stop_after && r->got.n >= r->stop_after;
}

static void test_batch(kf_model *m) {
    static const char *prompts[] = {
        "The capital of France is",
        "Keyformer keeps a recent window and the key tokens of the KV cache. In short,",
        "Once upon a time, in a small village,",
        "The capital of France is",
    };
    static const int policies[] = {KF_POLICY_FULL, KF_POLICY_KEYFORMER, KF_POLICY_H2O,
                                   KF_POLICY_WINDOW};
    enum { N = 4 };
    kf_generate_params p[N];
    struct tokens solo[N] = {{{0}, 0}};
    char *solo_text[N];
    for (int i = 0; i < N; i++) {
        p[i] = small_params();
        p[i].max_new_tokens = 8 - i;
        p[i].cache.policy = policies[i];
        p[i].cache.kv_budget = 4;
        if (policies[i] == KF_POLICY_FULL) p[i].cache.kv_budget = 0;
        solo_text[i] = NULL;
        kf_generate_alloc(m, prompts[i], &p[i], collect, &solo[i], &solo_text[i], NULL);
    }

    kf_batch *b = NULL;
    kf_batch_params bp = kf_batch_params_default();
    expect(bp.max_batch == 0 && bp.memory_limit == 0, "batch: defaults");
    expect_status(kf_batch_new(NULL, &bp, &b), KF_ERR_NULL_ARGUMENT, "batch: NULL model");
    expect_status(kf_batch_new(m, &bp, NULL), KF_ERR_NULL_ARGUMENT, "batch: NULL out handle");
    bp.memory_limit = 100000;
    expect_status(kf_batch_new(m, &bp, &b), KF_OK, "batch: new with 100 kB");
    uint64_t id = 99;
    expect_status(kf_batch_submit(b, prompts[0], &p[0], NULL, NULL, &id),
                  KF_ERR_INVALID_ARGUMENT, "batch: a request that can never fit is refused");
    expect(strstr(kf_last_error(), "can never run") && strstr(kf_last_error(), "100000 bytes"),
           "batch: the message gives the bytes");
    expect(id == 99, "batch: no request number written on failure");
    expect_status(kf_batch_free(b), KF_OK, "batch: free");

    bp = kf_batch_params_default();
    bp.max_batch = 2; /* four requests, two at a time */
    expect_status(kf_batch_new(m, &bp, &b), KF_OK, "batch: new, two at a time");
    expect_status(kf_batch_submit(b, NULL, &p[0], NULL, NULL, &id), KF_ERR_NULL_ARGUMENT,
                  "batch: NULL prompt");
    expect_status(kf_batch_submit(b, "", &p[0], NULL, NULL, &id), KF_ERR_INVALID_ARGUMENT,
                  "batch: empty prompt");
    expect_status(kf_batch_submit(b, "Hi", &p[0], NULL, NULL, NULL), KF_ERR_NULL_ARGUMENT,
                  "batch: NULL request out");
    struct batch_request r[N];
    int numbered = 1;
    for (int i = 0; i < N; i++) {
        memset(&r[i], 0, sizeof r[i]);
        r[i].request = i;
        if (i == 1) r[i].model = m, r[i].batch = b;
        if (i == 3) r[i].stop_after = 2;
        expect_status(kf_batch_submit(b, prompts[i], &p[i], collect_batch, &r[i], &id), KF_OK,
                      "batch: submit");
        numbered &= id == (uint64_t)i;
    }
    expect(numbered, "batch: requests are numbered 0, 1, ... in order");
    char *text = NULL;
    kf_generation result;
    expect_status(kf_batch_result(b, 0, &text, &result), KF_ERR_INVALID_STATE,
                  "batch: result before the run");
    expect_status(kf_batch_run(b), KF_OK, "batch: run");
    expect(r[1].inner_generate == KF_ERR_BUSY && r[1].inner_submit == KF_ERR_BUSY,
           "batch: kf_generate and kf_batch_submit inside a batch callback are BUSY");
    for (int i = 0; i < N; i++) {
        char what[128];
        snprintf(what, sizeof what, "batch: request %d result", i);
        expect_status(kf_batch_result(b, i, &text, &result), KF_OK, what);
        size_t want = i == 3 ? 2 : solo[i].n;
        int same = !r[i].wrong_request && r[i].got.n == want && result.generated_tokens == want &&
                   memcmp(r[i].got.ids, solo[i].ids, want * sizeof(uint32_t)) == 0;
        snprintf(what, sizeof what, "batch: request %d has its solo tokens (%zu)", i, want);
        expect(same, what);
        if (i < 3) {
            snprintf(what, sizeof what, "batch: request %d has its solo text", i);
            expect(text && solo_text[i] && strcmp(text, solo_text[i]) == 0, what);
        }
        kf_string_free(text);
        text = NULL;
    }
    expect(result.stop_reason == KF_STOP_CALLBACK, "batch: a callback stops its request");
    expect_status(kf_batch_result(b, 7, &text, NULL), KF_ERR_INVALID_ARGUMENT,
                  "batch: result of an unknown request");
    expect_status(kf_batch_run(b), KF_OK, "batch: a run with nothing new");
    expect_status(kf_batch_free((kf_batch *)m), KF_ERR_INVALID_HANDLE,
                  "batch: a model passed as a batch");
    expect_status(kf_batch_free(b), KF_OK, "batch: free");
    expect_status(kf_batch_run(b), KF_ERR_INVALID_HANDLE, "batch: used after free");
    for (int i = 0; i < N; i++) kf_string_free(solo_text[i]);
}

/* Issue 23: a new model may be allocated where a freed one was; the freed handle must stay
 * invalid rather than reach the new model. */
static void test_freed_handle_never_names_a_newer_model(kf_model *freed) {
    kf_model_params mp = kf_model_params_default();
    mp.backend = KF_BACKEND_CPU;
    int stale_ok = 0, reused = 0;
    for (int i = 0; i < 4; i++) {
        kf_model *fresh = NULL;
        expect_status(kf_model_load(model_path, &mp, &fresh), KF_OK, "handle: load again");
        if (!fresh) return;
        kf_model_info info;
        if (fresh == freed) reused++;
        if (kf_model_describe(freed, &info) == KF_OK) stale_ok++;
        expect_status(kf_model_free(fresh), KF_OK, "handle: free again");
    }
    expect(reused == 0, "handle: a new model never gets a freed model's handle");
    expect(stale_ok == 0, "handle: a freed handle never reaches a newer model");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL\n", argv[0]);
        return 2;
    }
    model_path = argv[1];
    expect(kf_abi_version() == KF_ABI_VERSION && strlen(kf_version()) > 0, "version");
    expect(strcmp(kf_status_name(KF_ERR_BUSY), "KF_ERR_BUSY") == 0 &&
               strcmp(kf_status_name(999), "unknown status") == 0,
           "status names");
    test_load_errors();

    kf_model *m = NULL;
    kf_model_params mp = kf_model_params_default();
    mp.backend = KF_BACKEND_CPU;
    expect_status(kf_model_load(model_path, &mp, &m), KF_OK, "load");
    if (!m) return 1;
    kf_model_info info;
    expect_status(kf_model_describe(m, NULL), KF_ERR_NULL_ARGUMENT, "describe: NULL out");
    expect_status(kf_model_describe(m, &info), KF_OK, "describe");
    expect(strcmp(info.architecture, "llama") == 0 && info.vocab_size == 49152,
           "describe: SmolLM2 is a llama with 49152 tokens");
    kf_stats s;
    expect_status(kf_cache_stats(m, &s, NULL, 0), KF_ERR_INVALID_STATE,
                  "stats: before any generation");

    test_generate_errors(m);
    test_buffers(m);
    test_stats(m);
    test_callbacks(m);
    test_threads(m);
    test_sessions(m);
    test_loglik(m);
    test_batch(m);

    int on_stack;
    expect_status(generate((kf_model *)&on_stack, "Hi", NULL), KF_ERR_INVALID_HANDLE,
                  "handle: a pointer that is no handle");
    expect_status(kf_model_free(m), KF_OK, "free");
    expect_status(generate(m, "Hi", NULL), KF_ERR_INVALID_HANDLE, "handle: model used after free");
    expect_status(kf_model_free(m), KF_ERR_INVALID_HANDLE, "handle: double free");
    expect_status(kf_model_free(NULL), KF_OK, "free: NULL is a no-op");
    test_freed_handle_never_names_a_newer_model(m);

    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
