//! Models: configuration, weight formats, tokenizer and the per-architecture weight layout.

pub mod arch;
pub mod config;
pub(crate) mod files;
pub mod gguf;
pub mod mix;
pub mod quant;
pub mod rope;
pub mod source;
pub mod tensor;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

use crate::backend::Backend;
use crate::error::{Error, Result};
use arch::Layout;
use config::ModelConfig;
use gguf::GgufFile;
use mix::{WeightKind, WeightPlan};
use source::{QuantizingSource, RandomSource, SafetensorsSource, TensorSource};
use tokenizer::TextTokenizer;
use weights::Weights;

/// A loaded model: its description, its weights on a backend, and its tokenizer when it has one.
pub struct Model<B: Backend> {
    pub config: ModelConfig,
    pub weights: Weights<B::Weight>,
    pub backend: B,
    pub tokenizer: Option<TextTokenizer>,
    pub path: PathBuf,
}

impl<B: Backend> Model<B> {
    /// Loads a GGUF file, or a Hugging Face folder (config.json, safetensors, tokenizer.json).
    /// `progress` receives (tensors loaded, tensors in all).
    pub fn load(
        path: &Path,
        backend: B,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Model<B>> {
        Self::load_with(path, WeightKind::Float, backend, progress)
    }

    /// `load`, quantizing float matrices to `quantize` while they load (see `mix`: one block
    /// format, or a llama.cpp mix): a Hugging Face folder's, or a GGUF file's F32/F16/BF16 ones
    /// (its block-format tensors keep their formats).
    pub fn load_with(
        path: &Path,
        quantize: WeightKind,
        backend: B,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Model<B>> {
        if !path.exists() {
            return Err(Error::NotFound(path.to_path_buf()));
        }
        let gguf_path = if path.is_dir() {
            single_gguf_in(path)?
        } else {
            Some(path.to_path_buf())
        };
        if let Some(gguf_path) = gguf_path {
            // Not a folder: it must be a regular file (not /dev/null, a FIFO or a device).
            files::open_regular(&gguf_path, "model")?;
            let file = GgufFile::open(&gguf_path)?;
            let config = ModelConfig::from_gguf(&file)?;
            backend.check_model(&config)?;
            let tokenizer = Some(TextTokenizer::from_gguf(&file)?);
            let source = QuantizingSource {
                inner: &file,
                plan: WeightPlan::new(quantize, &config, Layout::Gguf),
            };
            let weights =
                weights::load_weights(&config, &source, Layout::Gguf, &backend, progress)?;
            return Ok(Model {
                config,
                weights,
                backend,
                tokenizer,
                path: gguf_path,
            });
        }
        let config = ModelConfig::from_hf_json(&path.join("config.json"))?;
        backend.check_model(&config)?;
        let source = QuantizingSource {
            inner: &SafetensorsSource::open_dir(path)?,
            plan: WeightPlan::new(quantize, &config, Layout::Hf),
        };
        let tokenizer = if path.join("tokenizer.json").exists() {
            Some(TextTokenizer::from_hf_dir(path)?)
        } else {
            None
        };
        let weights = weights::load_weights(
            &config,
            &source as &dyn TensorSource,
            Layout::Hf,
            &backend,
            progress,
        )?;
        Ok(Model {
            config,
            weights,
            backend,
            tokenizer,
            path: path.to_path_buf(),
        })
    }

    /// A model of this config with random weights: real shapes for speed measurements.
    pub fn random(config: ModelConfig, seed: u64, backend: B) -> Result<Model<B>> {
        Self::random_with(config, seed, WeightKind::Float, backend)
    }

    /// `random` with matrices in `weights`' block formats, laid out as llama.cpp's mixes are.
    pub fn random_with(
        config: ModelConfig,
        seed: u64,
        weights: WeightKind,
        backend: B,
    ) -> Result<Model<B>> {
        backend.check_model(&config)?;
        let head = (config.arch.globals)(Layout::Hf).head;
        let plan = WeightPlan::new(weights, &config, Layout::Hf);
        let weights = weights::load_weights(
            &config,
            &RandomSource::new(
                seed,
                (!config.tied_embeddings).then(|| format!("{head}.weight")),
                plan,
            ),
            Layout::Hf,
            &backend,
            &mut |_, _| {},
        )?;
        Ok(Model {
            config,
            weights,
            backend,
            tokenizer: None,
            path: PathBuf::from("<random>"),
        })
    }

    pub fn tokenizer(&self) -> Result<&TextTokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| Error::Tokenizer(format!("{} has no tokenizer", self.path.display())))
    }
}

/// A folder that holds exactly one .gguf file (and no config.json) stands for that file.
fn single_gguf_in(dir: &Path) -> Result<Option<PathBuf>> {
    if dir.join("config.json").exists() {
        return Ok(None);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let ggufs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    match ggufs.len() {
        0 => Err(Error::NotFound(dir.join("config.json"))),
        1 => Ok(ggufs.into_iter().next()),
        n => Err(Error::InvalidInput(format!(
            "{} holds {n} .gguf files: pass one of them",
            dir.display()
        ))),
    }
}
