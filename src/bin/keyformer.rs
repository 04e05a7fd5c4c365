//! The keyformer command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use keyformer::backend::cuda::CudaDtype;
use keyformer::engine::select::{AnyModel, BackendChoice, BackendOptions};
use keyformer::model::mix::WeightKind;
use keyformer::{Backend, Budget, CacheConfig, GenerateParams, Policy, SamplingParams, with_model};

#[path = "keyformer/bench.rs"]
mod bench;
#[path = "keyformer/eval.rs"]
mod eval;
#[path = "keyformer/tokenize.rs"]
mod tokenize;

const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Parser)]
#[command(
    name = "keyformer",
    version,
    about = "Generate text with a Keyformer-reduced KV cache"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming tokens as they come.
    Generate(GenerateArgs),
    /// Measure prefill and decode speed on a model of any shape with random weights.
    Bench(bench::BenchArgs),
    /// Measure what each policy preserves over cache sizes (summaries, perplexity).
    #[command(subcommand)]
    Eval(eval::EvalTask),
    /// Print the tokens a model's tokenizer makes of a text (pieces, or ids with --ids).
    Tokenize(tokenize::TokenizeArgs),
}

/// `--quantize` and `--weights` values, with the library's message for unknown ones.
fn parse_weight_kind(s: &str) -> Result<WeightKind, String> {
    WeightKind::parse(s).map_err(|e| e.to_string())
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    /// CUDA if a GPU and its libraries are present, else a wgpu adapter, else the CPU.
    Auto,
    Cpu,
    Cuda,
    /// WGSL compute through wgpu (Vulkan, Metal, DX12).
    Wgpu,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F16,
    Bf16,
    F32,
}

/// Where the model runs.
#[derive(clap::Args)]
struct BackendArgs {
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// GPU index.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Weight and KV-cache storage on the GPU (the CPU computes in f32).
    #[arg(long, value_enum, default_value_t = DtypeArg::F16)]
    dtype: DtypeArg,
}

impl BackendArgs {
    fn options(&self) -> BackendOptions {
        BackendOptions {
            backend: match self.backend {
                BackendArg::Auto => BackendChoice::Auto,
                BackendArg::Cpu => BackendChoice::Cpu,
                BackendArg::Cuda => BackendChoice::Cuda,
                BackendArg::Wgpu => BackendChoice::Wgpu,
            },
            device: self.device,
            dtype: match self.dtype {
                DtypeArg::F16 => CudaDtype::F16,
                DtypeArg::Bf16 => CudaDtype::Bf16,
                DtypeArg::F32 => CudaDtype::F32,
            },
        }
    }
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// A .gguf file or a Hugging Face model folder.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Raw prompt text.
    #[arg(long, conflicts_with = "chat", required_unless_present = "chat")]
    prompt: Option<String>,
    /// A user message, wrapped in the model's chat template.
    #[arg(long)]
    chat: Option<String>,
    /// At least 1.
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    max_new_tokens: usize,
    /// 0 is greedy; otherwise > 0.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// 0 keeps every token.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    top_k: usize,
    /// In (0, 1].
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    seed: u64,
    /// Stop when the output contains this text (repeatable; not empty).
    #[arg(long = "stop")]
    stop: Vec<String>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    cache: CacheArgs,
    /// Quantize float matrices while loading: q8_0, q6_k, q4_k, ... or a llama.cpp mix
    /// (q4_k_m, q5_k_m). Norms and biases stay f32; a GGUF file's block-format tensors keep
    /// their formats.
    #[arg(long, value_parser = parse_weight_kind)]
    quantize: Option<WeightKind>,
    /// Write the kept positions per (layer, kv head) as JSON.
    #[arg(long)]
    cache_json: Option<PathBuf>,
    /// Write a PNG heat map of the kept positions (positions across, layer/head down).
    #[arg(long)]
    cache_map: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PolicyChoice {
    /// Keep every token.
    Full,
    /// The most recent tokens only.
    Window,
    /// StreamingLLM: 4 attention sinks plus the most recent tokens.
    Streaming,
    /// Heavy hitters by accumulated attention, plus a recent window.
    H2o,
    /// Key tokens by Gumbel-noise attention score at a rising temperature, plus a recent window.
    Keyformer,
}

/// The KV-cache policy and its budget.
#[derive(clap::Args)]
struct CacheArgs {
    #[arg(long, value_enum, default_value_t = PolicyChoice::Full)]
    policy: PolicyChoice,
    /// Cache budget as a fraction of the prompt length, in (0, 1].
    #[arg(
        long,
        default_value_t = 0.5,
        conflicts_with = "kv_budget",
        allow_negative_numbers = true
    )]
    kv_ratio: f32,
    /// Cache budget in tokens per layer and head; 0 leaves it to --kv-ratio (as kv_budget 0
    /// does in the C API).
    #[arg(long, allow_negative_numbers = true)]
    kv_budget: Option<usize>,
    /// Share of the budget kept as the recent window (h2o, keyformer), in [0, 1).
    #[arg(long, default_value_t = 0.3, allow_negative_numbers = true)]
    recent_ratio: f32,
    /// Attention sinks always kept (default: 4 for streaming, 0 otherwise).
    #[arg(long, allow_negative_numbers = true)]
    sinks: Option<usize>,
    /// Score temperature at prefill (keyformer), > 0.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    tau_init: f32,
    /// Score temperature at the last decode step (keyformer), > 0.
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    tau_end: f32,
    /// Run the prompt this many tokens at a time, evicting down to the budget after each
    /// chunk: the cache then holds at most budget + chunk tokens per layer while prefilling.
    /// Without it the prompt runs in one pass.
    #[arg(long, allow_negative_numbers = true)]
    prefill_chunk: Option<usize>,
}

impl PolicyChoice {
    fn policy(self) -> Policy {
        match self {
            PolicyChoice::Full => Policy::Full,
            PolicyChoice::Window => Policy::Window,
            PolicyChoice::Streaming => Policy::Streaming,
            PolicyChoice::H2o => Policy::H2o,
            PolicyChoice::Keyformer => Policy::Keyformer,
        }
    }
}

impl CacheArgs {
    fn config(&self, seed: u64) -> CacheConfig {
        let policy = self.policy.policy();
        CacheConfig {
            policy,
            budget: Budget::from_tokens_or_ratio(self.kv_budget.unwrap_or(0), self.kv_ratio),
            recent_ratio: self.recent_ratio,
            sinks: self.sinks,
            tau_init: self.tau_init,
            tau_end: self.tau_end,
            seed,
            prefill_chunk: self.prefill_chunk,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate(args),
        Command::Bench(args) => bench::run(args),
        Command::Eval(task) => eval::run(task),
        Command::Tokenize(args) => tokenize::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Tensor-count progress on stderr, redrawn in place on a terminal.
fn progress_printer() -> impl FnMut(usize, usize) {
    let terminal = std::io::stderr().is_terminal();
    let mut last_percent = usize::MAX;
    move |done, total| {
        let percent = 100 * done / total.max(1);
        if terminal && percent != last_percent {
            last_percent = percent;
            eprint!("\rloading weights: {percent:3}% ({done}/{total} tensors)");
            if done == total {
                eprintln!();
            }
        }
    }
}

fn generate(args: GenerateArgs) -> keyformer::Result<()> {
    let t0 = Instant::now();
    // Everything that needs no model is checked before the model loads.
    let params = GenerateParams {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        cache: args.cache.config(args.seed),
        stop_strings: args.stop.clone(),
        stop_at_eos: true,
    };
    params.validate()?;
    let outputs = Outputs::create(&args)?;
    let (model, note) = AnyModel::load_with(
        &args.model,
        args.quantize.unwrap_or(WeightKind::Float),
        &args.backend.options(),
        &mut progress_printer(),
    )?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let result = with_model!(&model, m => run_generation(m, &args, &params, &outputs, t0));
    if result.is_err() {
        outputs.remove();
    }
    result
}

/// The files --cache-json and --cache-map write, created before the model loads so that a
/// path that cannot be written fails at once rather than after the whole generation.
struct Outputs {
    json: Option<(PathBuf, std::fs::File)>,
    map: Option<PathBuf>,
}

impl Outputs {
    fn create(args: &GenerateArgs) -> keyformer::Result<Outputs> {
        let create = |flag: &str, path: &PathBuf| {
            std::fs::File::create(path).map_err(|e| {
                keyformer::Error::InvalidInput(format!(
                    "{flag} {}: cannot write there: {e}",
                    path.display()
                ))
            })
        };
        let json = match &args.cache_json {
            Some(path) => Some((path.clone(), create("--cache-json", path)?)),
            None => None,
        };
        let map = match &args.cache_map {
            Some(path) => {
                if let Err(e) = create("--cache-map", path) {
                    if let Some((json, _)) = &json {
                        let _ = std::fs::remove_file(json);
                    }
                    return Err(e);
                }
                Some(path.clone())
            }
            None => None,
        };
        Ok(Outputs { json, map })
    }

    /// Removes the files made for a generation that failed.
    fn remove(&self) {
        let paths = self.json.iter().map(|(p, _)| p).chain(&self.map);
        for path in paths {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn run_generation<B: Backend>(
    model: &keyformer::Model<B>,
    args: &GenerateArgs,
    params: &GenerateParams,
    outputs: &Outputs,
    t0: Instant,
) -> keyformer::Result<()> {
    eprintln!(
        "loaded {} ({}) in {:.1} s",
        args.model.display(),
        model.config.arch.name,
        t0.elapsed().as_secs_f64()
    );
    let tok = model.tokenizer()?;
    let text = match (&args.prompt, &args.chat) {
        (Some(p), _) => p.clone(),
        (None, Some(msg)) => tok.apply_chat_template(msg)?,
        (None, None) => {
            return Err(keyformer::Error::InvalidInput(
                "pass --prompt or --chat".into(),
            ));
        }
    };
    let prompt = tok.encode(&text)?;
    let mut out = std::io::stdout();
    let mut generator = model.start(&prompt, params)?;
    while let Some((_, piece)) = generator.next_token()? {
        let _ = write!(out, "{piece}");
        let _ = out.flush();
    }
    println!();
    let wants_positions = outputs.json.is_some() || outputs.map.is_some();
    let stats = generator.stats(wants_positions)?;
    let generation = generator.finish()?;
    eprintln!("{stats}");
    if let Some((path, file)) = &outputs.json {
        let json = serde_json::to_string(&stats)
            .map_err(|e| keyformer::Error::InvalidInput(e.to_string()))?;
        (&*file)
            .write_all(json.as_bytes())
            .map_err(|e| keyformer::Error::io(path, e))?;
    }
    if let Some(path) = &outputs.map {
        stats.write_heat_map(path)?;
    }
    eprintln!(
        "prompt tokens: {}, generated tokens: {}, prefill: {:.1} ms, decode: {:.2} tokens/s, stop: {:?}, backend: {}",
        generation.prompt_tokens,
        generation.tokens.len(),
        generation.prefill_ms,
        generation.decode_tokens_per_s(),
        generation.stop,
        model.backend.name()
    );
    Ok(())
}
