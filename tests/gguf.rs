//! GGUF reader and tokenizer tests: synthetic files built by a tiny writer below, hostile inputs,
//! and (when present) the real SmolLM2 file.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use half::{bf16, f16};
use keyformer::error::Error;
use keyformer::model::gguf::{GgufFile, GgufValue};
use keyformer::model::tokenizer::TextTokenizer;

// ---- a minimal GGUF v3 writer -------------------------------------------------------------------

struct Tensor {
    name: &'static str,
    /// ggml order, innermost first.
    ne: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
}

fn type_id(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::Str(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.extend(x.to_le_bytes()),
        GgufValue::I8(x) => out.extend(x.to_le_bytes()),
        GgufValue::U16(x) => out.extend(x.to_le_bytes()),
        GgufValue::I16(x) => out.extend(x.to_le_bytes()),
        GgufValue::U32(x) => out.extend(x.to_le_bytes()),
        GgufValue::I32(x) => out.extend(x.to_le_bytes()),
        GgufValue::F32(x) => out.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::Str(s) => put_str(out, s),
        GgufValue::Array(items) => {
            out.extend(items.first().map_or(0, type_id).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| put_value(out, item));
        }
        GgufValue::U64(x) => out.extend(x.to_le_bytes()),
        GgufValue::I64(x) => out.extend(x.to_le_bytes()),
        GgufValue::F64(x) => out.extend(x.to_le_bytes()),
    }
}

fn pad_to_32(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(32), 0);
}

/// A GGUF v3 file with default (32-byte) alignment and no padding after the last tensor.
fn build(kvs: &[(&str, GgufValue)], tensors: &[Tensor]) -> Vec<u8> {
    build_without_info(kvs, tensors, None)
}

/// `build`, but the tensor named `skip` (if any) has its data laid out and no tensor info: a
/// tensor missing from the table.
fn build_without_info(
    kvs: &[(&str, GgufValue)],
    tensors: &[Tensor],
    skip: Option<&str>,
) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    let listed = tensors.iter().filter(|t| Some(t.name) != skip).count();
    out.extend((listed as u64).to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (key, value) in kvs {
        put_str(&mut out, key);
        out.extend(type_id(value).to_le_bytes());
        put_value(&mut out, value);
    }
    let mut offset = 0u64;
    for t in tensors {
        if Some(t.name) == skip {
            offset = (offset + t.data.len() as u64).next_multiple_of(32);
            continue;
        }
        put_str(&mut out, t.name);
        out.extend((t.ne.len() as u32).to_le_bytes());
        t.ne.iter().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(t.ggml_type.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset = (offset + t.data.len() as u64).next_multiple_of(32);
    }
    for t in tensors {
        pad_to_32(&mut out);
        out.extend(&t.data);
    }
    out
}

fn write_temp(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("keyformer-{}-{name}.gguf", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn open_bytes(name: &str, bytes: &[u8]) -> Result<GgufFile, Error> {
    let path = write_temp(name, bytes);
    let result = GgufFile::open(&path);
    std::fs::remove_file(&path).unwrap();
    result
}

#[track_caller]
fn assert_malformed(result: Result<GgufFile, Error>, needle: &str) {
    match result {
        Err(Error::Malformed {
            format: "GGUF",
            reason,
            ..
        }) => {
            assert!(
                reason.contains(needle),
                "reason {reason:?} lacks {needle:?}"
            )
        }
        Err(e) => panic!("expected Malformed containing {needle:?}, got {e}"),
        Ok(_) => panic!("expected Malformed containing {needle:?}, got a file"),
    }
}

fn f32_tensor(name: &'static str, ne: Vec<u64>, values: &[f32]) -> Tensor {
    let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor {
        name,
        ne,
        ggml_type: 0,
        data,
    }
}

// ---- metadata and tensors -----------------------------------------------------------------------

#[test]
fn metadata_of_every_type_round_trips() {
    use GgufValue::*;
    let kvs = [
        ("general.architecture", Str("llama".into())),
        ("u8", U8(200)),
        ("i8", I8(-100)),
        ("u16", U16(60000)),
        ("i16", I16(-30000)),
        ("u32", U32(4_000_000_000)),
        ("i32", I32(-2_000_000_000)),
        ("f32", F32(1.5)),
        ("bool", Bool(true)),
        ("str", Str("héllo\nwörld".into())),
        ("u64", U64(u64::MAX)),
        ("i64", I64(i64::MIN)),
        ("f64", F64(-2.25e300)),
        (
            "strings",
            Array(vec![Str("a".into()), Str("".into()), Str("ccc".into())]),
        ),
        ("ints", Array(vec![I32(1), I32(-2), I32(3)])),
        ("empty", Array(vec![])),
        (
            "nested",
            Array(vec![Array(vec![U16(1), U16(2)]), Array(vec![U16(3)])]),
        ),
    ];
    let g = open_bytes("meta", &build(&kvs, &[])).unwrap();
    for (key, value) in &kvs {
        assert_eq!(g.get(key), Some(value), "{key}");
    }
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.get("missing"), None);

    assert_eq!(g.get("u8").unwrap().as_u64(), Some(200));
    assert_eq!(g.get("u32").unwrap().as_u64(), Some(4_000_000_000));
    assert_eq!(g.get("i8").unwrap().as_u64(), None, "negative");
    assert_eq!(g.get("i16").unwrap().as_f64(), Some(-30000.0));
    assert_eq!(g.get("f32").unwrap().as_f64(), Some(1.5));
    assert_eq!(g.get("u64").unwrap().as_f64(), Some(u64::MAX as f64));
    assert_eq!(g.get("bool").unwrap().as_bool(), Some(true));
    assert_eq!(g.get("str").unwrap().as_str(), Some("héllo\nwörld"));
    assert_eq!(g.get("strings").unwrap().as_array().unwrap().len(), 3);
    assert_eq!(g.get("str").unwrap().as_u64(), None);
}

#[test]
fn missing_architecture_is_an_error() {
    let g = open_bytes("noarch", &build(&[], &[])).unwrap();
    assert!(g.architecture().is_err());
}

#[test]
fn float_tensors_read_row_major() {
    let values = [0.0, 1.0, -2.5, 3.25, 1e-3, -7.0];
    let halves: Vec<u8> = values
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect();
    let bhalves: Vec<u8> = values
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect();
    let tensors = [
        f32_tensor("f32", vec![3, 2], &values),
        Tensor {
            name: "f16",
            ne: vec![6],
            ggml_type: 1,
            data: halves,
        },
        Tensor {
            name: "bf16",
            ne: vec![2, 3],
            ggml_type: 30,
            data: bhalves,
        },
    ];
    let g = open_bytes("floats", &build(&[], &tensors)).unwrap();
    assert_eq!(g.tensor_shape("f32").unwrap(), [2, 3]);
    assert_eq!(g.tensor_shape("bf16").unwrap(), [3, 2]);
    assert_eq!(g.tensor_f32("f32").unwrap(), values);
    let f16_expect: Vec<f32> = values.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    assert_eq!(g.tensor_f32("f16").unwrap(), f16_expect);
    let bf16_expect: Vec<f32> = values.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    assert_eq!(g.tensor_f32("bf16").unwrap(), bf16_expect);
    assert!(g.has_tensor("f16") && !g.has_tensor("nope"));
    assert!(matches!(g.tensor_f32("nope"), Err(Error::MissingTensor(n)) if n == "nope"));
    assert!(matches!(
        g.tensor_shape("nope"),
        Err(Error::MissingTensor(_))
    ));
}

/// Quantized blocks written by hand from known scales and quants; expected values by formula.
#[test]
fn quantized_tensors_dequantize() {
    let (d0, d1, m) = (0.5f32, -0.375f32, 1.25f32); // exact in f16
    let q8: Vec<i8> = (0..64).map(|i| (i * 37 % 256 - 128) as i8).collect();
    let q4: Vec<u8> = (0..32).map(|i| (i * 7 % 16) as u8).collect();

    let mut q8_data = Vec::new();
    for (block, d) in q8.chunks(32).zip([d0, d1]) {
        q8_data.extend(f16::from_f32(d).to_le_bytes());
        q8_data.extend(block.iter().map(|&q| q as u8));
    }
    // Byte j holds element j in its low nibble and element j + 16 in its high nibble.
    let packed: Vec<u8> = (0..16).map(|j| q4[j] | (q4[j + 16] << 4)).collect();
    let mut q4_0_data = f16::from_f32(d1).to_le_bytes().to_vec();
    q4_0_data.extend(&packed);
    let mut q4_1_data = f16::from_f32(d0).to_le_bytes().to_vec();
    q4_1_data.extend(f16::from_f32(m).to_le_bytes());
    q4_1_data.extend(&packed);

    let tensors = [
        Tensor {
            name: "q8",
            ne: vec![32, 2],
            ggml_type: 8,
            data: q8_data,
        },
        Tensor {
            name: "q4_0",
            ne: vec![32],
            ggml_type: 2,
            data: q4_0_data,
        },
        Tensor {
            name: "q4_1",
            ne: vec![32],
            ggml_type: 3,
            data: q4_1_data,
        },
    ];
    let g = open_bytes("quant", &build(&[], &tensors)).unwrap();

    assert_eq!(g.tensor_shape("q8").unwrap(), [2, 32]);
    let q8_expect: Vec<f32> = q8
        .iter()
        .enumerate()
        .map(|(i, &q)| if i < 32 { d0 } else { d1 } * f32::from(q))
        .collect();
    assert_eq!(g.tensor_f32("q8").unwrap(), q8_expect);
    let q4_0_expect: Vec<f32> = q4.iter().map(|&q| d1 * (f32::from(q) - 8.0)).collect();
    assert_eq!(g.tensor_f32("q4_0").unwrap(), q4_0_expect);
    let q4_1_expect: Vec<f32> = q4.iter().map(|&q| d0 * f32::from(q) + m).collect();
    assert_eq!(g.tensor_f32("q4_1").unwrap(), q4_1_expect);
}

#[test]
fn custom_alignment_is_honoured() {
    // With general.alignment = 64 the data section starts at the next multiple of 64.
    let kvs = [("general.alignment", GgufValue::U32(64))];
    let mut bytes = build(&kvs, &[f32_tensor("t", vec![2], &[1.0, 2.0])]);
    let data = bytes.split_off(bytes.len() - 8);
    bytes.resize(bytes.len().next_multiple_of(64), 0);
    bytes.extend(data);
    let g = open_bytes("align64", &bytes).unwrap();
    assert_eq!(g.tensor_f32("t").unwrap(), [1.0, 2.0]);
}

// ---- hostile input ------------------------------------------------------------------------------

/// Header bytes up to (not including) the metadata.
fn header(tensor_count: u64, kv_count: u64) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(tensor_count.to_le_bytes());
    out.extend(kv_count.to_le_bytes());
    out
}

#[test]
fn missing_file_is_not_found() {
    let path = Path::new("/definitely/not/here.gguf");
    assert!(matches!(GgufFile::open(path), Err(Error::NotFound(p)) if p == path));
}

#[test]
fn empty_file_and_bad_magic_are_malformed() {
    assert_malformed(open_bytes("empty", b""), "empty");
    let mut bytes = build(&[], &[]);
    bytes[..4].copy_from_slice(b"GGML");
    assert_malformed(open_bytes("magic", &bytes), "magic");
}

#[test]
fn version_2_is_unsupported() {
    let mut bytes = build(&[], &[]);
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    match open_bytes("v2", &bytes) {
        Err(Error::Unsupported { what, .. }) => assert_eq!(what, "GGUF version 2"),
        other => panic!("expected Unsupported, got {:?}", other.err()),
    }
}

#[test]
fn every_truncation_is_malformed() {
    let kvs = [
        ("general.architecture", GgufValue::Str("llama".into())),
        (
            "list",
            GgufValue::Array(vec![GgufValue::U32(1), GgufValue::U32(2)]),
        ),
    ];
    let tensors = [
        f32_tensor("a", vec![4], &[1.0; 4]),
        f32_tensor("b", vec![3], &[2.0; 3]),
    ];
    let bytes = build(&kvs, &tensors);
    assert!(open_bytes("whole", &bytes).is_ok());
    let path = write_temp("cut", &[]);
    for cut in 0..bytes.len() {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let result = GgufFile::open(&path);
        assert!(
            matches!(result, Err(Error::Malformed { .. })),
            "cut at {cut}: {:?}",
            result.map(|_| ())
        );
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn oversized_lengths_are_malformed() {
    // A key claiming 2^40 bytes, and one claiming u64::MAX (would overflow a naive bound).
    for len in [1u64 << 40, u64::MAX] {
        let mut bytes = header(0, 1);
        bytes.extend(len.to_le_bytes());
        bytes.extend(b"key");
        assert_malformed(open_bytes("keylen", &bytes), "exceeds");
    }
    // A string value claiming more bytes than the file has.
    let mut bytes = header(0, 1);
    put_str(&mut bytes, "k");
    bytes.extend(8u32.to_le_bytes());
    bytes.extend(1000u64.to_le_bytes());
    bytes.extend(b"short");
    assert_malformed(open_bytes("strlen", &bytes), "exceeds");
    // An array of u64 claiming far more items than bytes remain.
    let mut bytes = header(0, 1);
    put_str(&mut bytes, "k");
    bytes.extend(9u32.to_le_bytes());
    bytes.extend(10u32.to_le_bytes());
    bytes.extend((u64::MAX / 2).to_le_bytes());
    assert_malformed(open_bytes("arrlen", &bytes), "exceeds");
}

#[test]
fn deeply_nested_arrays_are_malformed() {
    let mut bytes = header(0, 1);
    put_str(&mut bytes, "k");
    bytes.extend(9u32.to_le_bytes());
    for _ in 0..10_000 {
        bytes.extend(9u32.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
    }
    assert_malformed(open_bytes("nested", &bytes), "nested");
}

#[test]
fn bad_metadata_values_are_malformed() {
    let mut bytes = header(0, 1);
    put_str(&mut bytes, "k");
    bytes.extend(99u32.to_le_bytes());
    assert_malformed(open_bytes("valtype", &bytes), "type 99");

    let mut bytes = header(0, 1);
    put_str(&mut bytes, "k");
    bytes.extend(7u32.to_le_bytes());
    bytes.push(2);
    assert_malformed(open_bytes("bool", &bytes), "bool");

    let kvs = [("general.alignment", GgufValue::U32(3))];
    assert_malformed(open_bytes("align3", &build(&kvs, &[])), "alignment");

    let kvs = [("k", GgufValue::U8(1)), ("k", GgufValue::U8(2))];
    assert_malformed(open_bytes("dupkey", &build(&kvs, &[])), "duplicate");
}

#[test]
fn bad_tensor_infos_are_malformed() {
    let t = |ne: Vec<u64>, ggml_type: u32| Tensor {
        name: "w",
        ne,
        ggml_type,
        data: vec![0; 8],
    };
    assert_malformed(
        open_bytes("ndims", &build(&[], &[t(vec![1; 1000], 0)])),
        "1000 dimensions",
    );
    assert_malformed(
        open_bytes("ndims0", &build(&[], &[t(vec![], 0)])),
        "0 dimensions",
    );
    assert_malformed(
        open_bytes("overflow", &build(&[], &[t(vec![u64::MAX / 2, 4], 0)])),
        "overflows",
    );
    assert_malformed(
        open_bytes("rowlen", &build(&[], &[t(vec![16], 8)])),
        "multiple of the block size",
    );
    let dup = [t(vec![2], 0), t(vec![2], 0)];
    assert_malformed(
        open_bytes("duptensor", &build(&[], &dup)),
        "duplicate tensor 'w'",
    );
}

/// One tensor described by hand, so its offset can be anything.
fn raw_tensor_file(name: &str, ne: u64, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut bytes = header(1, 0);
    put_str(&mut bytes, name);
    bytes.extend(1u32.to_le_bytes());
    bytes.extend(ne.to_le_bytes());
    bytes.extend(0u32.to_le_bytes()); // F32
    bytes.extend(offset.to_le_bytes());
    pad_to_32(&mut bytes);
    bytes.extend(data);
    bytes
}

#[test]
fn tensor_data_out_of_bounds_is_malformed() {
    // Claims 1000 f32 values but carries 2.
    let bytes = raw_tensor_file("big", 1000, 0, &[0; 8]);
    assert_malformed(open_bytes("oob", &bytes), "tensor 'big' data lies outside");
    // An offset past the end of the file, and one where offset + size overflows.
    for offset in [1 << 20, u64::MAX - 31] {
        let bytes = raw_tensor_file("far", 2, offset, &[0; 8]);
        assert_malformed(open_bytes("far", &bytes), "tensor 'far' data lies outside");
    }
    let bytes = raw_tensor_file("odd", 2, 4, &[0; 12]);
    assert_malformed(
        open_bytes("misaligned", &bytes),
        "tensor 'odd' offset 4 is not 32-aligned",
    );
}

#[test]
fn unsupported_tensor_type_names_tensor_and_type() {
    // IQ2_XXS (16, 66 bytes per 256 values) cannot be dequantized; the file still opens and
    // reports the shape.
    let t = Tensor {
        name: "blk.0.ffn_up.weight",
        ne: vec![256, 2],
        ggml_type: 16,
        data: vec![0; 132],
    };
    let g = open_bytes("q5k", &build(&[], &[t])).unwrap();
    assert_eq!(g.tensor_shape("blk.0.ffn_up.weight").unwrap(), [2, 256]);
    match g.tensor_f32("blk.0.ffn_up.weight") {
        Err(Error::Unsupported { what, .. }) => {
            assert!(
                what.contains("type IQ2_XXS of tensor 'blk.0.ffn_up.weight'")
                    && what.contains("supported: F32, F16, BF16, Q4_0"),
                "{what}"
            )
        }
        other => panic!("expected Unsupported, got {:?}", other.err()),
    }
    let t = Tensor {
        name: "x",
        ne: vec![4],
        ggml_type: 200,
        data: vec![],
    };
    let g = open_bytes("type200", &build(&[], &[t])).unwrap();
    let err = g.tensor_f32("x").unwrap_err().to_string();
    assert!(err.contains("ggml type 200"), "{err}");
}

#[test]
fn metadata_count_too_small_is_named() {
    // The header says 0 metadata entries although one follows: its bytes sit where the tensor
    // table should begin, and would read as a tensor 'general.architecture' of 8 dimensions.
    let kvs = [("general.architecture", GgufValue::Str("llama".into()))];
    let mut bytes = build(&kvs, &[f32_tensor("t", vec![2], &[1.0, 2.0])]);
    bytes[16..24].copy_from_slice(&0u64.to_le_bytes());
    assert_malformed(
        open_bytes("kv0", &bytes),
        "the header counts 0 metadata entries, but another one ('general.architecture', a \
         string value) follows them where tensor info 1 of 1 should begin: the header's \
         metadata count is wrong",
    );
    // Truly no metadata is fine: the tensors read, and only the architecture is missing.
    let g = open_bytes(
        "nokv",
        &build(&[], &[f32_tensor("t", vec![2], &[1.0, 2.0])]),
    )
    .unwrap();
    assert_eq!(g.tensor_f32("t").unwrap(), [1.0, 2.0]);
    let err = g.architecture().unwrap_err().to_string();
    assert!(
        err.contains("missing string key 'general.architecture'"),
        "{err}"
    );
}

#[test]
fn tensor_missing_from_table_is_named_not_blamed_on_a_neighbour() {
    let tensors = [
        f32_tensor("a", vec![8], &[1.0; 8]),
        f32_tensor("b", vec![8], &[2.0; 8]),
        f32_tensor("c", vec![4], &[3.0; 4]),
    ];
    assert!(open_bytes("abc", &build(&[], &tensors)).is_ok());
    let missing = "a tensor is missing from the tensor table, or an offset is wrong";
    let bytes = build_without_info(&[], &tensors, Some("b"));
    assert_malformed(
        open_bytes("no-b", &bytes),
        &format!(
            "bytes 32..64 of the data section belong to no tensor (between tensor 'a' and \
             tensor 'c'): {missing}"
        ),
    );
    let bytes = build_without_info(&[], &tensors, Some("a"));
    assert_malformed(
        open_bytes("no-a", &bytes),
        "bytes 0..32 of the data section belong to no tensor (before the first tensor)",
    );
    let bytes = build_without_info(&[], &tensors, Some("c"));
    assert_malformed(
        open_bytes("no-c", &bytes),
        "after tensor 'b', the last one, belong to no tensor: a tensor is missing",
    );
    // The header promising one tensor more than the table holds: the error says which entry.
    let mut bytes = build(&[], &tensors);
    bytes[8..16].copy_from_slice(&4u64.to_le_bytes());
    assert_malformed(open_bytes("count4", &bytes), "tensor info 4 of 4: ");
}

#[test]
fn overlapping_tensor_data_is_malformed() {
    let mut bytes = header(2, 0);
    for name in ["x", "y"] {
        put_str(&mut bytes, name);
        bytes.extend(1u32.to_le_bytes());
        bytes.extend(16u64.to_le_bytes());
        bytes.extend(0u32.to_le_bytes()); // F32
        bytes.extend(0u64.to_le_bytes()); // both at offset 0
    }
    pad_to_32(&mut bytes);
    bytes.extend([0; 64]);
    assert_malformed(open_bytes("overlap", &bytes), "overlaps the data of tensor");
}

#[test]
fn absurd_header_counts_fail_before_allocating() {
    // A 480-byte file claiming 2^40 tensors, or u64::MAX metadata entries.
    for (tensors, kvs, what) in [
        (
            1u64 << 40,
            0,
            "tensor count 1099511627776 exceeds what the 464 bytes",
        ),
        (
            0,
            u64::MAX,
            "metadata count 18446744073709551615 exceeds what the 456 bytes",
        ),
    ] {
        let mut bytes = header(tensors, kvs);
        bytes.resize(480, 0);
        let started = std::time::Instant::now();
        assert_malformed(
            open_bytes("counts", &bytes),
            &format!("{what} left in the file can hold"),
        );
        assert!(started.elapsed().as_secs() < 1);
    }
}

#[test]
fn metadata_arrays_are_capped_in_all() {
    // 2^24 + 1 one-byte items would take 32 times their bytes as values: refused.
    let n = (1usize << 24) + 1;
    let mut bytes = header(0, 1);
    put_str(&mut bytes, "k");
    bytes.extend(9u32.to_le_bytes());
    bytes.extend(0u32.to_le_bytes()); // u8 items
    bytes.extend((n as u64).to_le_bytes());
    bytes.resize(bytes.len() + n, 7);
    assert_malformed(
        open_bytes("bigarray", &bytes),
        "metadata arrays hold more than 16777216 items in all",
    );
}

#[test]
fn unreadable_type_data_is_still_bounds_checked() {
    // IQ2_XXS blocks are 66 bytes: 512 values need 132 bytes, the file carries 66.
    let t = Tensor {
        name: "q",
        ne: vec![512],
        ggml_type: 16,
        data: vec![0; 66],
    };
    assert_malformed(
        open_bytes("iq2short", &build(&[], &[t])),
        "tensor 'q' data lies outside the file",
    );
}

// ---- tokenizer from synthetic GGUF metadata ----------------------------------------------------

/// GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest for U+0100 onwards.
fn byte_level_alphabet() -> Vec<String> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                char::from(b).to_string()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap().to_string()
            }
        })
        .collect()
}

fn tiny_tokenizer(model: &str, pre: Option<&str>) -> Result<TextTokenizer, Error> {
    use GgufValue::{Array, I32, Str, U32};
    let mut tokens = byte_level_alphabet();
    // " hi" is stored with a real space: the reader must respell it "Ġhi" to match the merges.
    tokens.extend(["12", "123", "1234", "Ġh", " hi", "<|ctl|>"].map(String::from));
    let types: Vec<GgufValue> = (0..tokens.len())
        .map(|i| I32(if i == tokens.len() - 1 { 3 } else { 1 }))
        .collect();
    let merges = ["1 2", "12 3", "Ġ h", "Ġh i", "123 4"];
    let mut kvs = vec![
        ("tokenizer.ggml.model", Str(model.into())),
        (
            "tokenizer.ggml.tokens",
            Array(tokens.into_iter().map(Str).collect()),
        ),
        ("tokenizer.ggml.token_type", Array(types)),
        (
            "tokenizer.ggml.merges",
            Array(merges.map(|m| Str(m.into())).to_vec()),
        ),
        ("tokenizer.ggml.eos_token_id", U32(261)),
    ];
    if let Some(pre) = pre {
        kvs.push(("tokenizer.ggml.pre", Str(pre.into())));
    }
    let g = open_bytes(&format!("tok-{model}-{pre:?}"), &build(&kvs, &[])).unwrap();
    TextTokenizer::from_gguf(&g)
}

#[test]
fn gguf_tokenizer_follows_pre_type_and_control_tokens() {
    // Ids 0..256 are the bytes in order, then the extra tokens.
    let (t12, t123, t1234, t_hi, ctl) = (256, 257, 258, 260, 261);
    let tok = tiny_tokenizer("gpt2", None).unwrap();
    assert_eq!(tok.vocab_size(), 262);
    assert_eq!(
        (tok.bos, tok.eos.as_slice(), tok.add_bos),
        (None, &[261][..], false)
    );
    // The GPT-2 regex keeps "1234" whole, so BPE merges it to one token.
    assert_eq!(tok.encode("1234").unwrap(), [t1234]);
    assert_eq!(tok.encode(" hi").unwrap(), [t_hi]);
    assert_eq!(tok.encode("<|ctl|>12").unwrap(), [ctl, t12]);
    assert_eq!(tok.decode(&[t_hi, ctl, t123]).unwrap(), " hi<|ctl|>123");
    // "llama-bpe" splits digits in runs of at most three before BPE.
    let tok = tiny_tokenizer("gpt2", Some("llama-bpe")).unwrap();
    assert_eq!(tok.encode("1234").unwrap(), [t123, u32::from(b'4')]);
    // "smollm" (like "starcoder") splits every digit off before GPT-2's regex.
    let tok = tiny_tokenizer("gpt2", Some("smollm")).unwrap();
    assert_eq!(
        tok.encode("1234").unwrap(),
        "1234".bytes().map(u32::from).collect::<Vec<_>>()
    );
    // An unknown pre-tokenizer name keeps the GPT-2 regex.
    let tok = tiny_tokenizer("gpt2", Some("no-such-pre")).unwrap();
    assert_eq!(tok.encode("1234").unwrap(), [t1234]);

    match tiny_tokenizer("t5", None) {
        Err(Error::Unsupported { what, .. }) => assert!(what.contains("\"t5\""), "{what}"),
        other => panic!("expected Unsupported, got {:?}", other.err()),
    }
}

// ---- the real SmolLM2 file ----------------------------------------------------------------------

const SMOLLM: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

/// The SmolLM2 file and its tokenizer, loaded once; `None` (after a SKIP message) when absent.
fn smollm() -> Option<&'static (GgufFile, TextTokenizer)> {
    static LOADED: OnceLock<Option<(GgufFile, TextTokenizer)>> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| {
        if !Path::new(SMOLLM).exists() {
            return None;
        }
        let g = GgufFile::open(Path::new(SMOLLM)).unwrap();
        let tok = TextTokenizer::from_gguf(&g).unwrap();
        Some((g, tok))
    });
    if loaded.is_none() {
        println!("SKIP: {SMOLLM} not found");
    }
    loaded.as_ref()
}

#[test]
fn smollm_metadata_and_shapes() {
    let Some((g, _)) = smollm() else { return };
    assert_eq!(g.architecture().unwrap(), "llama");
    let u = |k: &str| g.get(k).and_then(GgufValue::as_u64);
    assert_eq!(u("llama.block_count"), Some(30));
    assert_eq!(u("llama.embedding_length"), Some(576));
    assert_eq!(u("llama.attention.head_count"), Some(9));
    assert_eq!(u("llama.attention.head_count_kv"), Some(3));
    assert_eq!(u("tokenizer.ggml.bos_token_id"), Some(1));
    assert_eq!(u("tokenizer.ggml.eos_token_id"), Some(2));
    let eps = g
        .get("llama.attention.layer_norm_rms_epsilon")
        .unwrap()
        .as_f64()
        .unwrap();
    assert!((eps - 1e-5).abs() < 1e-12);
    assert_eq!(
        g.get("tokenizer.ggml.model").unwrap().as_str(),
        Some("gpt2")
    );
    assert_eq!(
        g.get("tokenizer.ggml.tokens")
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        49152
    );
    assert_eq!(
        g.get("tokenizer.ggml.add_bos_token").unwrap().as_bool(),
        Some(false)
    );
    assert_eq!(g.tensor_shape("token_embd.weight").unwrap(), [49152, 576]);
    assert_eq!(g.tensor_shape("blk.0.attn_k.weight").unwrap(), [192, 576]);
    assert_eq!(g.tensor_shape("blk.0.attn_norm.weight").unwrap(), [576]);
}

/// Expected values from python:
/// `gguf.dequantize(t.data, t.tensor_type)` on `GGUFReader(path).tensors`, printed with
/// `np.format_float_positional(v, unique=True)` (shortest f32 round-trip).
#[test]
fn smollm_tensors_match_python_gguf() {
    let Some((g, _)) = smollm() else { return };
    let embd = g.tensor_f32("token_embd.weight").unwrap(); // Q8_0
    assert_eq!(embd.len(), 49152 * 576);
    let first = [
        -0.106544495,
        0.032978058,
        0.0481987,
        -0.022830963,
        -0.06849289,
        -0.045661926,
        0.02029419,
        -0.12176514,
    ];
    assert_eq!(embd[..8], first);
    assert_eq!(
        embd[576..580],
        [-0.023803711, -0.01586914, -0.03967285, 0.01586914]
    );
    assert_eq!(embd[embd.len() - 3..], [0.128582, -0.11989403, -0.04170227]);

    let k = g.tensor_f32("blk.0.attn_k.weight").unwrap(); // Q4_1
    let first = [
        -0.15527344,
        0.34020996,
        -0.4855957,
        -0.32043457,
        0.009887695,
        0.17504883,
        0.17504883,
        0.5053711,
    ];
    assert_eq!(k[..8], first);
    assert_eq!(
        k[576..580],
        [0.056640625, 0.056640625, -0.12695312, 0.1484375]
    );
    assert_eq!(k[k.len() - 3..], [-0.25073242, 0.18811035, 0.36364746]);

    let norm = g.tensor_f32("blk.0.attn_norm.weight").unwrap(); // F32
    assert_eq!(
        norm[..4],
        [0.013977051, 0.023803711, -0.01977539, -0.030273438]
    );
}

#[test]
fn smollm_tokenizer_encodes_like_transformers() {
    let Some((_, tok)) = smollm() else { return };
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(
        (tok.bos, tok.eos.as_slice(), tok.add_bos),
        (Some(1), &[2][..], false)
    );
    assert_eq!(
        tok.encode("The capital of France is").unwrap(),
        [504, 3575, 282, 4649, 314]
    );
    let ids = tok.encode("<|im_start|>user").unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(tok.token_text(1), "<|im_start|>");
    assert_eq!(tok.token_text(504), "The");
}

#[test]
fn smollm_decode_inverts_encode() {
    let Some((_, tok)) = smollm() else { return };
    for s in [
        "Hello, world!",
        "naïve café — 日本語 🚀 emoji",
        "line one\n\nline two\ttab  double  space\r\n",
        "   leading and trailing   ",
        "digits 1234567 and 3.14159",
        "<|im_start|>user\nhi<|im_end|>\n",
    ] {
        let ids = tok.encode(s).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), s, "{ids:?}");
    }
}

#[test]
fn smollm_chat_template_renders_chatml() {
    let Some((_, tok)) = smollm() else { return };
    let prompt = tok.apply_chat_template("What is 2+2?").unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    // Each turn opens with the single <|im_start|> token (id 1).
    let ids = tok.encode(&prompt).unwrap();
    let starts: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == 1).collect();
    assert_eq!(starts.len(), 3, "{ids:?}");
    assert_eq!(starts[0], 0);
    let last_turn = tok.decode(&ids[starts[2]..]).unwrap();
    assert_eq!(last_turn, "<|im_start|>assistant\n");
}

#[test]
fn hf_dir_tokenizer_reads_configs() {
    let Some((_, gguf_tok)) = smollm() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("keyformer-{}-hfdir", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = TextTokenizer::from_hf_dir(&dir);
    assert!(matches!(missing, Err(Error::Tokenizer(_))));

    gguf_tok
        .inner
        .save(dir.join("tokenizer.json"), false)
        .unwrap();
    let config = r#"{"bos_token": {"content": "<|im_start|>"}, "eos_token": "<|im_end|>",
                     "chat_template": "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}"}"#;
    std::fs::write(dir.join("tokenizer_config.json"), config).unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": [2, 0]}"#,
    )
    .unwrap();
    let tok = TextTokenizer::from_hf_dir(&dir).unwrap();
    assert_eq!(
        (tok.bos, tok.eos.as_slice(), tok.add_bos),
        (Some(1), &[2, 0][..], false)
    );
    let text = "<|im_start|>user\nThe capital of France is";
    assert_eq!(tok.encode(text).unwrap(), gguf_tok.encode(text).unwrap());
    assert_eq!(
        tok.apply_chat_template("hi").unwrap(),
        "<|im_start|>hi<|im_end|>"
    );

    let config = r#"{"bos_token": "<|im_start|>", "add_bos_token": true}"#;
    std::fs::write(dir.join("tokenizer_config.json"), config).unwrap();
    std::fs::remove_file(dir.join("generation_config.json")).unwrap();
    let tok = TextTokenizer::from_hf_dir(&dir).unwrap();
    assert_eq!(tok.encode("The").unwrap(), [1, 504]);
    assert!(tok.eos.is_empty());
    let err = tok.apply_chat_template("hi").unwrap_err().to_string();
    assert!(err.contains("no chat template"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- the real Gemma-3-270M file (Q4_K_M: Q4_K, Q5_0, Q6_K, Q8_0 and F32 tensors) -------------

const GEMMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/gemma-3-270m-q4_k_m.gguf"
);

/// Every tensor dequantizes to finite values of the right count; one tensor of each type starts
/// and ends with the values python gives: `gguf.quants.dequantize(t.data, t.tensor_type)` on
/// `GGUFReader(path).tensors`, printed with `np.format_float_positional(v, unique=True)`.
#[test]
fn gemma_tensors_all_dequantize() {
    if !Path::new(GEMMA).exists() {
        println!("SKIP: {GEMMA} not found (scripts/fetch.sh fetches it)");
        return;
    }
    let g = GgufFile::open(Path::new(GEMMA)).unwrap();
    assert_eq!(g.architecture().unwrap(), "gemma3");
    let names = g.tensor_names();
    assert_eq!(names.len(), 236);
    for name in &names {
        let shape = g.tensor_shape(name).unwrap();
        let values = g.tensor_f32(name).unwrap();
        assert_eq!(values.len(), shape.iter().product::<usize>(), "{name}");
        assert!(
            values.iter().all(|v| v.is_finite()),
            "{name} holds non-finite values"
        );
    }
    let expect = |name: &str, shape: &[usize], first: [f32; 4], last: [f32; 2]| {
        assert_eq!(g.tensor_shape(name).unwrap(), shape, "{name}");
        let values = g.tensor_f32(name).unwrap();
        assert_eq!(values[..4], first, "{name}");
        assert_eq!(values[values.len() - 2..], last, "{name}");
    };
    expect(
        "output_norm.weight", // F32
        &[640],
        [7.125, 9.5625, 47.0, 145.0],
        [5.90625, 21.625],
    );
    expect(
        "token_embd.weight", // Q8_0
        &[262144, 640],
        [-0.00724411, 0.042860985, -0.034409523, -0.021128654],
        [0.0, -0.017424583],
    );
    expect(
        "blk.0.attn_k.weight", // Q5_0
        &[256, 640],
        [0.0, -0.027557373, 0.011810303, -0.027557373],
        [-0.012023926, 0.024047852],
    );
    expect(
        "blk.0.attn_output.weight", // Q4_K
        &[640, 1024],
        [-0.015705109, 0.049669266, -0.037496567, 0.060564995],
        [0.011435866, -0.011407614],
    );
    expect(
        "blk.0.ffn_down.weight", // Q6_K
        &[640, 2048],
        [0.005211711, 0.021715462, -0.025189936, 0.013897896],
        [0.010460019, -0.009414017],
    );
}
