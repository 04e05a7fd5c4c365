//! Random weights at any shape, for measuring speed at real model sizes without the weights,
//! as floats or, following a `WeightPlan`, in block formats laid out as llama.cpp's mixes would.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::{TensorSource, fnv1a, splitmix64};
use crate::error::{Error, Result};
use crate::model::mix::WeightPlan;
use crate::model::quant::Format;
use crate::model::tensor::BlockRows;

/// Quantized pools by (format id, columns).
type Pools = Mutex<HashMap<(u32, usize), Arc<Vec<u8>>>>;

/// Values in a pool of quantized random blocks that block-format matrices are tiled from.
const POOL_VALUES: usize = 1 << 20;

/// Random weights: norm weights near one and everything else small (uniform in
/// ±0.25 / sqrt(columns)), so activations stay finite. Matrices the plan names come as block
/// formats: a pool of random values of the same distribution is quantized once per (format,
/// columns) and tiled through the matrix from a per-tensor offset, so an 8B model's blocks take
/// seconds rather than quantizing billions of values.
pub struct RandomSource {
    pub seed: u64,
    /// The output projection's weight name, present unless the embedding is tied.
    pub head: Option<String>,
    plan: WeightPlan,
    pools: Pools,
}

impl RandomSource {
    pub fn new(seed: u64, head: Option<String>, plan: WeightPlan) -> RandomSource {
        RandomSource {
            seed,
            head,
            plan,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// `len` values of `name`'s distribution, from the stream `seed`.
    fn values(seed: u64, len: usize, norm: bool, cols: usize) -> Vec<f32> {
        let scale = 0.5 / (cols.max(1) as f32).sqrt();
        // Chunks with their own streams, so billions of values fill on every core.
        let mut data = vec![0f32; len];
        data.par_chunks_mut(1 << 16)
            .enumerate()
            .for_each(|(c, chunk)| {
                let mut state = seed ^ (c as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                for v in chunk {
                    let u = (splitmix64(&mut state) >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                    *v = if norm { 1.0 + 0.1 * u } else { scale * u };
                }
            });
        data
    }

    /// The quantized pool of `format` for matrices of `cols` columns.
    fn pool(&self, format: &'static Format, cols: usize) -> Result<Arc<Vec<u8>>> {
        let key = (format.id, cols);
        if let Some(p) = self.pools.lock().map_err(poisoned)?.get(&key) {
            return Ok(p.clone());
        }
        let values = POOL_VALUES.div_ceil(format.block_values) * format.block_values;
        let seed = self.seed ^ fnv1a(format.name.as_bytes()) ^ cols as u64;
        let pool = Arc::new(format.quantize(&Self::values(seed, values, false, cols))?);
        self.pools
            .lock()
            .map_err(poisoned)?
            .insert(key, pool.clone());
        Ok(pool)
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::InvalidInput("a random-weight pool was poisoned by a panic".into())
}

impl TensorSource for RandomSource {
    /// The one optional tensor a loader asks about: the output matrix, present unless the
    /// config ties it to the embedding.
    fn has(&self, name: &str) -> bool {
        self.head.as_deref() == Some(name)
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let len: usize = shape.iter().product();
        let seed = self.seed ^ fnv1a(name.as_bytes());
        let norm = shape.len() == 1 && (name.contains("norm") || name.contains("ln"));
        Ok(Self::values(seed, len, norm, *shape.last().unwrap_or(&1)))
    }

    fn load_blocks(&self, name: &str, [rows, cols]: [usize; 2]) -> Result<Option<BlockRows>> {
        let Some(format) = self.plan.format_for(name, cols) else {
            return Ok(None);
        };
        let pool = self.pool(format, cols)?;
        let bb = format.block_bytes;
        let blocks = rows * cols / format.block_values;
        let pool_blocks = pool.len() / bb;
        let first = (self.seed ^ fnv1a(name.as_bytes())) as usize % pool_blocks;
        let mut bytes = vec![0u8; blocks * bb];
        // Block i of the matrix is pool block (first + i) mod the pool's length.
        bytes
            .par_chunks_mut(bb * 4096)
            .enumerate()
            .for_each(|(c, chunk)| {
                for (j, dst) in chunk.chunks_exact_mut(bb).enumerate() {
                    let k = (first + c * 4096 + j) % pool_blocks;
                    dst.copy_from_slice(&pool[k * bb..(k + 1) * bb]);
                }
            });
        BlockRows::new(format, rows, cols, bytes).map(Some)
    }
}
