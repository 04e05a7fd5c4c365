//! Weights kept in their file's block formats (Q4_K, Q8_0, ...) on the device: the format table
//! (which formats kernels/quant.cu reads, and its kernels for each), the layout of such a weight
//! (segments of rows in one format over one allocation) and the ops that read it: products
//! (matrix-vector kernels for a few rows, dequantize-then-cuBLAS for more) and embedding rows.

use cudarc::driver::{CudaFunction, CudaSlice};

use super::kernels::{Arg, compile, quant_source};
use super::{CudaBackend, CudaDtype, CudaWeight, GEMV_ROWS, cuda_err};
use crate::backend::NormSpec;
use crate::error::{Error, Result};
use crate::model::quant::Format;
use crate::model::tensor::BlockMatrix;

/// The formats with kernels in kernels/quant.cu: ggml's name (its struct's name there; its kernels
/// are named after it in lower case: gemv_q4_k1..4, dequantize_q4_k, embed_q4_k) and the lane
/// shares per block (SHARES of its struct). A format missing here is dequantized at upload. A
/// backend compiles a format's kernels when it first uploads a weight in it.
pub const FORMATS: [(&str, usize); 12] = [
    ("Q4_0", 1),
    ("Q4_1", 1),
    ("Q5_0", 1),
    ("Q5_1", 1),
    ("Q8_0", 2),
    ("IQ4_NL", 1),
    ("Q2_K", 8),
    ("Q3_K", 8),
    ("Q4_K", 8),
    ("Q5_K", 8),
    ("Q6_K", 16),
    ("IQ4_XS", 8),
];

/// One format's kernels.
pub struct QuantKernels {
    pub format: &'static Format,
    shares: usize,
    /// gemv[r - 1] multiplies r rows.
    gemv: [CudaFunction; 4],
    dequantize: CudaFunction,
    embed: CudaFunction,
}

impl QuantKernels {
    /// Compiles and loads the kernels of FORMATS entry `(name, shares)` for `backend`'s device.
    fn compile(backend: &CudaBackend, (name, shares): (&str, usize)) -> Result<QuantKernels> {
        let format = crate::model::quant::FORMATS
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| cuda_err(format!("no format {name}")))?;
        let ptx = compile(
            "quant.cu",
            &quant_source(name),
            &backend.arch,
            backend.dtype,
        )?;
        let module = backend
            .stream
            .context()
            .load_module(ptx)
            .map_err(cuda_err)?;
        let lower = name.to_lowercase();
        let f = |kernel: String| module.load_function(&kernel).map_err(cuda_err);
        Ok(QuantKernels {
            format,
            shares,
            gemv: [
                f(format!("gemv_{lower}1"))?,
                f(format!("gemv_{lower}2"))?,
                f(format!("gemv_{lower}3"))?,
                f(format!("gemv_{lower}4"))?,
            ],
            dequantize: f(format!("dequantize_{lower}"))?,
            embed: f(format!("embed_{lower}"))?,
        })
    }

    /// Lane shares in a row of `cols` values.
    fn shares_per_row(&self, cols: usize) -> usize {
        cols / self.format.block_values * self.shares
    }
}

/// Consecutive rows of a block-format weight in one format.
pub struct Segment {
    /// Index of its format's kernels in `CudaBackend::quant`.
    kernels: usize,
    first_row: usize,
    rows: usize,
    /// Where its bytes start in the weight's allocation.
    offset: usize,
}

/// How a weight's bytes are laid out.
pub enum Layout {
    /// Values in the backend's storage type.
    Plain,
    /// A matrix of `cols` columns in block formats, segment by segment, top to bottom.
    Blocks { cols: usize, segments: Vec<Segment> },
}

/// Segments start at multiples of this many bytes, for the kernels' 16-byte loads.
const SEGMENT_ALIGN: usize = 256;

/// Bytes after the last block of a weight, for kernels/quant.cu's `Words`.
pub const TAIL: usize = 16;

/// The most bytes a prompt product dequantizes at once (a chunk of a segment's rows): an
/// output matrix of 262144 x 640 would take 671 MB in f32.
const DEQUANTIZED_BYTES: usize = 64 << 20;

impl CudaBackend {
    /// The index in `self.quant` of the kernels for `format`, compiled on first use; None for a
    /// format without kernels.
    fn quant_kernels(&self, format: &Format) -> Result<Option<usize>> {
        if let Some(i) = self
            .quant
            .borrow()
            .iter()
            .position(|k| k.format.id == format.id)
        {
            return Ok(Some(i));
        }
        let Some(&entry) = FORMATS.iter().find(|f| f.0 == format.name) else {
            return Ok(None);
        };
        let kernels = QuantKernels::compile(self, entry)?;
        let mut table = self.quant.borrow_mut();
        table.push(kernels);
        Ok(Some(table.len() - 1))
    }

    /// `m` kept in its formats where every part's format has kernels; None where one has none.
    pub(super) fn upload_block_matrix(&self, m: &BlockMatrix) -> Result<Option<CudaWeight>> {
        let mut segments = Vec::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut first_row = 0;
        for p in &m.parts {
            let Some(kernels) = self.quant_kernels(p.format)? else {
                return Ok(None);
            };
            bytes.resize(bytes.len().next_multiple_of(SEGMENT_ALIGN), 0);
            segments.push(Segment {
                kernels,
                first_row,
                rows: p.rows,
                offset: bytes.len(),
            });
            bytes.extend_from_slice(&p.bytes);
            first_row += p.rows;
        }
        // The kernels' word loads of blocks of an even size read a few bytes past a block.
        bytes.resize(bytes.len() + TAIL, 0);
        let data = self.stream.clone_htod(&bytes).map_err(cuda_err)?;
        Ok(Some(CudaWeight {
            data,
            layout: Layout::Blocks {
                cols: m.cols,
                segments,
            },
        }))
    }

    /// out[rows, n_out] = x . w^T (+ bias) through the epilogue, for a weight in block formats
    /// (`product` checked the shapes): each segment writes its own columns of out.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn block_product(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        w: &CudaWeight,
        segments: &[Segment],
        bias: Option<&CudaWeight>,
        (n_out, n_in): (usize, usize),
        out: &mut CudaSlice<f32>,
        (accumulate, act, early): (bool, u32, bool),
        norm: Option<&NormSpec<CudaWeight>>,
    ) -> Result<()> {
        let (w_ptr, out_ptr, bias_ptr) =
            (self.ptr(&w.data), self.ptr(out), self.optional_ptr(bias));
        let bias_at = |row: usize| {
            if bias_ptr == 0 {
                0
            } else {
                bias_ptr + (row * self.dtype.bytes()) as u64
            }
        };
        if rows <= GEMV_ROWS {
            for s in segments {
                let mut args = vec![
                    Arg::P(self.ptr(x)),
                    Arg::P(w_ptr + s.offset as u64),
                    Arg::P(bias_at(s.first_row)),
                    Arg::P(out_ptr + (s.first_row * 4) as u64),
                    Arg::U(s.rows as u32),
                    Arg::U(n_in as u32),
                    Arg::U(n_out as u32),
                    Arg::U(accumulate as u32),
                    Arg::U(act),
                    Arg::U(early as u32),
                ];
                args.extend(self.norm_args(norm));
                let f = self.quant.borrow()[s.kernels].gemv[rows - 1].clone();
                self.launch_gemv(&f, (s.rows, n_in), rows, norm.is_some(), args)?;
            }
            return Ok(());
        }
        // Each segment dequantized into the scratch a chunk of rows at a time, then cuBLAS into
        // its columns of out.
        let xs;
        let (xp, xt) = if self.dtype == CudaDtype::F32 {
            (self.ptr(x), cudarc::cublas::sys::cudaDataType::CUDA_R_32F)
        } else {
            xs = self.to_storage(x, rows * n_in)?;
            (self.ptr(&xs), self.dtype.blas_type())
        };
        let chunk = (DEQUANTIZED_BYTES / (n_in * self.dtype.bytes())).max(1);
        for s in segments {
            for first in (0..s.rows).step_by(chunk) {
                let n = chunk.min(s.rows - first);
                let scratch = self.dequantize_rows(w_ptr, s, first..first + n, n_in)?;
                self.gemm(
                    true,
                    false,
                    n,
                    rows,
                    n_in,
                    (scratch, n_in),
                    (xp, n_in, xt),
                    (out_ptr + ((s.first_row + first) * 4) as u64, n_out),
                    if accumulate { 1.0 } else { 0.0 },
                )?;
            }
        }
        self.bias_act(out, bias, rows, n_out, act)
    }

    /// Rows `which` of segment `s` of the weight at `w_ptr` (rows of `cols`) in the storage
    /// type, in the dequantization scratch (grown as needed); returns its address.
    fn dequantize_rows(
        &self,
        w_ptr: u64,
        s: &Segment,
        which: std::ops::Range<usize>,
        cols: usize,
    ) -> Result<u64> {
        let rows = which.len();
        let need = rows * cols * self.dtype.bytes();
        let mut scratch = self.dequantized.borrow_mut();
        if scratch.len() < need {
            *scratch = self.uninit::<u8>(need)?;
        }
        let table = self.quant.borrow();
        let k = &table[s.kernels];
        let threads = rows * k.shares_per_row(cols);
        let row_bytes = cols / k.format.block_values * k.format.block_bytes;
        let args = [
            Arg::P(w_ptr + (s.offset + which.start * row_bytes) as u64),
            Arg::P(self.ptr(&scratch)),
            Arg::U(rows as u32),
            Arg::U(cols as u32),
        ];
        self.launch(&k.dequantize, (threads.div_ceil(256) as u32, 1), 256, &args)?;
        Ok(self.ptr(&scratch))
    }

    /// out[r] = table[ids[r]] from a table in block formats of `dim` columns.
    pub(super) fn block_embed(
        &self,
        table: &CudaWeight,
        segments: &[Segment],
        ids: &[u32],
        dim: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let ids_dev = self.stream.clone_htod(ids).map_err(cuda_err)?;
        for s in segments {
            let args = [
                Arg::P(self.ptr(&table.data) + s.offset as u64),
                Arg::P(self.ptr(&ids_dev)),
                Arg::P(self.ptr(out)),
                Arg::U(dim as u32),
                Arg::U(s.first_row as u32),
                Arg::U(s.rows as u32),
            ];
            let f = self.quant.borrow()[s.kernels].embed.clone();
            self.launch(&f, (ids.len() as u32, 1), 256, &args)?;
        }
        Ok(())
    }
}

impl CudaWeight {
    /// (rows, columns) of a weight in block formats; None for a plain one.
    pub(super) fn block_shape(&self) -> Option<(usize, usize)> {
        match &self.layout {
            Layout::Plain => None,
            Layout::Blocks { cols, segments } => {
                Some((segments.iter().map(|s| s.rows).sum(), *cols))
            }
        }
    }

    /// The weight's bytes as plain values, for the ops that read no block format (norms,
    /// biases, position tables, the paired products).
    pub(super) fn plain(&self, what: &str) -> Result<&CudaSlice<u8>> {
        match self.layout {
            Layout::Plain => Ok(&self.data),
            Layout::Blocks { .. } => Err(Error::Backend {
                backend: "cuda",
                reason: format!("the {what} is in a block format, which this op does not read"),
            }),
        }
    }
}
