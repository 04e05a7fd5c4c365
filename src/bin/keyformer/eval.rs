//! `keyformer eval`: what each policy preserves, over cache sizes, on aclsum papers.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use keyformer::engine::select::AnyModel;
use keyformer::eval::{aclsum, report, sweep};
use keyformer::{Backend, Error, Model, Policy, Result, with_model};

use super::{BackendArgs, DEFAULT_MODEL, PolicyChoice};

#[derive(clap::Subcommand)]
pub enum EvalTask {
    /// Summarise aclsum papers under every policy and ratio; ROUGE against the reference
    /// summaries and against the full cache's output.
    Summarize(SummarizeArgs),
    /// Perplexity of a long text fed token by token through each policy's cache.
    Perplexity(PerplexityArgs),
    /// Rewrites the tables and plots of a recorded run from its JSON results.
    Report(ReportArgs),
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The folder a summarize or perplexity run wrote.
    dir: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "0.2,0.3,0.5,0.7,0.9")]
    ratios: Vec<f32>,
}

#[derive(clap::Args)]
pub struct Common {
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// The aclsum folder written by scripts/fetch.sh.
    #[arg(long, default_value = "data/aclsum")]
    data: PathBuf,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "full,window,streaming,h2o,keyformer"
    )]
    policies: Vec<PolicyChoice>,
    /// KV cache sizes as fractions of the prompt (or of the text, for perplexity).
    #[arg(long, value_delimiter = ',', default_value = "0.2,0.3,0.5,0.7,0.9")]
    ratios: Vec<f32>,
    /// Folder for the JSON results, the Markdown tables and the PNG plots.
    #[arg(long, default_value = "eval-results")]
    out: PathBuf,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(clap::Args)]
pub struct SummarizeArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 50)]
    docs: usize,
    /// Prompt length in tokens; papers are cut at a paragraph boundary below it, and papers
    /// shorter than it are skipped.
    #[arg(long, default_value_t = 2000)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
}

#[derive(clap::Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    common: Common,
    /// Length of the text, taken from the papers' full texts in order.
    #[arg(long, default_value_t = 4096)]
    tokens: usize,
}

/// A progress bar on stderr: redrawn in place on a terminal, every tenth otherwise.
fn progress(label: &'static str) -> impl FnMut(usize, usize) {
    let terminal = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut last = usize::MAX;
    move |done, total| {
        let tenth = 10 * done / total.max(1);
        if terminal {
            let filled = 30 * done / total.max(1);
            eprint!(
                "\r{label} [{}{}] {done}/{total} {:.0} s",
                "#".repeat(filled),
                " ".repeat(30 - filled),
                start.elapsed().as_secs_f64()
            );
            if done == total {
                eprintln!();
            }
        } else if tenth != last {
            last = tenth;
            eprintln!(
                "{label}: {done}/{total} after {:.0} s",
                start.elapsed().as_secs_f64()
            );
        }
    }
}

pub fn run(task: EvalTask) -> Result<()> {
    let common = match &task {
        EvalTask::Summarize(a) => &a.common,
        EvalTask::Perplexity(a) => &a.common,
        EvalTask::Report(a) => return report(a),
    };
    if common.ratios.iter().any(|r| !(*r > 0.0 && *r <= 1.0)) {
        return Err(Error::InvalidInput("every ratio must be in (0, 1]".into()));
    }
    let (model, note) = AnyModel::load(&common.model, &common.backend.options(), &mut |_, _| {})?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let papers = aclsum::load_papers(&common.data)?;
    let policies: Vec<Policy> = common.policies.iter().map(|p| p.policy()).collect();
    let md = match &task {
        EvalTask::Summarize(a) => with_model!(&model, m => summarize(m, &papers, &policies, a))?,
        EvalTask::Perplexity(a) => with_model!(&model, m => perplexity(m, &papers, &policies, a))?,
        EvalTask::Report(_) => unreachable!("handled above"),
    };
    println!("{md}");
    eprintln!(
        "results in {} (backend {})",
        common.out.display(),
        model.backend_name()
    );
    Ok(())
}

fn report(a: &ReportArgs) -> Result<()> {
    fn read<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<Option<T>> {
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))
    }
    let summaries: Option<Vec<sweep::SummaryResult>> = read(&a.dir.join("summaries.json"))?;
    let perplexity: Option<Vec<sweep::PerplexityResult>> = read(&a.dir.join("perplexity.json"))?;
    if summaries.is_none() && perplexity.is_none() {
        return Err(Error::InvalidInput(format!(
            "{} holds neither summaries.json nor perplexity.json",
            a.dir.display()
        )));
    }
    if let Some(results) = summaries {
        println!("{}", report::write_summaries(&results, &a.ratios, &a.dir)?);
    }
    if let Some(results) = perplexity {
        println!("{}", report::write_perplexity(&results, &a.ratios, &a.dir)?);
    }
    Ok(())
}

fn summarize<B: Backend>(
    model: &Model<B>,
    papers: &[aclsum::Document],
    policies: &[Policy],
    a: &SummarizeArgs,
) -> Result<String> {
    let tok = model.tokenizer()?;
    let instruction = "Summarize the following paper in three sentences.\n\n";
    let overhead = tok.encode(&tok.apply_chat_template(instruction)?)?.len();
    let count = |text: &str| tok.encode(text).map_or(usize::MAX, |ids| ids.len());
    let mut docs = Vec::new();
    for paper in papers {
        if docs.len() == a.docs {
            break;
        }
        let text = paper.text_within(a.prompt_tokens.saturating_sub(overhead), &count);
        let prompt = tok.encode(&tok.apply_chat_template(&format!("{instruction}{text}"))?)?;
        // Keep papers that fill the prompt: a cut paragraph may leave up to ~200 tokens unused.
        if prompt.len() + 200 >= a.prompt_tokens {
            docs.push((paper, prompt));
        }
    }
    if docs.len() < a.docs {
        eprintln!(
            "only {} papers are long enough for {} prompt tokens",
            docs.len(),
            a.prompt_tokens
        );
    }
    let results = sweep::summarize(
        model,
        &docs,
        policies,
        &a.common.ratios,
        a.new_tokens,
        &mut progress("summaries"),
    )?;
    report::write_summaries(&results, &a.common.ratios, &a.common.out)
}

fn perplexity<B: Backend>(
    model: &Model<B>,
    papers: &[aclsum::Document],
    policies: &[Policy],
    a: &PerplexityArgs,
) -> Result<String> {
    let tok = model.tokenizer()?;
    let mut tokens = Vec::new();
    for paper in papers {
        if tokens.len() >= a.tokens {
            break;
        }
        tokens.extend(tok.encode(&format!("{}\n\n", paper.sentences.join("\n")))?);
    }
    tokens.truncate(a.tokens);
    let mut results = Vec::new();
    for (policy, ratio) in sweep::runs(policies, &a.common.ratios) {
        let label = format!(
            "{} {}",
            policy.name(),
            ratio.map_or(String::new(), |r| r.to_string())
        );
        let mut bar = progress("perplexity");
        let r = sweep::streaming_perplexity(model, &tokens, policy, ratio, &mut bar)?;
        eprintln!("{label}: perplexity {:.3}", r.perplexity);
        results.push(r);
    }
    report::write_perplexity(&results, &a.common.ratios, &a.common.out)
}
