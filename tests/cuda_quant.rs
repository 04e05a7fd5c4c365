//! The CUDA backend's block-format weights (kernels/quant.cu) against the CPU oracle, and the
//! decode products' bandwidth. Each test prints SKIP and returns where there is no CUDA device.

mod common;

use std::time::Instant;

use common::ops::{Rng, rel_error};
use common::quant_ops::{QUANT_FORMATS, check_quant_products, format, random_matrix};
use common::{gemma3_path, greedy_matches_cpu};
use keyformer::backend::Backend;
use keyformer::backend::cuda::{CudaBackend, CudaDtype};
use keyformer::model::tensor::{BlockMatrix, BlockRows};
use keyformer::{CpuBackend, Model};

fn cuda(test: &str, dtype: CudaDtype) -> Option<CudaBackend> {
    match CudaBackend::new(0, dtype) {
        Ok(b) => Some(b),
        Err(e) => {
            common::skip_if_absent(test, &e);
            None
        }
    }
}

/// Every block format's products and embedding rows against the CPU on the same blocks
/// (tests/common/quant_ops.rs). The decode kernels (up to four rows) read the blocks in f32 in
/// every storage type; larger products dequantize to the storage type for cuBLAS, hence the
/// storage type's tolerance.
fn run_quant_products(test: &str, dtype: CudaDtype, tolerance: f32, seed: u64) {
    let Some(b) = cuda(test, dtype) else {
        return;
    };
    let rows = check_quant_products(&b, &|_| tolerance, seed);
    let worst = rows.iter().map(|r| r.error).fold(0f32, f32::max);
    println!("{} cases, largest error {worst:e}", rows.len());
}

#[test]
fn quant_products_f32() {
    run_quant_products("quant_products_f32", CudaDtype::F32, 1e-5, 51);
}

#[test]
fn quant_products_f16() {
    run_quant_products("quant_products_f16", CudaDtype::F16, 2e-3, 52);
}

#[test]
fn quant_products_bf16() {
    run_quant_products("quant_products_bf16", CudaDtype::Bf16, 1.6e-2, 53);
}

/// Decode products over rows long enough that several warps share an output (8192 columns and
/// more), with a part of a lane step at the end, and one row of 64 outputs short of a block of
/// warps, against the CPU on the same blocks.
#[test]
fn long_rows_match_cpu() {
    let Some(b) = cuda("long_rows_match_cpu", CudaDtype::F32) else {
        return;
    };
    let cpu = CpuBackend;
    let mut rng = Rng(61);
    for (i, name) in QUANT_FORMATS.into_iter().enumerate() {
        let f = format(name);
        let n_in = 8192 + f.block_values;
        for (rows, n_out) in [(1, 7), (4, 5)] {
            let m = || random_matrix(900 + i as u64, &[(f, n_out)], n_in);
            let x = rng.values(rows * n_in, 1.0);
            let (got, want) = (product(&b, m(), &x, rows), product(&cpu, m(), &x, rows));
            let error = rel_error(&got, &want);
            println!("{name} rows {rows} out {n_out} in {n_in}: {error:.2e}");
            assert!(
                error <= 1e-5,
                "{name} rows {rows}: relative error {error:e}"
            );
        }
    }
}

fn product<B: Backend>(b: &B, m: BlockMatrix, x: &[f32], rows: usize) -> Vec<f32> {
    let (n_out, n_in) = (m.rows(), m.cols);
    let w = b.upload_blocks(m).unwrap();
    let x = b.upload(x).unwrap();
    let mut out = b.zeros(rows * n_out).unwrap();
    b.linear(&x, rows, &w, None, n_out, n_in, &mut out).unwrap();
    b.download(&out, rows * n_out).unwrap()
}

/// Gemma-3-270M from its own Q4_K_M file: every readable block format stays in blocks on both
/// backends, and the greedy tokens are the CPU's.
#[test]
fn gemma3_greedy_matches_cpu_in_f32() {
    let test = "gemma3_greedy_matches_cpu_in_f32";
    let Some(path) = gemma3_path(test) else {
        return;
    };
    let Some(b) = cuda(test, CudaDtype::F32) else {
        return;
    };
    let gpu = Model::load(&path, b, &mut |_, _| {}).unwrap();
    let got = greedy_matches_cpu(&path, &gpu, 32);
    println!("cuda: {:?}", got.text);
}

/// Every block format stays in its blocks on the device: a weight takes its file's bytes (plus
/// the alignment of its second segment and a 16-byte tail), not f32 or the storage type's size.
#[test]
fn block_formats_stay_quantized() {
    let Some(b) = cuda("block_formats_stay_quantized", CudaDtype::F16) else {
        return;
    };
    for name in QUANT_FORMATS {
        let m = random_matrix(7, &[(format(name), 64), (format("Q8_0"), 3)], 512);
        let file_bytes = m.bytes();
        let w = b.upload_blocks(m).unwrap();
        let bytes = b.weight_bytes(&w);
        println!("{name}: {file_bytes} bytes in the file, {bytes} on the device");
        assert!(
            bytes >= file_bytes && bytes <= file_bytes + 256 + 16,
            "{name}: {bytes} bytes on the device for {file_bytes} in the file"
        );
    }
}

/// Decode products of one row at Llama-3-8B's MLP shapes for plain f16 weights and each block
/// format: microseconds and GB/s of weight bytes read, rotating over copies that together
/// exceed the L2 cache. A measurement, not a check: run it by name with `--ignored`.
#[test]
#[ignore]
fn block_gemv_bandwidth() {
    let Some(b) = cuda("block_gemv_bandwidth", CudaDtype::F16) else {
        return;
    };
    let mut rng = Rng(5);
    for (n_out, n_in) in [(14336, 4096), (4096, 14336)] {
        let x = b.upload(&rng.values(n_in, 1.0)).unwrap();
        let mut out = b.zeros(n_out).unwrap();
        let plain = rng.values(n_out * n_in, 0.02);
        let mut cases: Vec<(&str, Vec<_>)> = Vec::new();
        let copies = |bytes: usize| (256usize << 20).div_ceil(bytes);
        let n = copies(plain.len() * 2);
        let w = (0..n).map(|_| b.upload_weight(plain.clone()).unwrap());
        cases.push(("F16", w.collect()));
        for (i, name) in QUANT_FORMATS.into_iter().enumerate() {
            let m = random_matrix(i as u64, &[(format(name), n_out)], n_in);
            let n = copies(m.bytes());
            let parts = |m: &BlockMatrix| {
                let p = &m.parts[0];
                let rows = BlockRows::new(p.format, p.rows, p.cols, p.bytes.clone());
                BlockMatrix::stack(vec![rows.unwrap()]).unwrap()
            };
            let w = (0..n).map(|_| b.upload_blocks(parts(&m)).unwrap());
            cases.push((name, w.collect()));
        }
        for (label, ws) in &cases {
            let run = |reps: usize, out: &mut _| {
                for i in 0..reps {
                    let w = &ws[i % ws.len()];
                    b.linear(&x, 1, w, None, n_out, n_in, out).unwrap();
                }
                b.download(out, 1).unwrap();
            };
            run(ws.len(), &mut out);
            let reps = 20 * ws.len();
            let t = Instant::now();
            run(reps, &mut out);
            let s = t.elapsed().as_secs_f64() / reps as f64;
            let bytes = b.weight_bytes(&ws[0]) as f64;
            println!(
                "{label:<7} {n_out:>5} x {n_in:<5}: {:>7.1} us {:>6.0} GB/s",
                s * 1e6,
                bytes / s / 1e9
            );
        }
    }
}
