//! keyformer: run decoder-only language models with a Keyformer-reduced KV cache.
//!
//! Load a model with [`Model::load`] on a [`backend`], then [`Model::generate`].

pub mod backend;
pub mod engine;
pub mod error;
pub mod eval;
pub mod ffi;
pub mod kv;
pub mod model;

pub use backend::Backend;
pub use backend::cpu::CpuBackend;
pub use engine::batch::{RequestId, Scheduler};
pub use engine::generate::{GenerateParams, Generation, Generator, StopReason};
pub use engine::planner::{BatchLimits, Footprint, Planner};
pub use engine::sampling::SamplingParams;
pub use error::{Error, Result};
pub use kv::policy::{Budget, CacheConfig, Policy};
pub use kv::stats::CacheStats;
pub use model::Model;
