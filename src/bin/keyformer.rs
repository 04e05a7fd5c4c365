//! The keyformer command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use keyformer::{Backend, CpuBackend, GenerateParams, Model, SamplingParams};

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
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendChoice {
    /// The best backend present (CPU until the GPU backends land).
    Auto,
    Cpu,
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
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// 0 keeps every token.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the output contains this text (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate(args),
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
    let backend = match args.backend {
        BackendChoice::Auto | BackendChoice::Cpu => CpuBackend,
    };
    let t0 = Instant::now();
    let model = Model::load(&args.model, backend, &mut progress_printer())?;
    eprintln!(
        "loaded {} ({}) in {:.1} s",
        args.model.display(),
        model.config.arch.name(),
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
    let params = GenerateParams {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        stop_strings: args.stop,
        stop_at_eos: true,
    };
    let mut out = std::io::stdout();
    let generation = model.generate(&prompt, &params, &mut |_, piece| {
        let _ = write!(out, "{piece}");
        let _ = out.flush();
        true
    })?;
    println!();
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
