//! `keyformer tokenize`: the tokens a model's tokenizer makes of a text, as pieces or ids.

use std::path::PathBuf;

use keyformer::model::tokenizer::TextTokenizer;

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// A .gguf file (vocabulary-only files too), or a folder with tokenizer.json or one .gguf.
    #[arg(long, default_value = super::DEFAULT_MODEL)]
    model: PathBuf,
    /// The text to tokenize.
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    text: Option<String>,
    /// A UTF-8 file whose text to tokenize.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Print token ids instead of pieces.
    #[arg(long)]
    ids: bool,
}

pub fn run(args: TokenizeArgs) -> keyformer::Result<()> {
    let text = match (&args.text, &args.file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => {
            std::fs::read_to_string(path).map_err(|e| keyformer::Error::io(path, e))?
        }
        (None, None) => {
            return Err(keyformer::Error::InvalidInput(
                "pass --text or --file".into(),
            ));
        }
    };
    let tok = TextTokenizer::load(&args.model)?;
    let ids = tok.encode(&text)?;
    let line: Vec<String> = if args.ids {
        ids.iter().map(u32::to_string).collect()
    } else {
        // Quoted and escaped, so a piece of spaces or a newline stays visible.
        ids.iter()
            .map(|&id| format!("{:?}", tok.piece(id).unwrap_or_default()))
            .collect()
    };
    println!("{}", line.join(" "));
    eprintln!("{} tokens", ids.len());
    Ok(())
}
