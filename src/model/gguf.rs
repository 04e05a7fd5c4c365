//! A small, defensive reader for GGUF v3 files (llama.cpp's weights format).
//!
//! The file is memory-mapped; the header (metadata and tensor table) is parsed and validated up
//! front with every read bounds-checked, so a hostile file yields `Error::Malformed`, never a panic
//! or a huge allocation. Tensor data is only touched when `tensor_f32` dequantizes it.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{Error, Result};

const FORMAT: &str = "GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_DIMS: u32 = 4;
/// Nested arrays recurse; a hostile file could otherwise nest deep enough to overflow the stack.
const MAX_ARRAY_DEPTH: usize = 8;

/// One metadata value, as typed in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// Any non-negative integer kind.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer or float kind.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// The ggml element types this reader can dequantize.
#[derive(Debug, Clone, Copy, PartialEq)]
enum DType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4_1,
}

/// Elements per quantization block.
const QK: usize = 32;

impl DType {
    fn from_ggml(id: u32) -> Option<DType> {
        Some(match id {
            0 => DType::F32,
            1 => DType::F16,
            30 => DType::Bf16,
            8 => DType::Q8_0,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block)
    fn block(self) -> (usize, usize) {
        match self {
            DType::F32 => (1, 4),
            DType::F16 | DType::Bf16 => (1, 2),
            DType::Q8_0 => (QK, 2 + QK),
            DType::Q4_0 => (QK, 2 + QK / 2),
            DType::Q4_1 => (QK, 4 + QK / 2),
        }
    }
}

/// ggml's name for a type id, for error messages.
fn ggml_type_name(id: u32) -> String {
    const NAMES: [&str; 40] = [
        "F32", "F16", "Q4_0", "Q4_1", "", "", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K",
        "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
        "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16", "", "", "", "TQ1_0",
        "TQ2_0", "", "", "", "MXFP4",
    ];
    match NAMES.get(id as usize) {
        Some(name) if !name.is_empty() => (*name).to_string(),
        _ => format!("ggml type {id}"),
    }
}

#[derive(Debug)]
struct TensorInfo {
    /// ggml order: `ne[0]` is the innermost (contiguous) dimension.
    ne: Vec<usize>,
    ggml_type: u32,
    /// Absolute byte range in the file; `None` for types we cannot size (and so cannot read).
    range: Option<(usize, usize)>,
}

/// An opened GGUF file: parsed metadata and tensor table over a memory map.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    metadata: HashMap<String, GgufValue>,
    tensors: HashMap<String, TensorInfo>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(path.to_path_buf()),
            _ => Error::io(path, e),
        })?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            return Err(Error::malformed(path, FORMAT, "empty file"));
        }
        // SAFETY: the map is read-only; like every mmap-based loader we rely on the file not being
        // truncated or rewritten by another process while it is open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (metadata, tensors) = parse(path, &mmap)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            metadata,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    pub fn architecture(&self) -> Result<&str> {
        self.get("general.architecture")
            .and_then(GgufValue::as_str)
            .ok_or_else(|| {
                Error::malformed(
                    &self.path,
                    FORMAT,
                    "missing string key 'general.architecture'",
                )
            })
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }

    /// Row-major shape, outermost dimension first (the reverse of ggml's `ne`).
    pub fn tensor_shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.tensor(name)?.ne.iter().rev().copied().collect())
    }

    /// The tensor's values as f32, dequantized, in row-major order.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.tensor(name)?;
        let (dtype, (start, end)) = match (DType::from_ggml(info.ggml_type), info.range) {
            (Some(dtype), Some(range)) => (dtype, range),
            _ => {
                return Err(Error::Unsupported {
                    path: self.path.clone(),
                    what: format!(
                        "tensor type {} of tensor '{name}'",
                        ggml_type_name(info.ggml_type)
                    ),
                });
            }
        };
        Ok(dequantize(dtype, &self.mmap[start..end]))
    }
}

fn dequantize(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    let (block_elems, block_bytes) = dtype.block();
    // Reserve up front: flat_map gives no useful size hint, and embeddings hold millions of values.
    let mut out = Vec::with_capacity(bytes.len() / block_bytes * block_elems);
    let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    let blocks = bytes.chunks_exact(block_bytes);
    match dtype {
        DType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        DType::F16 => out.extend(blocks.map(|b| f16_at(b, 0))),
        DType::Bf16 => out.extend(blocks.map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        DType::Q8_0 => out.extend(blocks.flat_map(|b| {
            let d = f16_at(b, 0);
            b[2..].iter().map(move |&q| d * f32::from(q as i8))
        })),
        // Nibble order: the low nibbles of the 16 bytes are elements 0..16, the high ones 16..32.
        DType::Q4_0 => out.extend(blocks.flat_map(|b| {
            let d = f16_at(b, 0);
            nibbles(&b[2..]).map(move |q| d * (f32::from(q) - 8.0))
        })),
        DType::Q4_1 => out.extend(blocks.flat_map(|b| {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            nibbles(&b[4..]).map(move |q| d * f32::from(q) + m)
        })),
    }
    out
}

fn nibbles(qs: &[u8]) -> impl Iterator<Item = u8> + '_ {
    qs.iter().map(|q| q & 0x0f).chain(qs.iter().map(|q| q >> 4))
}

type Parsed = (HashMap<String, GgufValue>, HashMap<String, TensorInfo>);

fn parse(path: &Path, data: &[u8]) -> Result<Parsed> {
    let mut r = Reader { data, pos: 0, path };
    if r.take(4, "magic")? != b"GGUF" {
        return Err(r.malformed("bad magic (not a GGUF file)"));
    }
    let version = r.u32("version")?;
    if version != 3 {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            what: format!("GGUF version {version}"),
        });
    }
    let tensor_count = r.u64("tensor count")?;
    let kv_count = r.u64("metadata count")?;

    // No up-front capacity from the counts: they are untrusted. Each entry consumes bytes, so the
    // loops end at the file's end.
    let mut metadata = HashMap::new();
    for _ in 0..kv_count {
        let key = r.string("metadata key")?;
        let value_type = r.u32("metadata value type")?;
        let value = r.value(value_type, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(r.malformed(format!("duplicate metadata key '{key}'")));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => return Err(r.malformed(format!("general.alignment {v:?} is not a power of two"))),
        },
    };

    let mut raw = Vec::new();
    for _ in 0..tensor_count {
        let name = r.string("tensor name")?;
        let n_dims = r.u32("tensor dimension count")?;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(r.malformed(format!(
                "tensor '{name}' has {n_dims} dimensions (1..=4 allowed)"
            )));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let dim = r.u64("tensor dimension")?;
            ne.push(
                usize::try_from(dim).map_err(|_| {
                    r.malformed(format!("tensor '{name}' dimension {dim} too large"))
                })?,
            );
        }
        let ggml_type = r.u32("tensor type")?;
        let offset = r.u64("tensor offset")?;
        raw.push((name, ne, ggml_type, offset));
    }

    let data_start = (r.pos as u64)
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| r.malformed("data section offset overflows"))?;

    let mut tensors = HashMap::new();
    for (name, ne, ggml_type, offset) in raw {
        let range = tensor_range(&r, &name, &ne, ggml_type, offset, data_start, alignment)?;
        let info = TensorInfo {
            ne,
            ggml_type,
            range,
        };
        if tensors.insert(name.clone(), info).is_some() {
            return Err(r.malformed(format!("duplicate tensor '{name}'")));
        }
    }
    Ok((metadata, tensors))
}

/// Validates a tensor's shape and data placement; returns its absolute byte range when its type
/// is one we can read.
fn tensor_range(
    r: &Reader,
    name: &str,
    ne: &[usize],
    ggml_type: u32,
    offset: u64,
    data_start: u64,
    alignment: u64,
) -> Result<Option<(usize, usize)>> {
    let elements = ne
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| r.malformed(format!("tensor '{name}' shape {ne:?} overflows")))?;
    if !offset.is_multiple_of(alignment) {
        return Err(r.malformed(format!(
            "tensor '{name}' offset {offset} is not {alignment}-aligned"
        )));
    }
    let Some(dtype) = DType::from_ggml(ggml_type) else {
        return Ok(None);
    };
    let (block_elems, block_bytes) = dtype.block();
    if !ne[0].is_multiple_of(block_elems) {
        return Err(r.malformed(format!(
            "tensor '{name}' row length {} is not a multiple of the block size {block_elems}",
            ne[0]
        )));
    }
    let out_of_bounds = || r.malformed(format!("tensor '{name}' data lies outside the file"));
    let size = (elements / block_elems)
        .checked_mul(block_bytes)
        .ok_or_else(out_of_bounds)?;
    let start = data_start.checked_add(offset).ok_or_else(out_of_bounds)?;
    let end = start.checked_add(size as u64).ok_or_else(out_of_bounds)?;
    if end > r.data.len() as u64 {
        return Err(out_of_bounds());
    }
    // Both fit in the file length, hence in usize.
    Ok(Some((start as usize, end as usize)))
}

/// A bounds-checked cursor over the header bytes.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn malformed(&self, reason: impl Into<String>) -> Error {
        Error::malformed(self.path, FORMAT, reason)
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.malformed(format!("truncated {what} at byte {}", self.pos)));
        }
        let bytes = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A length field, rejected when it claims more bytes than remain (each item >= `item_size`).
    fn count(&mut self, what: &str, item_size: usize) -> Result<usize> {
        let n = self.u64(what)?;
        match usize::try_from(n) {
            Ok(n) if n <= self.remaining() / item_size => Ok(n),
            _ => Err(self.malformed(format!(
                "{what} {n} exceeds the {} bytes left in the file",
                self.remaining()
            ))),
        }
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.count(what, 1)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.malformed(format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, value_type: u32, depth: usize) -> Result<GgufValue> {
        const W: &str = "metadata value";
        Ok(match value_type {
            0 => GgufValue::U8(self.array::<1>(W)?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(W)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(W)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(W)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(W)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(W)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(W)?)),
            7 => match self.array::<1>(W)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.malformed(format!("bool value {b} is neither 0 nor 1"))),
            },
            8 => GgufValue::Str(self.string("metadata string")?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.malformed("metadata arrays nested too deeply"));
                }
                let item_type = self.u32("array item type")?;
                let item_size = match item_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(self.malformed(format!("unknown metadata value type {t}"))),
                };
                let n = self.count("array length", item_size)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_type, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(W)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(W)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(W)?)),
            t => return Err(self.malformed(format!("unknown metadata value type {t}"))),
        })
    }
}
