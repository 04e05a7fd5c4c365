//! Choosing a backend at run time: a model on any backend behind one enum, for the command
//! line and the C ABI. `auto` tries CUDA, then wgpu, then the CPU, and says what it chose and
//! why it passed over the others.

use std::path::Path;

use crate::backend::Backend;
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{CudaBackend, CudaDtype};
use crate::backend::wgpu::{WgpuBackend, WgpuDtype, WgpuOptions};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::model::config::ModelConfig;
use crate::model::mix::WeightKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Cpu,
    Cuda,
    Wgpu,
}

impl BackendChoice {
    pub fn parse(name: &str) -> Result<BackendChoice> {
        match name {
            "auto" => Ok(BackendChoice::Auto),
            "cpu" => Ok(BackendChoice::Cpu),
            "cuda" => Ok(BackendChoice::Cuda),
            "wgpu" => Ok(BackendChoice::Wgpu),
            other => Err(Error::InvalidInput(format!(
                "unknown backend '{other}' (auto, cpu, cuda, wgpu)"
            ))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct BackendOptions {
    pub backend: BackendChoice,
    /// GPU index (CUDA device or wgpu adapter).
    pub device: usize,
    /// Storage type on the GPU: f16 (default), bf16 (CUDA only) or f32. The CPU always
    /// computes in f32.
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

/// A model on whichever backend was chosen (boxed: the weight tables are large structs).
pub enum AnyModel {
    Cpu(Box<Model<CpuBackend>>),
    Cuda(Box<Model<CudaBackend>>),
    Wgpu(Box<Model<WgpuBackend>>),
}

/// Runs `$body` with `$m` bound to the model inside, whatever its backend.
#[macro_export]
macro_rules! with_model {
    ($any:expr, $m:ident => $body:expr) => {
        match $any {
            $crate::engine::select::AnyModel::Cpu($m) => $body,
            $crate::engine::select::AnyModel::Cuda($m) => $body,
            $crate::engine::select::AnyModel::Wgpu($m) => $body,
        }
    };
}

fn open_cuda(opts: &BackendOptions) -> Result<CudaBackend> {
    CudaBackend::new(opts.device, opts.dtype)
}

fn open_wgpu(opts: &BackendOptions) -> Result<WgpuBackend> {
    let dtype = match opts.dtype {
        CudaDtype::F16 => WgpuDtype::Auto,
        CudaDtype::F32 => WgpuDtype::F32,
        CudaDtype::Bf16 => {
            return Err(Error::Backend {
                backend: "wgpu",
                reason: "bf16 storage is CUDA only (use f16 or f32)".into(),
            });
        }
    };
    WgpuBackend::new(WgpuOptions {
        adapter: Some(opts.device),
        dtype,
        ..Default::default()
    })
}

/// Builds the same model on any backend: `load` is called with the backend chosen.
trait Build {
    fn build<B: Backend>(self, backend: B) -> Result<Model<B>>;
}

struct FromPath<'a> {
    path: &'a Path,
    quantize: WeightKind,
    progress: &'a mut dyn FnMut(usize, usize),
}

impl Build for FromPath<'_> {
    fn build<B: Backend>(self, backend: B) -> Result<Model<B>> {
        Model::load_with(self.path, self.quantize, backend, self.progress)
    }
}

struct Random {
    config: ModelConfig,
    seed: u64,
    weights: WeightKind,
}

impl Build for Random {
    fn build<B: Backend>(self, backend: B) -> Result<Model<B>> {
        Model::random_with(self.config, self.seed, self.weights, backend)
    }
}

impl AnyModel {
    /// Loads a model on the chosen backend. Returns the model and, for `auto`, a line saying
    /// which backend it picked and why it passed over the others.
    pub fn load(
        path: &Path,
        opts: &BackendOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(AnyModel, Option<String>)> {
        Self::load_with(path, WeightKind::Float, opts, progress)
    }

    /// `load`, quantizing float matrices while they load
    /// (`Model::load_with`).
    pub fn load_with(
        path: &Path,
        quantize: WeightKind,
        opts: &BackendOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(AnyModel, Option<String>)> {
        // Before any device is opened: a missing file is the likeliest error.
        if !path.exists() {
            return Err(Error::NotFound(path.to_path_buf()));
        }
        let what = FromPath {
            path,
            quantize,
            progress,
        };
        Self::build(opts, what)
    }

    /// A model of `config` with random weights, for benchmarks.
    pub fn random(
        config: ModelConfig,
        seed: u64,
        opts: &BackendOptions,
    ) -> Result<(AnyModel, Option<String>)> {
        Self::random_with(config, seed, WeightKind::Float, opts)
    }

    /// Random weights with matrices in `weights`' block formats (`Model::random_with`).
    pub fn random_with(
        config: ModelConfig,
        seed: u64,
        weights: WeightKind,
        opts: &BackendOptions,
    ) -> Result<(AnyModel, Option<String>)> {
        let what = Random {
            config,
            seed,
            weights,
        };
        Self::build(opts, what)
    }

    fn build(opts: &BackendOptions, what: impl Build) -> Result<(AnyModel, Option<String>)> {
        match opts.backend {
            BackendChoice::Cpu => Ok((AnyModel::Cpu(Box::new(what.build(CpuBackend)?)), None)),
            BackendChoice::Cuda => Ok((
                AnyModel::Cuda(Box::new(what.build(open_cuda(opts)?)?)),
                None,
            )),
            BackendChoice::Wgpu => Ok((
                AnyModel::Wgpu(Box::new(what.build(open_wgpu(opts)?)?)),
                None,
            )),
            BackendChoice::Auto => {
                let cuda_error = match open_cuda(opts) {
                    Ok(b) => {
                        let note = format!("backend auto: picked {}", b.name());
                        return Ok((AnyModel::Cuda(Box::new(what.build(b)?)), Some(note)));
                    }
                    Err(e) => e,
                };
                let wgpu_error = match open_wgpu(opts) {
                    Ok(b) if b.is_software() => Error::Backend {
                        backend: "wgpu",
                        reason: format!(
                            "{} is a software renderer, slower than the CPU backend",
                            b.name()
                        ),
                    },
                    Ok(b) => {
                        let note = format!("backend auto: picked {} ({cuda_error})", b.name());
                        return Ok((AnyModel::Wgpu(Box::new(what.build(b)?)), Some(note)));
                    }
                    Err(e) => e,
                };
                let note = format!("backend auto: picked cpu ({cuda_error}; {wgpu_error})");
                Ok((AnyModel::Cpu(Box::new(what.build(CpuBackend)?)), Some(note)))
            }
        }
    }

    pub fn config(&self) -> &ModelConfig {
        with_model!(self, m => &m.config)
    }

    pub fn backend_name(&self) -> String {
        with_model!(self, m => m.backend.name())
    }
}
