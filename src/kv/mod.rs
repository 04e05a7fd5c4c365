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
