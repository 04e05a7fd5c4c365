//! How many sequences fit at once. A sequence's cache has a fixed size known before it starts
//! (its budget k plus the slot a decode step appends, or prompt plus new tokens for the full
//! cache), so the planner counts bytes up front instead of finding out by running out of
//! memory: cache, the sequence's rows of the batch's activations and logits, and, while its
//! prompt is being prefilled, that prefill's activations.

use crate::backend::Backend;
use crate::engine::activation_widths;
use crate::engine::generate::GenerateParams;
use crate::error::{Error, Result};
use crate::kv::CacheShape;
use crate::kv::policy::CachePlan;
use crate::model::Model;
use crate::model::config::ModelConfig;

/// The memory for caches and activations where the backend cannot tell its free memory (the
/// CPU): 2 GiB.
pub const DEFAULT_HOST_MEMORY: usize = 2 << 30;

/// Held back from a GPU's free memory for the libraries' own workspaces and fragmentation:
/// a tenth of it, at least 512 MiB.
fn safety_margin(free: usize) -> usize {
    (free / 10).max(512 << 20).min(free)
}

/// How a batch admits sequences.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most sequences decoded together; None admits as many as fit in memory.
    pub max_batch: Option<usize>,
    /// Bytes for caches and activations; None takes the device's free memory less a safety
    /// margin, or `DEFAULT_HOST_MEMORY` where the backend cannot tell. On a GPU a limit above
    /// the free memory (less the margin) is lowered to it.
    pub memory: Option<usize>,
}

/// Bytes one sequence occupies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// K and V of every layer and kv head, at the cache's fixed capacity.
    pub cache: usize,
    /// Its row of the batch's activations, logits and sampling row, at every decode step.
    pub decode: usize,
    /// Held only while its prompt is prefilled: the prompt's activations and logits, and the
    /// prompt's tokens beyond the cache's capacity in the one layer that holds them before
    /// evicting.
    pub prefill: usize,
}

impl Footprint {
    /// What a running sequence holds.
    pub fn steady(&self) -> usize {
        self.cache + self.decode
    }

    /// What it needs while being admitted.
    pub fn peak(&self) -> usize {
        self.steady() + self.prefill
    }

    /// A sequence of `prompt_len` tokens and up to `max_new` more under `plan`, with cached
    /// values of `kv_value_bytes` bytes and f32 activations.
    pub fn new(
        c: &ModelConfig,
        kv_value_bytes: usize,
        plan: &CachePlan,
        prompt_len: usize,
        max_new: usize,
    ) -> Footprint {
        let slots = c.cache_slots(plan, prompt_len, max_new);
        let shape = CacheShape {
            layers: c.layers,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            capacity: slots,
        };
        let row_values: usize = activation_widths(c).iter().sum();
        let f32_bytes = std::mem::size_of::<f32>();
        let one_layer = CacheShape { layers: 1, ..shape };
        // A prefill runs the prompt (or a chunk) as activations, and the layer being run holds
        // its kept tokens plus those rows until it evicts.
        let rows = plan.prefill_chunk.map_or(prompt_len, |c| c.min(prompt_len));
        let held = (slots + rows).min(prompt_len);
        Footprint {
            cache: shape.kv_bytes(slots, kv_value_bytes),
            decode: (row_values + 2 * c.vocab_size) * f32_bytes,
            prefill: (rows * row_values + c.vocab_size) * f32_bytes
                + one_layer.kv_bytes(held.saturating_sub(slots), kv_value_bytes),
        }
    }
}

/// Admits sequences while their footprints fit in the memory it was given.
#[derive(Clone, Debug)]
pub struct Planner {
    /// Bytes for caches and activations.
    pub capacity: usize,
    pub max_batch: Option<usize>,
}

impl Planner {
    /// The memory of `free` bytes (what the backend reports, if it can) under `limits`.
    pub fn new(free: Option<usize>, limits: &BatchLimits) -> Result<Planner> {
        if limits.max_batch == Some(0) {
            return Err(Error::InvalidInput("max batch must be at least 1".into()));
        }
        let usable = free.map(|f| f - safety_margin(f));
        let capacity = match (limits.memory, usable) {
            (Some(limit), Some(usable)) => limit.min(usable),
            (Some(limit), None) => limit,
            (None, Some(usable)) => usable,
            (None, None) => DEFAULT_HOST_MEMORY,
        };
        Ok(Planner {
            capacity,
            max_batch: limits.max_batch,
        })
    }

    /// A planner for `model`'s backend.
    pub fn for_model<B: Backend>(model: &Model<B>, limits: &BatchLimits) -> Result<Planner> {
        Planner::new(model.backend.free_memory(), limits)
    }

    /// Checks a request and what it needs: an error when it is invalid, or could not run even
    /// alone.
    pub fn check<B: Backend>(
        &self,
        model: &Model<B>,
        prompt: &[u32],
        params: &GenerateParams,
    ) -> Result<Footprint> {
        let plan = model.plan_request(prompt, params)?;
        let footprint = Footprint::new(
            &model.config,
            model.backend.kv_value_bytes(),
            &plan,
            prompt.len(),
            params.max_new_tokens,
        );
        if footprint.peak() > self.capacity {
            return Err(Error::InvalidInput(format!(
                "the request can never run: it needs {} bytes ({} of KV cache, {} for decode and {} during its prefill), and the batch has {} bytes",
                footprint.peak(),
                footprint.cache,
                footprint.decode,
                footprint.prefill,
                self.capacity
            )));
        }
        Ok(footprint)
    }

    /// Whether one more sequence fits beside `running` sequences holding `used` bytes.
    pub fn admits(&self, running: usize, used: usize, next: &Footprint) -> bool {
        self.max_batch.is_none_or(|m| running < m) && used + next.peak() <= self.capacity
    }

    /// How many sequences of one footprint fit together, admitted one after another.
    pub fn how_many(&self, f: &Footprint) -> usize {
        // The n-th is admitted while n - 1 hold their steady bytes.
        let n = match self.capacity.checked_sub(f.peak()) {
            None => 0,
            Some(room) => 1 + room / f.steady().max(1),
        };
        self.max_batch.map_or(n, |m| n.min(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::policy::{Budget, CacheConfig, Policy};
    use crate::model::config::{Activation, BlockFeatures, NormKind, Positions};

    /// SmolLM2-135M's shape.
    fn config() -> ModelConfig {
        ModelConfig {
            arch: &crate::model::arch::LLAMA,
            vocab_size: 49152,
            hidden: 576,
            layers: 30,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            ffn_hidden: 1536,
            max_context: 8192,
            norm: NormKind::RmsNorm,
            norm_eps: 1e-5,
            activation: Activation::SwiGlu,
            positions: Positions::Alibi { slopes: vec![] },
            attn_scale: 0.125,
            parallel_block: false,
            tied_embeddings: true,
            block: BlockFeatures::default(),
            bos: None,
            eos: vec![],
        }
    }

    fn plan(policy: Policy, budget: usize) -> CachePlan {
        CacheConfig {
            policy,
            budget: Budget::Tokens(budget),
            ..Default::default()
        }
        .plan(1000)
        .unwrap()
    }

    #[test]
    fn footprint_counts_the_cache_slots_and_the_activation_rows() {
        let c = config();
        // Keyformer with k = 100: 101 slots x 30 layers x (K, V) x 3 heads x 64 dims x 2 bytes.
        let f = Footprint::new(&c, 2, &plan(Policy::Keyformer, 100), 1000, 64);
        assert_eq!(f.cache, 101 * 30 * 2 * 3 * 64 * 2);
        // x, normed, proj: 576 each; qkv 576 + 2 * 192; attn 576; [gate | up] 3072; act 1536.
        let row = 576 * 3 + 960 + 576 + 3072 + 1536;
        assert_eq!(f.decode, (row + 2 * 49152) * 4);
        // The prompt's rows, one row of logits, and 899 extra slots in one layer.
        assert_eq!(f.prefill, (1000 * row + 49152) * 4 + 899 * 2 * 3 * 64 * 2);
        // The full cache holds prompt and new tokens, up to the context.
        let full = Footprint::new(&c, 4, &plan(Policy::Full, 1), 1000, 64);
        assert_eq!(full.cache, 1064 * 30 * 2 * 3 * 64 * 4);
        assert_eq!(full.prefill, (1000 * row + 49152) * 4);
        let capped = Footprint::new(&c, 4, &plan(Policy::Full, 1), 8000, 1000);
        assert_eq!(capped.cache, 8192 * 30 * 2 * 3 * 64 * 4);
    }

    #[test]
    fn a_chunked_prefill_needs_the_budget_plus_one_chunk() {
        let c = config();
        let row = 576 * 3 + 960 + 576 + 3072 + 1536;
        let mut chunked = plan(Policy::Keyformer, 100);
        chunked.prefill_chunk = Some(128);
        let f = Footprint::new(&c, 2, &chunked, 1000, 64);
        // 128 rows of activations, and the layer being run holds 101 + 128 slots at most.
        assert_eq!(f.prefill, (128 * row + 49152) * 4 + 128 * 2 * 3 * 64 * 2);
        let one_pass = Footprint::new(&c, 2, &plan(Policy::Keyformer, 100), 1000, 64);
        assert!(f.peak() * 3 < one_pass.peak());
        // A chunk longer than the prompt is the one-pass prefill.
        chunked.prefill_chunk = Some(4096);
        assert_eq!(
            Footprint::new(&c, 2, &chunked, 1000, 64).prefill,
            one_pass.prefill
        );
    }

    #[test]
    fn capacity_is_free_memory_less_a_margin_or_the_limit() {
        let gib = 1usize << 30;
        let none = BatchLimits::default();
        assert_eq!(
            Planner::new(Some(10 * gib), &none).unwrap().capacity,
            9 * gib
        );
        // The margin is at least 512 MiB.
        assert_eq!(Planner::new(Some(gib), &none).unwrap().capacity, gib / 2);
        assert_eq!(
            Planner::new(None, &none).unwrap().capacity,
            DEFAULT_HOST_MEMORY
        );
        let limited = BatchLimits {
            memory: Some(3 * gib),
            max_batch: None,
        };
        assert_eq!(Planner::new(None, &limited).unwrap().capacity, 3 * gib);
        assert_eq!(
            Planner::new(Some(2 * gib), &limited).unwrap().capacity,
            gib + gib / 2
        );
        let zero = BatchLimits {
            max_batch: Some(0),
            memory: None,
        };
        assert!(Planner::new(None, &zero).is_err());
    }

    #[test]
    fn admission_counts_peaks_against_steady_neighbours() {
        let f = Footprint {
            cache: 60,
            decode: 40,
            prefill: 50,
        };
        let planner = Planner {
            capacity: 450,
            max_batch: None,
        };
        // 3 running hold 300; a fourth needs 150 more while prefilling: exactly 450.
        assert!(planner.admits(3, 300, &f));
        assert!(!planner.admits(4, 400, &f));
        assert_eq!(planner.how_many(&f), 4);
        let capped = Planner {
            max_batch: Some(2),
            ..planner.clone()
        };
        assert!(!capped.admits(2, 200, &f));
        assert_eq!(capped.how_many(&f), 2);
        let tiny = Planner {
            capacity: 149,
            max_batch: None,
        };
        assert_eq!(tiny.how_many(&f), 0);
    }
}
