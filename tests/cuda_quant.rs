//! The CUDA backend's block-format weights (kernels/quant.cu) against the CPU oracle, and the
//! decode products' bandwidth. Each test prints SKIP and returns where there is no CUDA device.

mod common;

use std::time::Instant;

use common::ops::Rng;
use common::quant_ops::{QUANT_FORMATS, quant_table, random_matrix};
use common::{gemma3_path, greedy_matches_cpu};
use keyformer::Model;
use keyformer::backend::Backend;
use keyformer::backend::cuda::{CudaBackend, CudaDtype};
use keyformer::model::tensor::{BlockMatrix, BlockRows};

fn cuda(test: &str, dtype: CudaDtype) -> Option<CudaBackend> {
    match CudaBackend::new(0, dtype) {
        Ok(b) => Some(b),
        Err(e) => {
            common::skip_if_absent(test, &e);
            None
        }
    }
}

/// Products and embedding rows of weights kept in every block format, against the CPU's f32
/// result of the dequantized weights: the decode kernels read the blocks in f32 in every
/// storage type; prompt products go through the storage type.
#[test]
fn quant_op_table_f32() {
    let Some(b) = cuda("quant_op_table_f32", CudaDtype::F32) else {
        return;
    };
    quant_table(&b, 31, 1e-5, 1e-5);
}

#[test]
fn quant_op_table_f16() {
    let Some(b) = cuda("quant_op_table_f16", CudaDtype::F16) else {
        return;
    };
    quant_table(&b, 32, 1e-5, 2e-3);
}

#[test]
fn quant_op_table_bf16() {
    let Some(b) = cuda("quant_op_table_bf16", CudaDtype::Bf16) else {
        return;
    };
    quant_table(&b, 33, 1e-5, 1.6e-2);
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
/// the alignment of its segments), not f32 or the storage type's size.
#[test]
fn block_formats_stay_quantized() {
    let Some(b) = cuda("block_formats_stay_quantized", CudaDtype::F16) else {
        return;
    };
    let mut rng = Rng(41);
    for (name, _) in QUANT_FORMATS {
        let m = random_matrix(&mut rng, &[(name, 64), ("Q8_0", 3)], 512);
        let file_bytes = m.bytes();
        let w = b.upload_blocks(m).unwrap();
        let bytes = b.weight_bytes(&w);
        println!("{name}: {file_bytes} bytes in the file, {bytes} on the device");
        assert!(
            bytes >= file_bytes && bytes <= file_bytes + 256,
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
        for (name, _) in QUANT_FORMATS {
            let m = random_matrix(&mut rng, &[(name, n_out)], n_in);
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
