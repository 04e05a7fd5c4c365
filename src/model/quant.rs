//! GGML weight formats as one table: per GGUF type id its name, its block (values and bytes),
//! where this crate reads it a block dequantizer to f32, and where it writes it a block quantizer
//! from f32 (`quantize.rs`: scale searches of our own, tests/quantize.rs holds their error to at
//! most 1.10 times llama.cpp's reference quantizers').
//!
//! Adding a format is one entry in `FORMATS` (plus its block functions). The block layouts follow
//! ggml's reference dequantizers (`ggml-quants.c`); each function does its arithmetic in f32 in
//! the same order as the reference, so results are bit-exact (tests/quant.rs checks this against
//! the `gguf` Python package's dequantizer for every readable format).

mod blocks32;
mod floats;
mod kquants;
mod quantize;

use rayon::prelude::*;

use crate::error::{Error, Result};

pub use quantize::QuantizeFn;
use quantize::{MAX_ABS, floats as write, kquants as kq, legacy};

/// Turns whole blocks' bytes into their values (`block_values` per `block_bytes`).
pub type BlockFn = fn(blocks: &[u8], out: &mut [f32]);

/// The `BlockFn` that runs the one-block function `$f` over blocks of `$bytes` bytes and
/// `$values` values: with the sizes constant the compiler drops the bounds checks and
/// vectorises the block function inlined into the loop (products dequantize a row per call).
macro_rules! blocks {
    ($f:path, $bytes:literal, $values:literal) => {{
        fn run(blocks: &[u8], out: &mut [f32]) {
            let chunks = blocks
                .chunks_exact($bytes)
                .zip(out.chunks_exact_mut($values));
            for (b, o) in chunks {
                $f(b, o);
            }
        }
        run as BlockFn
    }};
}

/// One ggml element type.
#[derive(Debug)]
pub struct Format {
    /// The GGUF/ggml type id, as stored in a tensor info.
    pub id: u32,
    /// ggml's name for it (`Q4_K`, `BF16`, ...).
    pub name: &'static str,
    /// Values per block (1 for plain floats and integers).
    pub block_values: usize,
    /// Bytes per block.
    pub block_bytes: usize,
    /// `None` for types this crate can size but not read.
    dequantize_block: Option<BlockFn>,
    /// `None` for types this crate cannot write.
    quantize_block: Option<QuantizeFn>,
}

const fn entry(
    id: u32,
    name: &'static str,
    block_values: usize,
    block_bytes: usize,
    dequantize_block: Option<BlockFn>,
) -> Format {
    Format {
        id,
        name,
        block_values,
        block_bytes,
        dequantize_block,
        quantize_block: None,
    }
}

impl Format {
    /// The entry with a block quantizer.
    const fn writes(self, quantize_block: QuantizeFn) -> Format {
        Format {
            quantize_block: Some(quantize_block),
            ..self
        }
    }
}

/// Every ggml type GGUF files may name, readable ones first.
pub static FORMATS: &[Format] = &[
    entry(0, "F32", 1, 4, Some(blocks!(floats::f32_block, 4, 1))).writes(write::f32_block),
    entry(1, "F16", 1, 2, Some(blocks!(floats::f16_block, 2, 1))).writes(write::f16_block),
    entry(30, "BF16", 1, 2, Some(blocks!(floats::bf16_block, 2, 1))).writes(write::bf16_block),
    entry(2, "Q4_0", 32, 18, Some(blocks!(blocks32::q4_0, 18, 32))).writes(legacy::q4_0),
    entry(3, "Q4_1", 32, 20, Some(blocks!(blocks32::q4_1, 20, 32))).writes(legacy::q4_1),
    entry(6, "Q5_0", 32, 22, Some(blocks!(blocks32::q5_0, 22, 32))).writes(legacy::q5_0),
    entry(7, "Q5_1", 32, 24, Some(blocks!(blocks32::q5_1, 24, 32))).writes(legacy::q5_1),
    entry(8, "Q8_0", 32, 34, Some(blocks!(blocks32::q8_0, 34, 32))).writes(legacy::q8_0),
    entry(
        20,
        "IQ4_NL",
        32,
        18,
        Some(blocks!(blocks32::iq4_nl, 18, 32)),
    ),
    entry(10, "Q2_K", 256, 84, Some(blocks!(kquants::q2_k, 84, 256))).writes(kq::q2_k),
    entry(11, "Q3_K", 256, 110, Some(blocks!(kquants::q3_k, 110, 256))).writes(kq::q3_k),
    entry(12, "Q4_K", 256, 144, Some(blocks!(kquants::q4_k, 144, 256))).writes(kq::q4_k),
    entry(13, "Q5_K", 256, 176, Some(blocks!(kquants::q5_k, 176, 256))).writes(kq::q5_k),
    entry(14, "Q6_K", 256, 210, Some(blocks!(kquants::q6_k, 210, 256))).writes(kq::q6_k),
    entry(
        23,
        "IQ4_XS",
        256,
        136,
        Some(blocks!(kquants::iq4_xs, 136, 256)),
    ),
    // Known, sized, not read.
    entry(9, "Q8_1", 32, 40, None),
    entry(15, "Q8_K", 256, 292, None),
    entry(16, "IQ2_XXS", 256, 66, None),
    entry(17, "IQ2_XS", 256, 74, None),
    entry(18, "IQ3_XXS", 256, 98, None),
    entry(19, "IQ1_S", 256, 50, None),
    entry(21, "IQ3_S", 256, 110, None),
    entry(22, "IQ2_S", 256, 82, None),
    entry(24, "I8", 1, 1, None),
    entry(25, "I16", 1, 2, None),
    entry(26, "I32", 1, 4, None),
    entry(27, "I64", 1, 8, None),
    entry(28, "F64", 1, 8, None),
    entry(29, "IQ1_M", 256, 56, None),
    entry(34, "TQ1_0", 256, 54, None),
    entry(35, "TQ2_0", 256, 66, None),
    entry(39, "MXFP4", 32, 17, None),
];

/// The table entry of a type id; `None` for ids ggml does not define (or this table lacks).
pub fn by_id(id: u32) -> Option<&'static Format> {
    FORMATS.iter().find(|f| f.id == id)
}

/// The name of a type id for messages: ggml's name, or "ggml type N" when unknown.
pub fn type_name(id: u32) -> String {
    by_id(id).map_or_else(|| format!("ggml type {id}"), |f| f.name.to_string())
}

/// The names of the types `Format::quantize` writes, comma-separated, for messages.
pub fn quantizable_names() -> String {
    let names: Vec<&str> = FORMATS
        .iter()
        .filter(|f| f.can_quantize())
        .map(|f| f.name)
        .collect();
    names.join(", ")
}

/// The table entry named `name` (ggml's name, any case): `q4_k` finds Q4_K.
pub fn by_name(name: &str) -> Option<&'static Format> {
    FORMATS.iter().find(|f| f.name.eq_ignore_ascii_case(name))
}

/// The names of the readable types, comma-separated, for messages.
pub fn supported_names() -> String {
    let names: Vec<&str> = FORMATS
        .iter()
        .filter(|f| f.dequantize_block.is_some())
        .map(|f| f.name)
        .collect();
    names.join(", ")
}

impl Format {
    pub fn can_dequantize(&self) -> bool {
        self.dequantize_block.is_some()
    }

    pub fn can_quantize(&self) -> bool {
        self.quantize_block.is_some()
    }

    /// Bytes that `values` values take, or `None` when `values` is not a whole number of blocks
    /// or the size overflows.
    pub fn bytes_for(&self, values: usize) -> Option<usize> {
        if !values.is_multiple_of(self.block_values) {
            return None;
        }
        (values / self.block_values).checked_mul(self.block_bytes)
    }

    /// Dequantizes whole blocks into `out`, which holds as many values as `bytes` encodes (a
    /// row of a weight matrix, say). The caller checks both lengths.
    pub fn dequantize_into(&self, bytes: &[u8], out: &mut [f32]) -> Result<()> {
        let block = self.dequantize_block.ok_or_else(|| {
            Error::InvalidInput(format!("type {} cannot be dequantized", self.name))
        })?;
        block(bytes, out);
        Ok(())
    }

    /// Dequantizes whole blocks to f32. `bytes` must be a whole number of blocks; the output is
    /// allocated fallibly, since its length comes from a file.
    pub fn dequantize(&self, bytes: &[u8]) -> Result<Vec<f32>> {
        let block = self.dequantize_block.ok_or_else(|| {
            Error::InvalidInput(format!(
                "type {} cannot be dequantized (supported: {})",
                self.name,
                supported_names()
            ))
        })?;
        if !bytes.len().is_multiple_of(self.block_bytes) {
            return Err(Error::InvalidInput(format!(
                "{} bytes are not a whole number of {} blocks ({} bytes each)",
                bytes.len(),
                self.name,
                self.block_bytes
            )));
        }
        let values = bytes.len() / self.block_bytes * self.block_values;
        let mut out = Vec::new();
        out.try_reserve_exact(values).map_err(|_| {
            Error::InvalidInput(format!(
                "cannot allocate {values} f32 values for a {} tensor",
                self.name
            ))
        })?;
        out.resize(values, 0.0);
        // Chunks of blocks in parallel: an embedding holds hundreds of millions of values.
        const BLOCKS_PER_TASK: usize = 4096;
        bytes
            .par_chunks(self.block_bytes * BLOCKS_PER_TASK)
            .zip(out.par_chunks_mut(self.block_values * BLOCKS_PER_TASK))
            .for_each(|(src, dst)| block(src, dst));
        Ok(out)
    }
}

impl Format {
    /// Quantizes whole blocks of f32 values to this format's bytes, blocks in parallel. Values
    /// must be finite and within f16's range (every format here keeps f16 scales); `values` must
    /// be a whole number of blocks.
    pub fn quantize(&self, values: &[f32]) -> Result<Vec<u8>> {
        let block = self.quantize_block.ok_or_else(|| {
            Error::InvalidInput(format!(
                "cannot quantize to {} (supported: {})",
                self.name,
                quantizable_names()
            ))
        })?;
        let Some(len) = self.bytes_for(values.len()) else {
            return Err(Error::InvalidInput(format!(
                "{} values are not a whole number of {} blocks ({} values each)",
                values.len(),
                self.name,
                self.block_values
            )));
        };
        if let Some(i) = values
            .iter()
            .position(|v| !v.is_finite() || v.abs() > MAX_ABS)
        {
            return Err(Error::InvalidInput(format!(
                "cannot quantize value {i} ({}) to {}: values must be finite and within +-{MAX_ABS}",
                values[i], self.name
            )));
        }
        let mut out = Vec::new();
        out.try_reserve_exact(len).map_err(|_| {
            Error::InvalidInput(format!(
                "cannot allocate {len} bytes for a {} tensor",
                self.name
            ))
        })?;
        out.resize(len, 0);
        // Quantizing searches scales: far slower than dequantizing, so smaller tasks.
        const BLOCKS_PER_TASK: usize = 256;
        values
            .par_chunks(self.block_values * BLOCKS_PER_TASK)
            .zip(out.par_chunks_mut(self.block_bytes * BLOCKS_PER_TASK))
            .for_each(|(src, dst)| {
                let blocks = src.chunks_exact(self.block_values);
                for (x, o) in blocks.zip(dst.chunks_exact_mut(self.block_bytes)) {
                    block(x, o);
                }
            });
        Ok(out)
    }
}

/// The f16 stored little-endian at `b[i..i + 2]`, as f32.
#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// An f16 as f32, exactly, without branches: the exponent and mantissa bits moved into an f32
/// and scaled by 2^112 (the difference of the exponent biases), which is exact for normal and
/// subnormal values alike; infinities and NaNs get the f32's all-ones exponent. Block scales
/// are read for every block of every product, where a library call per scale showed up.
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let rest = u32::from(h & 0x7fff);
    let finite = f32::from_bits(rest << 13) * f32::from_bits(0x7780_0000);
    // A NaN comes back quiet, as the half crate makes it.
    let quiet = if rest > 0x7c00 {
        0x7fc0_0000
    } else {
        0x7f80_0000
    };
    let special = f32::from_bits(quiet | (rest & 0x3ff) << 13);
    let magnitude = if rest >= 0x7c00 { special } else { finite };
    f32::from_bits(magnitude.to_bits() | sign)
}

/// The non-linear 4-bit codebook of IQ4_NL and IQ4_XS (ggml's `kvalues_iq4nl`).
const IQ4_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

#[cfg(test)]
mod tests {
    #[test]
    fn f16_to_f32_matches_the_half_crate_for_every_bit_pattern() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = super::f16_to_f32(h);
            assert_eq!(got.to_bits(), want.to_bits(), "f16 bits {h:#06x}");
        }
    }
}
