//! What the cache holds, for people and for the C ABI's kf_cache_stats.

use serde::Serialize;

use crate::kv::policy::Policy;

#[derive(Clone, Debug, Serialize)]
pub struct LayerStats {
    /// Tokens kept in each kv head.
    pub kept: Vec<usize>,
    /// Slots allocated per kv head.
    pub capacity: usize,
    /// A sliding-window layer's window: it keeps its window and is never scored or evicted
    /// by the policy (None: the policy's layer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CacheStats {
    #[serde(serialize_with = "policy_name")]
    pub policy: Policy,
    /// Tokens kept per layer and head (k); None for the full cache.
    pub budget: Option<usize>,
    pub sinks: usize,
    pub recent: usize,
    /// Tokens the sequence has seen: prompt plus generated tokens fed back.
    pub tokens_seen: usize,
    pub layers: Vec<LayerStats>,
    /// K and V bytes allocated now.
    pub kv_bytes_held: usize,
    /// K and V bytes a full cache would hold for the tokens seen.
    pub kv_bytes_full: usize,
    /// Tokens evicted so far, summed over layers and kv heads.
    pub evictions: u64,
    /// kv_bytes_full / kv_bytes_held.
    pub compression_ratio: f64,
    /// The score temperature of the latest step (1 when the policy does not score).
    pub tau: f32,
    /// The prompt's chunk length when it was prefilled in chunks (None: in one pass).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_chunk: Option<usize>,
    /// The most slots per kv head one layer held at once: the high-water mark of the cache
    /// during a prefill, the budget plus the prompt in one pass or plus a chunk.
    pub peak_slots: usize,
    /// Kept original positions as [layer][kv head][slot], when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub positions: Option<Vec<Vec<Vec<u32>>>>,
}

fn policy_name<S: serde::Serializer>(p: &Policy, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.name())
}

impl std::fmt::Display for CacheStats {
    /// A one-line summary for the command line.
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        let kept = self
            .layers
            .first()
            .and_then(|l| l.kept.first())
            .copied()
            .unwrap_or(0);
        write!(
            f,
            "cache: {} policy, {} of {} tokens kept per head (budget {}, sinks {}, recent {}), {:.2} MiB held vs {:.2} MiB full ({:.2}x), {} evictions, tau {:.3}",
            self.policy.name(),
            kept,
            self.tokens_seen,
            self.budget.map_or("none".to_string(), |k| k.to_string()),
            self.sinks,
            self.recent,
            mib(self.kv_bytes_held),
            mib(self.kv_bytes_full),
            self.compression_ratio,
            self.evictions,
            self.tau
        )?;
        let steady = self.layers.iter().map(|l| l.capacity).max().unwrap_or(0);
        if self.prefill_chunk.is_some() || self.peak_slots > steady {
            write!(f, ", prefill peak {} slots in a layer", self.peak_slots)?;
            if let Some(chunk) = self.prefill_chunk {
                write!(f, " (chunks of {chunk})")?;
            }
        }
        Ok(())
    }
}

impl CacheStats {
    /// Writes the kept positions as a PNG heat map: one column per position seen, one band per
    /// (layer, kv head), bright where the token is still cached. Needs `positions`.
    pub fn write_heat_map(&self, path: &std::path::Path) -> crate::error::Result<()> {
        let positions = self.positions.as_ref().ok_or_else(|| {
            crate::error::Error::InvalidInput(
                "cache statistics were taken without positions".into(),
            )
        })?;
        let heads: Vec<&Vec<u32>> = positions.iter().flatten().collect();
        let columns = self.tokens_seen.max(1);
        // Stretch short sequences so each token stays visible; keep bands a few pixels tall.
        let px = (1024 / columns).clamp(1, 8);
        let band = 4;
        let (width, height) = (columns * px, heads.len() * band);
        let mut pixels = vec![0u8; width * height * 3];
        for (row, kept) in heads.iter().enumerate() {
            let layer_edge = row % positions[0].len() == 0 && row > 0;
            for y in row * band..(row + 1) * band {
                for x in 0..width {
                    let color = if layer_edge && y == row * band {
                        [90, 90, 90]
                    } else if kept.binary_search(&((x / px) as u32)).is_ok() {
                        [250, 210, 60]
                    } else {
                        [20, 30, 70]
                    };
                    pixels[(y * width + x) * 3..(y * width + x + 1) * 3].copy_from_slice(&color);
                }
            }
        }
        let io = |e: std::io::Error| crate::error::Error::io(path, e);
        let file = std::fs::File::create(path).map_err(io)?;
        let mut encoder =
            png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let to_io = |e: png::EncodingError| io(std::io::Error::other(e));
        encoder
            .write_header()
            .map_err(to_io)?
            .write_image_data(&pixels)
            .map_err(to_io)?;
        Ok(())
    }
}
