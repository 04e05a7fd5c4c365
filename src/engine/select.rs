//! Choosing a backend at run time: a model on any backend behind one enum, for the command
//! line and the C ABI. `auto` tries CUDA, then the CPU, and says what it chose and why.

use std::path::Path;

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{CudaBackend, CudaDtype};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::model::config::ModelConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Cpu,
    Cuda,
}

impl BackendChoice {
    pub fn parse(name: &str) -> Result<BackendChoice> {
        match name {
            "auto" => Ok(BackendChoice::Auto),
            "cpu" => Ok(BackendChoice::Cpu),
            "cuda" => Ok(BackendChoice::Cuda),
            other => Err(Error::InvalidInput(format!(
                "unknown backend '{other}' (auto, cpu, cuda)"
            ))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct BackendOptions {
    pub backend: BackendChoice,
    /// GPU index.
    pub device: usize,
    /// Storage type on the GPU: f16 (default), bf16 or f32. The CPU always computes in f32.
    pub dtype: CudaDtype,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            backend: BackendChoice::Auto,
            device: 0,
            dtype: CudaDtype::F16,
        }
    }
}

pub enum AnyModel {
    Cpu(Model<CpuBackend>),
    Cuda(Model<CudaBackend>),
}

/// Runs `$body` with `$m` bound to the model inside, whatever its backend.
#[macro_export]
macro_rules! with_model {
    ($any:expr, $m:ident => $body:expr) => {
        match $any {
            $crate::engine::select::AnyModel::Cpu($m) => $body,
            $crate::engine::select::AnyModel::Cuda($m) => $body,
        }
    };
}

/// The GPU backend for these options, or why there is none.
fn open_cuda(opts: &BackendOptions) -> Result<CudaBackend> {
    CudaBackend::new(opts.device, opts.dtype)
}

impl AnyModel {
    /// Loads a model on the chosen backend. Returns the model and, for `auto`, a line saying
    /// which backend it picked and why the others were passed over.
    pub fn load(
        path: &Path,
        opts: &BackendOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(AnyModel, Option<String>)> {
        // Only one of the two loaders runs; the cell lets both hold the progress callback.
        let progress = std::cell::RefCell::new(progress);
        Self::build(
            opts,
            |b| Model::load(path, b, *progress.borrow_mut()),
            |b| Model::load(path, b, *progress.borrow_mut()),
        )
    }

    /// A model of `config` with random weights, for benchmarks.
    pub fn random(
        config: ModelConfig,
        seed: u64,
        opts: &BackendOptions,
    ) -> Result<(AnyModel, Option<String>)> {
        let c = config.clone();
        Self::build(
            opts,
            |b| Model::random(c, seed, b),
            |b| Model::random(config, seed, b),
        )
    }

    fn build(
        opts: &BackendOptions,
        on_cuda: impl FnOnce(CudaBackend) -> Result<Model<CudaBackend>>,
        on_cpu: impl FnOnce(CpuBackend) -> Result<Model<CpuBackend>>,
    ) -> Result<(AnyModel, Option<String>)> {
        match opts.backend {
            BackendChoice::Cpu => Ok((AnyModel::Cpu(on_cpu(CpuBackend)?), None)),
            BackendChoice::Cuda => Ok((AnyModel::Cuda(on_cuda(open_cuda(opts)?)?), None)),
            BackendChoice::Auto => match open_cuda(opts) {
                Ok(b) => {
                    let model = on_cuda(b)?;
                    let note = format!(
                        "backend auto: picked {}",
                        crate::backend::Backend::name(&model.backend)
                    );
                    Ok((AnyModel::Cuda(model), Some(note)))
                }
                Err(e) => Ok((
                    AnyModel::Cpu(on_cpu(CpuBackend)?),
                    Some(format!("backend auto: picked cpu ({e})")),
                )),
            },
        }
    }

    pub fn config(&self) -> &ModelConfig {
        with_model!(self, m => &m.config)
    }

    pub fn backend_name(&self) -> String {
        with_model!(self, m => crate::backend::Backend::name(&m.backend))
    }
}
