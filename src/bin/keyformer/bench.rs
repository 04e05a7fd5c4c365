//! `keyformer bench`: prefill and decode speed at any model shape, with random weights built
//! from a config.json, for any backend, policy and budget.

use std::path::PathBuf;
use std::time::Instant;

use keyformer::engine::select::AnyModel;
use keyformer::model::config::ModelConfig;
use keyformer::model::mix::WeightKind;
use keyformer::model::source::splitmix64;
use keyformer::{
    Backend, BatchLimits, CacheConfig, Error, GenerateParams, Model, Planner, Result, Scheduler,
    with_model,
};

use super::{BackendArgs, CacheArgs, PolicyChoice};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A Hugging Face config.json of any supported architecture: random weights of its shape.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    config: Option<PathBuf>,
    /// A .gguf file or a Hugging Face model folder to measure instead of random weights.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The random weights' storage (with --config): f16 (the backend's float type), q8_0,
    /// q6_k, q4_k_m, q5_k_m (laid out as llama.cpp's mixes are), or any block format.
    #[arg(long, default_value = "f16", value_parser = super::parse_weight_kind)]
    weights: WeightKind,
    /// Quantize the float matrices of --model while loading, as generate's --quantize.
    #[arg(long, value_parser = super::parse_weight_kind)]
    quantize: Option<WeightKind>,
    #[arg(long, default_value_t = 2048)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// Seed of the random weights, prompt and noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    cache: CacheArgs,
    /// Measure several policies on the same model, one line each (overrides --policy).
    #[arg(long, value_enum, value_delimiter = ',')]
    policies: Vec<PolicyChoice>,
    /// Decode this many sequences together, each with its own random prompt of
    /// --prompt-tokens (fewer at a time if they do not fit in memory).
    #[arg(long, conflicts_with = "max_batch")]
    batch: Option<usize>,
    /// Decode as many sequences together as the memory planner says fit.
    #[arg(long)]
    max_batch: bool,
    /// Memory for caches and activations when batching, in MiB (default: the GPU's free
    /// memory less a safety margin; 2048 on the CPU).
    #[arg(long)]
    memory_mib: Option<usize>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let t0 = Instant::now();
    let opts = args.backend.options();
    let (model, note) = match (&args.model, &args.config) {
        (Some(path), _) => {
            if args.weights != WeightKind::Float {
                return Err(Error::InvalidInput(
                    "--weights sets random weights' storage (with --config); for --model use \
                     --quantize"
                        .into(),
                ));
            }
            let quantize = args.quantize.unwrap_or(WeightKind::Float);
            AnyModel::load_with(path, quantize, &opts, &mut |_, _| {})?
        }
        (None, Some(_)) if args.quantize.is_some() => {
            return Err(Error::InvalidInput(
                "--quantize applies to --model; random weights take --weights".into(),
            ));
        }
        (None, Some(config)) => {
            let mut config = ModelConfig::from_hf_json(config)?;
            config.max_context = config
                .max_context
                .max(args.prompt_tokens + args.gen_tokens + 1);
            AnyModel::random_with(config, args.seed, args.weights, &opts)?
        }
        (None, None) => unreachable!("clap requires --config or --model"),
    };
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let what = match &args.model {
        Some(path) => format!("loaded {}", path.display()),
        None => format!("built random {} weights", args.weights.name()),
    };
    eprintln!("{what} in {:.1} s", t0.elapsed().as_secs_f64());
    let context = with_model!(&model, m => m.config.max_context);
    if args.prompt_tokens + args.gen_tokens + 1 > context {
        return Err(Error::InvalidInput(format!(
            "--prompt-tokens {} + --gen-tokens {} exceed the model's context of {context}",
            args.prompt_tokens, args.gen_tokens
        )));
    }
    let policies = if args.policies.is_empty() {
        vec![args.cache.policy]
    } else {
        args.policies.clone()
    };
    for policy in policies {
        with_model!(&model, m => measure(m, &args, policy))?;
    }
    Ok(())
}

fn measure<B: Backend>(model: &Model<B>, args: &BenchArgs, policy: PolicyChoice) -> Result<()> {
    let c = &model.config;
    let mut state = args.seed;
    let mut random_prompt = || -> Vec<u32> {
        (0..args.prompt_tokens)
            .map(|_| (splitmix64(&mut state) % c.vocab_size as u64) as u32)
            .collect()
    };
    let prompt = random_prompt();
    let cache = CacheConfig {
        policy: policy.policy(),
        ..args.cache.config(args.seed)
    };
    if args.batch.is_some() || args.max_batch {
        return measure_batch(model, args, cache, prompt, &mut random_prompt);
    }
    let run = |prompt: &[u32], steps: usize| -> Result<(f64, f64, usize, keyformer::CacheStats)> {
        let plan = cache.plan(prompt.len())?;
        let mut s = model.new_session_for(plan, prompt.len(), steps)?;
        let mut sampler = keyformer::engine::sampling::Sampler::new(Default::default());
        let t0 = Instant::now();
        let logits = model.prefill(&mut s, prompt)?;
        let mut token = model.backend.sample(&logits, c.vocab_size, &mut sampler)?;
        let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut cached_sum = 0;
        let t1 = Instant::now();
        for _ in 0..steps {
            cached_sum += s.cached + 1;
            let logits = model.forward_logits(&mut s, &[token], false)?;
            token = model.backend.sample(&logits, c.vocab_size, &mut sampler)?;
        }
        let decode_ms = t1.elapsed().as_secs_f64() * 1e3;
        Ok((
            prefill_ms,
            decode_ms,
            cached_sum,
            model.cache_stats(&s, false)?,
        ))
    };
    // Warm up kernels, libraries and allocators at the measured shapes first.
    run(&prompt, 2)?;
    let (prefill_ms, decode_ms, cached_sum, stats) = run(&prompt, args.gen_tokens)?;

    let steps = args.gen_tokens.max(1) as f64;
    let ms_per_token = decode_ms / steps;
    let value_bytes = model.backend.kv_value_bytes();
    // Decode reads every weight once per token, except the embedding table (one row) when the
    // output matrix is separate; and the K and V of every cached token.
    let w = &model.weights;
    let weight_values = if w.lm_head.is_some() {
        w.values - w.embed_values
    } else {
        w.values
    };
    let (_, weight_bytes) = w.bytes(|w| model.backend.weight_bytes(w));
    let kv_bytes_per_token = 2 * c.layers * c.kv_heads * c.head_dim * value_bytes;
    let avg_kv_bytes = cached_sum as f64 / steps * kv_bytes_per_token as f64;
    let gb_per_s = (weight_bytes as f64 + avg_kv_bytes) / (ms_per_token / 1e3) / 1e9;
    let prefill_tflops =
        2.0 * weight_values as f64 * args.prompt_tokens as f64 / (prefill_ms / 1e3) / 1e12;
    println!(
        "{} {} policy {} prompt {} gen {}: prefill {:.1} ms ({:.0} TFLOP/s in matmuls), decode {:.3} ms/token ({:.1} tokens/s), {:.0} GB/s (weights {:.2} GB + KV {:.3} GB per token), cache {:.1} MiB held vs {:.1} MiB full",
        model.backend.name(),
        c.arch.name,
        stats.policy.name(),
        args.prompt_tokens,
        args.gen_tokens,
        prefill_ms,
        prefill_tflops,
        ms_per_token,
        1e3 / ms_per_token,
        gb_per_s,
        weight_bytes as f64 / 1e9,
        avg_kv_bytes / 1e9,
        stats.kv_bytes_held as f64 / (1 << 20) as f64,
        stats.kv_bytes_full as f64 / (1 << 20) as f64,
    );
    Ok(())
}

/// Decode speed of many sequences at once, through the continuous-batching scheduler.
fn measure_batch<B: Backend>(
    model: &Model<B>,
    args: &BenchArgs,
    cache: CacheConfig,
    first_prompt: Vec<u32>,
    random_prompt: &mut dyn FnMut() -> Vec<u32>,
) -> Result<()> {
    let memory = BatchLimits {
        max_batch: None,
        memory: args.memory_mib.map(|m| m << 20),
    };
    let planner = Planner::for_model(model, &memory)?;
    let params = GenerateParams {
        max_new_tokens: args.gen_tokens,
        cache,
        stop_at_eos: false,
        ..Default::default()
    };
    let footprint = planner.check(model, &first_prompt, &params)?;
    let fit = planner.how_many(&footprint);
    let n = args.batch.unwrap_or(fit);
    eprintln!(
        "planner: {:.1} MiB for sequences, {:.2} MiB per sequence (+{:.2} MiB while prefilling): {fit} fit at once",
        planner.capacity as f64 / (1 << 20) as f64,
        footprint.steady() as f64 / (1 << 20) as f64,
        footprint.prefill as f64 / (1 << 20) as f64,
    );
    let planner = Planner {
        max_batch: Some(n),
        ..planner
    };
    let mut prompts = vec![first_prompt];
    prompts.extend((1..n).map(|_| random_prompt()));

    // Prefill ms summed over sequences, decode ms, decode steps, most sequences decoding
    // together, and the KV bytes held at the end summed over sequences.
    let run = |steps: usize| -> Result<(f64, f64, usize, usize, usize)> {
        let mut s = Scheduler::new(model, planner.clone());
        for prompt in &prompts {
            s.submit(
                prompt.clone(),
                GenerateParams {
                    max_new_tokens: steps,
                    ..params.clone()
                },
            )?;
        }
        let t0 = Instant::now();
        let (mut prefill_ms, mut kv_bytes, mut most, mut rounds) = (0.0, 0, 0, 0);
        while s.running() + s.waiting() > 0 {
            rounds += 1;
            let mut tokens = 0;
            for (_, g) in s.step(&mut |_, _, _| {
                tokens += 1;
                true
            })? {
                prefill_ms += g.prefill_ms;
                kv_bytes += g.stats.kv_bytes_held;
            }
            most = most.max(tokens);
        }
        let total_ms = t0.elapsed().as_secs_f64() * 1e3;
        // The first round only hands out the tokens the prefills sampled.
        Ok((
            prefill_ms,
            total_ms - prefill_ms,
            rounds - 1,
            most,
            kv_bytes,
        ))
    };
    // Warm up kernels, libraries and allocators at the measured shapes first.
    run(2)?;
    let (prefill_ms, decode_ms, rounds, most, kv_bytes) = run(args.gen_tokens)?;

    let c = &model.config;
    // The first token of each sequence comes from its prefill; the rest from decode steps.
    let decoded = n * args.gen_tokens.saturating_sub(1);
    let ms_per_step = decode_ms / rounds.max(1) as f64;
    println!(
        "{} {} policy {} prompt {} gen {} batch {n} ({most} at once): prefill {:.1} ms ({:.1} ms per sequence), decode {:.1} tokens/s in all ({:.1} tokens/s counting prefill time), {:.3} ms per step ({:.1} tokens/s per sequence), cache {:.1} MiB held in all ({:.2} MiB per sequence)",
        model.backend.name(),
        c.arch.name,
        params.cache.policy.name(),
        args.prompt_tokens,
        args.gen_tokens,
        prefill_ms,
        prefill_ms / n as f64,
        decoded as f64 / (decode_ms / 1e3),
        (n * args.gen_tokens) as f64 / ((prefill_ms + decode_ms) / 1e3),
        ms_per_step,
        1e3 / ms_per_step,
        kv_bytes as f64 / (1 << 20) as f64,
        kv_bytes as f64 / n as f64 / (1 << 20) as f64,
    );
    Ok(())
}
