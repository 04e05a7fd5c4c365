//! MPT: ALiBi, fused Wqkv, no biases anywhere (LayerNorm included).

use super::{Architecture, GlobalTensors, LayerTensors, Layout, NormTensors, Prefix};
use crate::error::{Error, Result};
use crate::model::config::{
    Activation, BlockFeatures, HfConfig, ModelConfig, NormKind, Positions, divide,
};

pub static MPT: Architecture = Architecture {
    name: "mpt",
    hf_types: &["mpt"],
    gguf_name: None,
    from_hf,
    from_gguf: None,
    layer,
    globals,
};

fn from_hf(c: &HfConfig) -> Result<ModelConfig> {
    let hidden = c.usize("d_model")?;
    let heads = c.usize("n_heads")?;
    let head_dim = divide(hidden, heads)?;
    let attn = c.opt_object("attn_config")?;
    let attn_bool = |k| attn.as_ref().map_or(Ok(None), |a| a.opt_bool(k));
    let attn_f64 = |k| attn.as_ref().map_or(Ok(None), |a| a.opt_f64(k));
    if attn_bool("alibi")? == Some(false) {
        return Err(Error::Config("MPT without ALiBi is not supported".into()));
    }
    if attn_bool("qk_ln")? == Some(true) || attn_f64("clip_qkv")?.is_some() {
        return Err(Error::Config(
            "MPT qk_ln and clip_qkv are not supported".into(),
        ));
    }
    if c.opt_bool("no_bias")? == Some(false) {
        return Err(Error::Config(
            "MPT with biases (no_bias=false) is not supported".into(),
        ));
    }
    let scale = attn_f64("softmax_scale")?
        .map(|s| s as f32)
        .unwrap_or(1.0 / (head_dim as f32).sqrt());
    let max_bias = attn_f64("alibi_bias_max")?.unwrap_or(8.0);
    if heads > 1 << 12 {
        return Err(Error::Config(format!("{heads} heads is out of range")));
    }
    let (bos, eos) = c.bos_eos()?;
    Ok(ModelConfig {
        arch: &MPT,
        vocab_size: c.usize("vocab_size")?,
        hidden,
        layers: c.usize("n_layers")?,
        heads,
        kv_heads: heads,
        head_dim,
        ffn_hidden: hidden * c.opt_usize("expansion_ratio")?.unwrap_or(4),
        max_context: c.usize("max_seq_len")?,
        norm: NormKind::LayerNorm,
        norm_eps: c.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5) as f32,
        activation: Activation::GeluErf,
        positions: Positions::Alibi {
            slopes: alibi_slopes(heads, max_bias),
        },
        attn_scale: scale,
        parallel_block: false,
        tied_embeddings: true,
        block: BlockFeatures::default(),
        bos,
        eos,
    })
}

fn layer(_: &ModelConfig, _: Layout, i: usize) -> LayerTensors {
    let p = Prefix(format!("transformer.blocks.{i}"));
    LayerTensors {
        attn_norm: p.norm("norm_1", false),
        qkv: p.one("attn.Wqkv", false),
        attn_out: p.one("attn.out_proj", false),
        mlp_norm: Some(p.norm("norm_2", false)),
        mlp_in: p.one("ffn.up_proj", false),
        mlp_out: p.one("ffn.down_proj", false),
        qk_norm: None,
        post_attn_norm: None,
        post_mlp_norm: None,
    }
}

fn globals(_: Layout) -> GlobalTensors {
    GlobalTensors {
        embed: "transformer.wte.weight".into(),
        pos_embed: None,
        final_norm: NormTensors {
            prefix: "transformer.norm_f".into(),
            bias: false,
            plus_one: false,
        },
        head: "lm_head".into(),
        head_bias: false,
    }
}

/// MPT's slopes: geometric in 2^(-max_bias * i / n) over the next power of two of the head
/// count, taking the odd then even entries when the head count is not a power of two.
pub fn alibi_slopes(heads: usize, max_bias: f64) -> Vec<f32> {
    let pow2 = heads.next_power_of_two();
    let all: Vec<f32> = (1..=pow2)
        .map(|i| (1.0 / 2f64.powf(i as f64 * max_bias / pow2 as f64)) as f32)
        .collect();
    if pow2 == heads {
        return all;
    }
    let odd = all.iter().skip(1).step_by(2);
    let even = all.iter().step_by(2);
    odd.chain(even).take(heads).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alibi_slopes_power_of_two() {
        // MPT-7B, 32 heads, max bias 8: slope_i = 2^(-8 i / 32) = 2^(-i/4).
        let s = alibi_slopes(32, 8.0);
        assert_eq!(s.len(), 32);
        assert!((s[0] - 2f32.powf(-0.25)).abs() < 1e-7);
        assert!((s[31] - 2f32.powf(-8.0)).abs() < 1e-9);
    }

    #[test]
    fn alibi_slopes_odd_heads_interleave() {
        // 3 heads -> 4 base slopes 2^-2, 2^-4, 2^-6, 2^-8; odd then even entries.
        let s = alibi_slopes(3, 8.0);
        assert_eq!(s, vec![2f32.powi(-4), 2f32.powi(-8), 2f32.powi(-2)]);
    }
}
