/* Generates text with a Keyformer-reduced KV cache and prints what the cache kept.
 *
 *     example MODEL PROMPT [MAX_NEW_TOKENS [BACKEND]]
 *
 * BACKEND is auto (the default), cpu, cuda or wgpu.
 * Tokens are printed as they come; the cache statistics follow on stdout. Every object the
 * program gets from the library is freed before it exits (it runs clean under valgrind). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keyformer.h"

/* Reports a failed call with the library's message and exits. */
static void check(kf_status status, const char *what) {
    if (status != KF_OK) {
        fprintf(stderr, "%s failed: %s: %s\n", what, kf_status_name(status), kf_last_error());
        exit(1);
    }
}

struct progress {
    kf_model *model;
    size_t tokens;
};

/* Prints each piece of text; after the first token, peeks at the cache mid-generation. */
static int on_token(void *user_data, uint32_t token, const char *piece, size_t piece_len) {
    struct progress *p = user_data;
    (void)token;
    fwrite(piece, 1, piece_len, stdout);
    fflush(stdout);
    if (++p->tokens == 1) {
        kf_stats stats;
        check(kf_cache_stats(p->model, &stats, NULL, 0), "kf_cache_stats during generation");
        fprintf(stderr, "[after the first token the cache holds %zu of %zu tokens per head]\n",
                stats.kept, stats.tokens_seen);
    }
    return 0; /* non-zero would stop here */
}

static const char *policy_name(kf_policy p) {
    static const char *names[] = {"full", "window", "streaming", "h2o", "keyformer"};
    return names[p];
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL PROMPT [MAX_NEW_TOKENS [auto|cpu|cuda|wgpu]]\n",
                argv[0]);
        return 2;
    }
    if (kf_abi_version() != KF_ABI_VERSION) {
        fprintf(stderr, "libkeyformer ABI %u, header %u\n", kf_abi_version(), KF_ABI_VERSION);
        return 1;
    }

    kf_model_params model_params = kf_model_params_default();
    if (argc > 4) {
        static const char *backends[] = {"auto", "cpu", "cuda", "wgpu"};
        model_params.backend = -1; /* an unknown name is reported by kf_model_load */
        for (int b = 0; b < 4; b++)
            if (strcmp(argv[4], backends[b]) == 0) model_params.backend = b;
    }
    kf_model *model = NULL;
    check(kf_model_load(argv[1], &model_params, &model), "kf_model_load");
    kf_model_info info;
    check(kf_model_describe(model, &info), "kf_model_describe");
    fprintf(stderr, "keyformer %s: %s model on %s\n", kf_version(), info.architecture,
            info.backend);

    kf_generate_params params = kf_generate_params_default();
    params.max_new_tokens = argc > 3 ? (size_t)atoi(argv[3]) : 32;
    params.cache.policy = KF_POLICY_KEYFORMER;
    params.cache.kv_ratio = 0.5f;

    struct progress progress = {model, 0};
    char *text = NULL;
    kf_generation result;
    check(kf_generate_alloc(model, argv[2], &params, on_token, &progress, &text, &result),
          "kf_generate_alloc");
    printf("\n");

    /* The per-(layer, head) counts, layer-major, after generation. */
    const kf_stats *s = &result.stats;
    size_t *kept = calloc(s->layers * s->kv_heads, sizeof *kept);
    kf_stats stats;
    check(kf_cache_stats(model, &stats, kept, s->layers * s->kv_heads), "kf_cache_stats");
    printf("generated %zu tokens after a %zu-token prompt (%zu bytes of text)\n",
           result.generated_tokens, result.prompt_tokens, strlen(text));
    printf("cache: %s policy, budget %zu (sinks %zu, recent %zu), %zu of %zu tokens kept per "
           "head\n",
           policy_name(stats.policy), stats.budget, stats.sinks, stats.recent, stats.kept,
           stats.tokens_seen);
    printf("       %zu bytes held vs %zu full (%.2fx), %llu evictions, tau %.3f\n",
           stats.kv_bytes_held, stats.kv_bytes_full, stats.compression_ratio,
           (unsigned long long)stats.evictions, stats.tau);
    printf("       kept per head in layer 0:");
    for (size_t h = 0; h < stats.kv_heads; h++) printf(" %zu", kept[h]);
    printf(", in layer %zu:", stats.layers - 1);
    for (size_t h = 0; h < stats.kv_heads; h++)
        printf(" %zu", kept[(stats.layers - 1) * stats.kv_heads + h]);
    printf("\n");

    free(kept);
    kf_string_free(text);
    check(kf_model_free(model), "kf_model_free");
    return 0;
}
