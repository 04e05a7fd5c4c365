//! Where weights come from: memory-mapped safetensors shards, a GGUF file, or random values for
//! benchmarking real shapes without real weights. Every source hands out one tensor at a time
//! as f32, so no second full copy of the model is ever held in host memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::files;
use crate::model::gguf::GgufFile;
use crate::model::mix::WeightPlan;
use crate::model::tensor::BlockRows;

mod random;
pub use random::RandomSource;

pub trait TensorSource {
    fn has(&self, name: &str) -> bool;
    /// The tensor converted to f32, after checking that its shape is `shape`.
    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// The matrix `name` of `shape` (rows, columns) as its file stores it, when that is a block
    /// format (Q4_K, Q8_0, ...); `None` for plain floats, which `load` reads.
    fn load_blocks(&self, _name: &str, _shape: [usize; 2]) -> Result<Option<BlockRows>> {
        Ok(None)
    }
}

fn check_shape(name: &str, expected: &[usize], actual: &[usize]) -> Result<()> {
    if expected != actual {
        return Err(Error::Shape {
            name: name.to_string(),
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        });
    }
    Ok(())
}

/// Maps `path`, which must be a regular file; `kind` names it in errors.
pub fn map_file(path: &Path, kind: &str) -> Result<Mmap> {
    let (file, _) = files::open_regular(path, kind)?;
    // SAFETY: the file is opened read-only and the model treats the mapping as immutable; a
    // concurrent writer to a weights file is outside what this library can defend against.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    header_len: usize,
    metadata: Metadata,
}

/// One model.safetensors, or the shards listed in model.safetensors.index.json.
pub struct SafetensorsSource {
    shards: Vec<Shard>,
    shard_of: HashMap<String, usize>,
}

impl SafetensorsSource {
    pub fn open_dir(dir: &Path) -> Result<SafetensorsSource> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        // symlink_metadata: a dangling link or a directory named like the file still counts as
        // present, and then gets a clear error when it is opened.
        let files = if single.symlink_metadata().is_ok() {
            vec![single]
        } else if index.symlink_metadata().is_ok() {
            shard_files(&index)?
        } else {
            return Err(Error::NotFound(single));
        };
        let mut shards = Vec::new();
        let mut shard_of = HashMap::new();
        for path in files {
            let mmap = map_file(&path, "safetensors file")?;
            let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&mmap)
                .map_err(|e| Error::malformed(&path, "safetensors", e.to_string()))?;
            for name in metadata.tensors().keys() {
                shard_of.insert(name.clone(), shards.len());
            }
            shards.push(Shard {
                path,
                mmap,
                header_len,
                metadata,
            });
        }
        Ok(SafetensorsSource { shards, shard_of })
    }
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = files::read_text(
        index,
        "model.safetensors.index.json",
        files::SAFETENSORS_INDEX_LIMIT,
    )?;
    let dir = index.parent().unwrap_or(Path::new("."));
    parse_index(index, &text)?
        .iter()
        .map(|name| files::shard_path(dir, name))
        .collect()
}

/// The shard file names a model.safetensors.index.json (`text`, read from `index`) lists,
/// sorted and without repeats.
pub fn parse_index(index: &Path, text: &str) -> Result<Vec<String>> {
    let json: Value = serde_json::from_str(text)
        .map_err(|e| Error::malformed(index, "safetensors index", e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::malformed(index, "safetensors index", "no weight_map object"))?;
    let mut names = Vec::new();
    for (tensor, shard) in map {
        let name = shard.as_str().ok_or_else(|| {
            Error::malformed(
                index,
                "safetensors index",
                format!("the shard of tensor '{tensor}' is {shard}, not a file name"),
            )
        })?;
        names.push(name.to_string());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

impl TensorSource for SafetensorsSource {
    fn has(&self, name: &str) -> bool {
        self.shard_of.contains_key(name)
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let shard = &self.shards[*self
            .shard_of
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?];
        let info = shard
            .metadata
            .info(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        check_shape(name, shape, &info.shape)?;
        // read_metadata has validated that every tensor's offsets lie inside the file.
        let start = 8 + shard.header_len + info.data_offsets.0;
        let bytes = &shard.mmap[start..8 + shard.header_len + info.data_offsets.1];
        let halves =
            |f: fn([u8; 2]) -> f32| bytes.chunks_exact(2).map(|c| f([c[0], c[1]])).collect();
        Ok(match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => halves(|b| half::f16::from_le_bytes(b).to_f32()),
            Dtype::BF16 => halves(|b| half::bf16::from_le_bytes(b).to_f32()),
            other => {
                return Err(Error::Unsupported {
                    path: shard.path.clone(),
                    what: format!("dtype {other:?} of tensor '{name}' (supported: F32, F16, BF16)"),
                });
            }
        })
    }
}

/// A source whose float matrices are quantized while they load, one at a time, to the formats a
/// plan gives them; matrices the inner source already stores in a block format keep it, and
/// norms and biases (which loaders read with `load`) stay f32.
pub struct QuantizingSource<'a> {
    pub inner: &'a dyn TensorSource,
    pub plan: WeightPlan,
}

impl TensorSource for QuantizingSource<'_> {
    fn has(&self, name: &str) -> bool {
        self.inner.has(name)
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.inner.load(name, shape)
    }

    fn load_blocks(&self, name: &str, [rows, cols]: [usize; 2]) -> Result<Option<BlockRows>> {
        if let Some(blocks) = self.inner.load_blocks(name, [rows, cols])? {
            return Ok(Some(blocks));
        }
        let Some(format) = self.plan.format_for(name, cols) else {
            return Ok(None);
        };
        let values = self.inner.load(name, &[rows, cols])?;
        let bytes = format.quantize(&values).map_err(|e| {
            Error::InvalidInput(format!(
                "quantizing tensor '{name}' to {}: {e}",
                format.name
            ))
        })?;
        BlockRows::new(format, rows, cols, bytes).map(Some)
    }
}

impl TensorSource for GgufFile {
    fn has(&self, name: &str) -> bool {
        self.has_tensor(name)
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        check_shape(name, shape, &self.tensor_shape(name)?)?;
        self.tensor_f32(name)
    }

    fn load_blocks(&self, name: &str, [rows, cols]: [usize; 2]) -> Result<Option<BlockRows>> {
        check_shape(name, &[rows, cols], &self.tensor_shape(name)?)?;
        match self.tensor_blocks(name)? {
            Some((format, bytes)) if format.block_values > 1 => {
                BlockRows::new(format, rows, cols, bytes.to_vec()).map(Some)
            }
            _ => Ok(None),
        }
    }
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
