//! The KV cache layout shared by every backend. Per (sequence, layer) a fixed-capacity block:
//! K and V as [kv_head][slot][head_dim], each slot's original token position as
//! [kv_head][slot], its accumulated score as [kv_head][slot], and one length for the layer
//! (every head of a layer holds the same number of tokens).

/// The fixed size of one sequence's cache; memory is known before generation starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Slots per (layer, kv head).
    pub capacity: usize,
}

impl CacheShape {
    /// Bytes of K and V for `tokens` tokens in every layer and head at `bytes_per_value`.
    pub fn kv_bytes(&self, tokens: usize, bytes_per_value: usize) -> usize {
        2 * self.layers * self.kv_heads * tokens * self.head_dim * bytes_per_value
    }
}

pub mod noise;
pub mod policy;
pub mod stats;

/// This step's score accumulation: S_j += softmax_j((x_j + g_j) / tau), noise g optional.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepScore {
    pub noise: bool,
    pub tau: f32,
    pub seed: u32,
}

/// What eviction keeps in every (layer, kv head): the first `sinks` tokens, the last `recent`
/// tokens, and the highest-scoring tokens between them, `budget` tokens in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keep {
    pub budget: usize,
    pub sinks: usize,
    pub recent: usize,
}
