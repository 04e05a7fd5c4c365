//! Dequantization of every readable GGML format, bit-exact against the `gguf` Python package
//! (llama.cpp's gguf-py, whose numpy dequantizers follow ggml's reference ones).
//!
//! The vectors in tests/fixtures/quant/vectors.safetensors were made by
//! tests/fixtures/make_quant_vectors.py (gguf 0.19.0, numpy 2.4): for F16, BF16, Q4_0, Q4_1,
//! Q5_0, Q5_1 and Q8_0, seeded normal floats quantized by the package; for Q2_K, Q3_K, Q4_K,
//! Q5_K, Q6_K, IQ4_NL and IQ4_XS, seeded random block bytes with finite random f16 scales; for
//! F32, random finite bit patterns. The expected values are the package's dequantization of
//! those bytes. Per type NAME the file holds `NAME.raw` (u8, one row per block) and
//! `NAME.expected` (f32, one row per block); its metadata maps NAME to the ggml type id.

use std::collections::HashMap;

use keyformer::model::quant::{self, FORMATS};
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

const VECTORS: &[u8] = include_bytes!("fixtures/quant/vectors.safetensors");

/// Name -> (type id, raw blocks, expected values, (blocks, bytes per block, values per block)).
struct Vectors {
    id: u32,
    raw: Vec<u8>,
    expected: Vec<f32>,
    blocks: usize,
    block_bytes: usize,
    block_values: usize,
}

fn load_vectors() -> HashMap<String, Vectors> {
    let (_, header) = SafeTensors::read_metadata(VECTORS).unwrap();
    let st = SafeTensors::deserialize(VECTORS).unwrap();
    let ids = header
        .metadata()
        .as_ref()
        .expect("metadata maps names to ids");
    ids.iter()
        .map(|(name, id)| {
            let raw = st.tensor(&format!("{name}.raw")).unwrap();
            let expected = st.tensor(&format!("{name}.expected")).unwrap();
            assert_eq!((raw.dtype(), expected.dtype()), (Dtype::U8, Dtype::F32));
            assert_eq!(raw.shape()[0], expected.shape()[0], "{name}: block counts");
            let values = expected
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let v = Vectors {
                id: id.parse().unwrap(),
                raw: raw.data().to_vec(),
                expected: values,
                blocks: raw.shape()[0],
                block_bytes: raw.shape()[1],
                block_values: expected.shape()[1],
            };
            (name.clone(), v)
        })
        .collect()
}

#[test]
fn every_readable_format_dequantizes_bit_exactly_like_gguf_py() {
    let vectors = load_vectors();
    let mut checked = Vec::new();
    for format in FORMATS.iter().filter(|f| f.can_dequantize()) {
        let v = vectors
            .get(format.name)
            .unwrap_or_else(|| panic!("no test vectors for {}", format.name));
        assert_eq!(v.id, format.id, "{}: type id", format.name);
        assert_eq!(
            (v.block_bytes, v.block_values),
            (format.block_bytes, format.block_values),
            "{}: block size (bytes, values) differs from gguf-py's",
            format.name
        );
        let got = format.dequantize(&v.raw).unwrap();
        assert_eq!(got.len(), v.blocks * v.block_values, "{}", format.name);
        for (i, (g, e)) in got.iter().zip(&v.expected).enumerate() {
            assert_eq!(
                g.to_bits(),
                e.to_bits(),
                "{} value {i} (block {}): got {g}, gguf-py gives {e}",
                format.name,
                i / format.block_values
            );
        }
        checked.push(format.name);
    }
    println!("bit-exact: {}", checked.join(", "));
    let unchecked: Vec<&String> = vectors
        .keys()
        .filter(|n| !checked.contains(&n.as_str()))
        .collect();
    assert!(
        unchecked.is_empty(),
        "vectors for unread types: {unchecked:?}"
    );
}

#[test]
fn partial_blocks_and_unreadable_types_are_errors() {
    let q4_k = quant::by_id(12).unwrap();
    assert_eq!(q4_k.name, "Q4_K");
    let err = q4_k.dequantize(&[0; 145]).unwrap_err().to_string();
    assert!(
        err.contains("145 bytes are not a whole number of Q4_K blocks"),
        "{err}"
    );
    assert_eq!(q4_k.dequantize(&[]).unwrap(), Vec::<f32>::new());

    let iq2 = quant::by_id(16).unwrap();
    let err = iq2.dequantize(&[0; 66]).unwrap_err().to_string();
    assert!(err.contains("IQ2_XXS cannot be dequantized"), "{err}");
    assert_eq!(quant::type_name(16), "IQ2_XXS");
    assert_eq!(quant::type_name(4), "ggml type 4");
    assert!(quant::by_id(4).is_none());
}

#[test]
fn bytes_for_counts_whole_blocks() {
    let q6_k = quant::by_id(14).unwrap();
    assert_eq!(q6_k.bytes_for(512), Some(420));
    assert_eq!(q6_k.bytes_for(100), None);
    let f32_format = quant::by_id(0).unwrap();
    assert_eq!(f32_format.bytes_for(3), Some(12));
    assert_eq!(f32_format.bytes_for(usize::MAX / 2), None, "overflow");
}
