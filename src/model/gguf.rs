//! A small, defensive reader for GGUF v3 files (llama.cpp's weights format).
//!
//! The file is memory-mapped; the header (metadata and tensor table) is parsed and validated up
//! front with every read bounds-checked, so a hostile file yields `Error::Malformed`, never a panic
//! or a huge allocation: counts and lengths are checked against the bytes left before anything
//! is allocated, and the tensors must tile the data section as GGUF writers lay it out (so a
//! tensor missing from the table is reported as such). Tensor data is only touched when
//! `tensor_f32` dequantizes it, through the format table in `model::quant`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::model::quant::{self, Format};

const FORMAT: &str = "GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_DIMS: u32 = 4;
/// Nested arrays recurse; a hostile file could otherwise nest deep enough to overflow the stack.
const MAX_ARRAY_DEPTH: usize = 8;
/// The most array items all metadata may hold together: ten times the largest vocabularies'
/// tokens, merges, scores and types (about 1.3 million), at most 512 MiB in memory.
const MAX_ARRAY_ITEMS: usize = 1 << 24;
/// The fewest bytes a metadata entry takes: key length (u64), value type (u32), a 1-byte value.
const MIN_METADATA_BYTES: usize = 8 + 4 + 1;
/// The fewest bytes a tensor info takes: name length, dimension count, one dimension, type,
/// offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 8 + 4 + 8;
/// Metadata value type ids, as stored in the file.
const VALUE_TYPE_NAMES: [&str; 13] = [
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
];

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

#[derive(Debug)]
struct TensorInfo {
    /// ggml order: `ne[0]` is the innermost (contiguous) dimension.
    ne: Vec<usize>,
    ggml_type: u32,
    /// Absolute byte range in the file; `None` for type ids ggml does not define (no size known).
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

    /// The names of all tensors, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
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

    /// The tensor's format and stored bytes, when its type is one this crate reads.
    pub fn tensor_blocks(&self, name: &str) -> Result<Option<(&'static quant::Format, &[u8])>> {
        let info = self.tensor(name)?;
        Ok(match (quant::by_id(info.ggml_type), info.range) {
            (Some(format), Some((start, end))) if format.can_dequantize() => {
                Some((format, &self.mmap[start..end]))
            }
            _ => None,
        })
    }

    /// The tensor's values as f32, dequantized, in row-major order.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.tensor(name)?;
        match (quant::by_id(info.ggml_type), info.range) {
            (Some(format), Some((start, end))) if format.can_dequantize() => {
                format.dequantize(&self.mmap[start..end])
            }
            _ => Err(Error::Unsupported {
                path: self.path.clone(),
                what: format!(
                    "type {} of tensor '{name}' (supported: {})",
                    quant::type_name(info.ggml_type),
                    quant::supported_names()
                ),
            }),
        }
    }
}

type Parsed = (HashMap<String, GgufValue>, HashMap<String, TensorInfo>);

fn parse(path: &Path, data: &[u8]) -> Result<Parsed> {
    let mut r = Reader::new(data, 0, path);
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
    // Every entry takes bytes, so a count the rest of the file cannot hold is rejected here.
    // Nothing is reserved from the counts: the tables grow as entries actually parse.
    let tensor_count = r.count("tensor count", MIN_TENSOR_INFO_BYTES)?;
    let kv_count = r.count("metadata count", MIN_METADATA_BYTES)?;

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
    for index in 0..tensor_count {
        let entry = r.pos;
        let info = tensor_info(&mut r).map_err(|e| match e {
            Error::Malformed { reason, .. } => {
                let position = format!("tensor info {} of {tensor_count}", index + 1);
                let misplaced = (index == 0).then(|| misplaced_metadata(data, entry, path));
                r.malformed(match misplaced.flatten() {
                    Some(entry) => format!(
                        "the header counts {kv_count} metadata entries, but another one \
                         ({entry}) follows them where {position} should begin: the header's \
                         metadata count is wrong"
                    ),
                    None => format!("{position}: {reason}"),
                })
            }
            other => other,
        })?;
        raw.push(info);
    }

    let data_start = (r.pos as u64)
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| r.malformed("data section offset overflows"))?;

    let mut tensors = HashMap::new();
    let mut placed = Vec::new();
    for (name, ne, ggml_type, offset) in raw {
        let range = tensor_range(&r, &name, &ne, ggml_type, offset, data_start, alignment)?;
        placed.push((
            offset,
            range.map(|(start, end)| (end - start) as u64),
            name.clone(),
        ));
        let info = TensorInfo {
            ne,
            ggml_type,
            range,
        };
        if tensors.insert(name.clone(), info).is_some() {
            return Err(r.malformed(format!("duplicate tensor '{name}'")));
        }
    }
    let data_len = data.len() as u64 - data_start.min(data.len() as u64);
    check_layout(&r, placed, alignment, data_len)?;
    Ok((metadata, tensors))
}

/// One tensor info: (name, ne, ggml type, offset in the data section).
fn tensor_info(r: &mut Reader) -> Result<(String, Vec<usize>, u32, u64)> {
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
            usize::try_from(dim)
                .map_err(|_| r.malformed(format!("tensor '{name}' dimension {dim} too large")))?,
        );
    }
    let ggml_type = r.u32("tensor type")?;
    let offset = r.u64("tensor offset")?;
    Ok((name, ne, ggml_type, offset))
}

/// Whether the bytes at `pos`, where the tensor table should begin, read as a whole metadata
/// entry whose value type (where a tensor info has its dimension count) no tensor could have
/// (5..=12 dimensions): then the header's metadata count is too small. Returns "'key', a TYPE
/// value".
fn misplaced_metadata(data: &[u8], pos: usize, path: &Path) -> Option<String> {
    let mut r = Reader::new(data, pos, path);
    let key = r.string("metadata key").ok()?;
    let value_type = r.u32("metadata value type").ok()?;
    let type_name = VALUE_TYPE_NAMES.get(value_type as usize)?;
    if value_type <= MAX_DIMS {
        return None;
    }
    r.value(value_type, 0).ok()?;
    Some(format!("'{key}', a {type_name} value"))
}

/// Validates a tensor's shape and data placement; returns its absolute byte range when its type
/// is one ggml defines (and so has a known size).
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
    let Some(format) = quant::by_id(ggml_type) else {
        return Ok(None);
    };
    if !ne[0].is_multiple_of(format.block_values) {
        return Err(r.malformed(format!(
            "tensor '{name}' row length {} is not a multiple of the block size {} of {}",
            ne[0], format.block_values, format.name
        )));
    }
    let out_of_bounds = || {
        r.malformed(format!(
            "tensor '{name}' data lies outside the file ({} bytes): {} at offset {offset} of the \
             data section, which begins at byte {data_start}; the file is truncated or the \
             offset is wrong",
            r.data.len(),
            describe_size(format, elements),
        ))
    };
    let size = format.bytes_for(elements).ok_or_else(out_of_bounds)?;
    let start = data_start.checked_add(offset).ok_or_else(out_of_bounds)?;
    let end = start.checked_add(size as u64).ok_or_else(out_of_bounds)?;
    if end > r.data.len() as u64 {
        return Err(out_of_bounds());
    }
    // Both fit in the file length, hence in usize.
    Ok(Some((start as usize, end as usize)))
}

fn describe_size(format: &Format, elements: usize) -> String {
    match format.bytes_for(elements) {
        Some(bytes) => format!("{bytes} bytes"),
        None => format!("{elements} {} values", format.name),
    }
}

/// Checks that the tensors tile the data section as GGUF writers lay it out: from offset 0, each
/// tensor's data padded to the alignment, no overlaps, no unclaimed bytes. A hole means a tensor
/// is missing from the table, and is reported as that rather than as a fault of its neighbour.
/// `placed` holds (offset, size when known, name); tensors of unknown size end the check.
fn check_layout(
    r: &Reader,
    mut placed: Vec<(u64, Option<u64>, String)>,
    alignment: u64,
    data_len: u64,
) -> Result<()> {
    placed.sort_by_key(|(offset, _, _)| *offset);
    let missing = "a tensor is missing from the tensor table, or an offset is wrong";
    let mut expected = 0u64;
    let mut previous: Option<&str> = None;
    for (offset, size, name) in &placed {
        if *offset != expected {
            let place = match previous {
                None => "before the first tensor".to_string(),
                Some(p) => format!("between tensor '{p}' and tensor '{name}'"),
            };
            return Err(r.malformed(if *offset > expected {
                format!(
                    "bytes {expected}..{offset} of the data section belong to no tensor \
                     ({place}): {missing}"
                )
            } else {
                format!(
                    "tensor '{name}' overlaps the data of tensor '{}'",
                    previous.unwrap_or("")
                )
            }));
        }
        let Some(size) = size else { return Ok(()) };
        // In bounds (checked per tensor), so neither overflows.
        expected = (offset + size).next_multiple_of(alignment);
        previous = Some(name);
    }
    if let Some(last) = previous
        && data_len > expected
    {
        return Err(r.malformed(format!(
            "the {} bytes after tensor '{last}', the last one, belong to no tensor: {missing}",
            data_len - expected
        )));
    }
    Ok(())
}

/// A bounds-checked cursor over the header bytes.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// Array items still allowed: each becomes a `GgufValue` of 32 bytes, so a file of tiny
    /// items would otherwise take 32 times its size in memory.
    array_items_left: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], pos: usize, path: &'a Path) -> Self {
        Reader {
            data,
            pos,
            path,
            array_items_left: MAX_ARRAY_ITEMS,
        }
    }

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
                "{what} {n} exceeds what the {} bytes left in the file can hold",
                self.remaining()
            ))),
        }
    }

    /// A buffer for `n` items, where `n` came from the file: allocation failure is an error.
    fn buffer<T>(&self, n: usize, what: &str) -> Result<Vec<T>> {
        let mut items = Vec::new();
        items
            .try_reserve_exact(n)
            .map_err(|_| self.malformed(format!("cannot allocate {n} items for the {what}")))?;
        Ok(items)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.count(what, 1)?;
        let mut bytes = self.buffer(len, what)?;
        bytes.extend_from_slice(self.take(len, what)?);
        String::from_utf8(bytes).map_err(|_| self.malformed(format!("{what} is not valid UTF-8")))
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
                self.array_items_left = self.array_items_left.checked_sub(n).ok_or_else(|| {
                    self.malformed(format!(
                        "metadata arrays hold more than {MAX_ARRAY_ITEMS} items in all"
                    ))
                })?;
                let mut items = self.buffer(n, "metadata array")?;
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
