//! Matrices kept in the block formats of their file (src/model/quant.rs), as sources hand them
//! to backends that read those formats directly (`Backend::upload_blocks`).

use crate::error::{Error, Result};
use crate::model::quant::Format;

/// Consecutive rows of a matrix in one block format: each row is `cols / block_values` blocks.
pub struct BlockRows {
    pub format: &'static Format,
    pub rows: usize,
    pub cols: usize,
    pub bytes: Vec<u8>,
}

impl BlockRows {
    /// Checks that `bytes` holds exactly `rows` rows of `cols` values in `format`.
    pub fn new(format: &'static Format, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<Self> {
        let row_bytes = format.bytes_for(cols).ok_or_else(|| {
            Error::InvalidInput(format!(
                "rows of {cols} values are not whole {} blocks of {}",
                format.name, format.block_values
            ))
        })?;
        if Some(bytes.len()) != row_bytes.checked_mul(rows) {
            return Err(Error::InvalidInput(format!(
                "{} bytes are not {rows} rows of {cols} {} values",
                bytes.len(),
                format.name
            )));
        }
        Ok(BlockRows {
            format,
            rows,
            cols,
            bytes,
        })
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.format.block_values * self.format.block_bytes
    }
}

/// A matrix of `cols` columns whose row ranges are block formats, top to bottom: one part per
/// stacked tensor, so a fused [q | k | v] whose v is Q6_K and q, k are Q4_K has parts
/// Q4_K (q and k rows) and Q6_K (v rows). Neighbouring parts of one format are merged.
pub struct BlockMatrix {
    pub cols: usize,
    pub parts: Vec<BlockRows>,
}

impl BlockMatrix {
    /// Stacks `parts` (all `cols` wide), merging neighbours of the same format.
    pub fn stack(parts: Vec<BlockRows>) -> Result<BlockMatrix> {
        let cols = parts.first().map_or(0, |p| p.cols);
        let mut merged: Vec<BlockRows> = Vec::new();
        for p in parts {
            if p.cols != cols {
                return Err(Error::InvalidInput(format!(
                    "stacked rows of {} and {cols} columns",
                    p.cols
                )));
            }
            match merged.last_mut() {
                Some(last) if std::ptr::eq(last.format, p.format) => {
                    last.rows += p.rows;
                    last.bytes.extend_from_slice(&p.bytes);
                }
                _ => merged.push(p),
            }
        }
        Ok(BlockMatrix {
            cols,
            parts: merged,
        })
    }

    pub fn rows(&self) -> usize {
        self.parts.iter().map(|p| p.rows).sum()
    }

    /// Bytes of every part.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.bytes.len()).sum()
    }

    /// Rows `first..first + out.len() / cols` as f32 into `out`.
    pub fn dequantize_rows(&self, first: usize, out: &mut [f32]) -> Result<()> {
        let mut row = first;
        let mut out = out;
        let mut part_start = 0;
        for p in &self.parts {
            let part_end = part_start + p.rows;
            if row < part_end && !out.is_empty() {
                let take = (part_end - row).min(out.len() / self.cols);
                let rb = p.row_bytes();
                let bytes = &p.bytes[(row - part_start) * rb..(row - part_start + take) * rb];
                let (now, rest) = out.split_at_mut(take * self.cols);
                p.format.dequantize_into(bytes, now)?;
                out = rest;
                row += take;
            }
            part_start = part_end;
        }
        if !out.is_empty() {
            return Err(Error::InvalidInput(format!(
                "rows from {first} run past the matrix's {} rows",
                self.rows()
            )));
        }
        Ok(())
    }

    /// Every value as f32, row-major, for backends without a kernel for some part's format.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for p in &self.parts {
            let values = p.format.dequantize(&p.bytes)?;
            if out.is_empty() {
                out = values;
            } else {
                out.try_reserve(values.len()).map_err(|_| {
                    Error::InvalidInput("cannot allocate a dequantized matrix".into())
                })?;
                out.extend_from_slice(&values);
            }
        }
        Ok(out)
    }
}
