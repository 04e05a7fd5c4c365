//! `cargo bench --bench ops`: the op families on every backend present, so a kernel change
//! shows its effect without the full model bench. Products per weight format at a decode shape
//! (one row, reported as weight bytes read per second) and a prompt shape (512 rows, reported
//! as multiply-adds x 2 per second, i.e. FLOP/s); decode attention with score accumulation over
//! a 2,048-token cache; eviction of that cache to half; sampling from a 128k vocabulary.
//!
//! GPU ops run asynchronously: each measurement launches its iterations and then reads one
//! value back, so the time is the device's. Backends that cannot start here are skipped with a
//! line saying why. Shapes: Llama-3-8B's 4096 x 4096 projection on GPUs, 1024 x 1024 on the
//! CPU (2 cores in CI would take minutes per point at the full shape).

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keyformer::backend::cuda::{CudaBackend, CudaDtype};
use keyformer::backend::wgpu::{WgpuBackend, WgpuOptions};
use keyformer::backend::{AttentionSpec, Backend, SeqStep};
use keyformer::engine::sampling::Sampler;
use keyformer::kv::{CacheShape, Keep, StepScore};
use keyformer::model::config::{Positions, RopePairs};
use keyformer::model::quant::{Format, by_name};
use keyformer::model::tensor::{BlockMatrix, BlockRows};
use keyformer::{CpuBackend, SamplingParams};

/// "plain" is the backend's unquantized storage (f16 on GPUs, f32 on the CPU).
const FORMATS: [&str; 8] = [
    "plain", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q5_0", "Q4_0", "Q4_1",
];

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

/// A weight of `n_out` x `n_in` in `format` (a plain float format: the backend's storage type).
fn weight<B: Backend>(b: &B, format: &'static Format, n_out: usize, n_in: usize) -> B::Weight {
    let w = values(n_out * n_in, 1);
    if format.block_values == 1 {
        return b.upload_weight(w).unwrap();
    }
    let bytes = format.quantize(&w).unwrap();
    let rows = BlockRows::new(format, n_out, n_in, bytes).unwrap();
    b.upload_blocks(BlockMatrix::stack(vec![rows]).unwrap())
        .unwrap()
}

/// Times `iters` runs of `op` ending with one read-back of `sync`, which waits for the device:
/// every backend reads back in the order of its work (one CUDA stream, one wgpu queue).
fn timed<B: Backend>(b: &B, sync: &B::Buf, iters: u64, mut op: impl FnMut()) -> Duration {
    b.download(sync, 1).unwrap();
    let t0 = Instant::now();
    for _ in 0..iters {
        op();
    }
    b.download(sync, 1).unwrap();
    t0.elapsed()
}

fn products<B: Backend>(c: &mut Criterion, name: &str, b: &B, dim: usize) {
    for rows in [1usize, 512] {
        let mut group = c.benchmark_group(format!("linear/{name}/{dim}x{dim}/rows={rows}"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(2));
        let x = b.upload(&values(rows * dim, 2)).unwrap();
        let mut out = b.zeros(rows * dim).unwrap();
        for f in FORMATS {
            let format = by_name(if f == "plain" { "F32" } else { f }).unwrap();
            let w = weight(b, format, dim, dim);
            let bytes = b.weight_bytes(&w) as u64;
            group.throughput(if rows == 1 {
                Throughput::Bytes(bytes)
            } else {
                Throughput::Elements(2 * (rows * dim * dim) as u64)
            });
            group.bench_function(BenchmarkId::from_parameter(f), |bench| {
                bench.iter_custom(|iters| {
                    timed(b, &x, iters, || {
                        b.linear(&x, rows, &w, None, dim, dim, &mut out).unwrap()
                    })
                })
            });
        }
        group.finish();
    }
}

fn attention<B: Backend>(c: &mut Criterion, name: &str, b: &B) {
    // Llama-3-8B's attention: 32 query heads over 8 kv heads of 128.
    let (heads, kv_heads, hd, held) = (32usize, 8usize, 128usize, 2048usize);
    let positions = Positions::Rotary {
        dims: hd,
        pairs: RopePairs::Halves,
        inv_freq: (0..hd / 2)
            .map(|i| 500000f32.powf(-2.0 * i as f32 / hd as f32))
            .collect(),
        scale: 1.0,
    };
    let spec = AttentionSpec {
        heads,
        kv_heads,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        positions: &positions,
        softcap: None,
        window: None,
    };
    let width = (heads + 2 * kv_heads) * hd;
    let shape = CacheShape {
        layers: 1,
        kv_heads,
        head_dim: hd,
        capacity: held + 1,
    };
    let mut cache = b.new_cache(&shape).unwrap();
    let prompt = b.upload(&values(held * width, 3)).unwrap();
    let mut out = b.zeros(held * heads * hd).unwrap();
    b.attention(&spec, &prompt, held, 0, &mut cache, 0, None, &mut out)
        .unwrap();
    let qkv = b.upload(&values(width, 4)).unwrap();
    let mut row = b.zeros(heads * hd).unwrap();
    let score = StepScore {
        noise: true,
        tau: 1.5,
        seed: 7,
    };
    let keep = Keep {
        budget: held,
        sinks: 0,
        recent: 64,
    };
    let mut group = c.benchmark_group(format!("attention/{name}/decode/{held}"));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    // K and V of every cached token are read once per step.
    group.throughput(Throughput::Bytes(
        (2 * held * kv_heads * hd * b.kv_value_bytes()) as u64,
    ));
    group.bench_function("keyformer_score_and_evict", |bench| {
        bench.iter_custom(|iters| {
            let t0 = Instant::now();
            for i in 0..iters {
                let seq = SeqStep {
                    cache: &mut cache,
                    position: held + i as usize,
                    score: Some(score),
                    keep: Some(keep),
                };
                b.attention_batch(&spec, &qkv, &mut [seq], 0, &mut row)
                    .unwrap();
            }
            b.download(&row, 1).unwrap();
            t0.elapsed()
        })
    });
    group.finish();
}

fn sampling<B: Backend>(c: &mut Criterion, name: &str, b: &B) {
    let vocab = 128_256;
    let logits = b.upload(&values(vocab, 5)).unwrap();
    let mut group = c.benchmark_group(format!("sample/{name}/{vocab}"));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    for (label, params) in [
        ("greedy", SamplingParams::default()),
        (
            "top_p",
            SamplingParams {
                temperature: 0.8,
                top_p: 0.9,
                ..Default::default()
            },
        ),
    ] {
        let mut sampler = Sampler::new(params);
        group.bench_function(label, |bench| {
            bench.iter(|| b.sample(&logits, vocab, &mut sampler).unwrap())
        });
    }
    group.finish();
}

fn eviction<B: Backend>(c: &mut Criterion, name: &str, b: &B) {
    let (kv_heads, hd, held) = (8usize, 128usize, 2048usize);
    let positions = Positions::Rotary {
        dims: hd,
        pairs: RopePairs::Halves,
        inv_freq: vec![1.0; hd / 2],
        scale: 1.0,
    };
    let spec = AttentionSpec {
        heads: kv_heads,
        kv_heads,
        head_dim: hd,
        scale: 0.1,
        positions: &positions,
        softcap: None,
        window: None,
    };
    let width = 3 * kv_heads * hd;
    let prompt = b.upload(&values(held * width, 6)).unwrap();
    let mut out = b.zeros(held * kv_heads * hd).unwrap();
    let shape = CacheShape {
        layers: 1,
        kv_heads,
        head_dim: hd,
        capacity: held,
    };
    let score = StepScore {
        noise: false,
        tau: 1.0,
        seed: 1,
    };
    let keep = Keep {
        budget: held / 2,
        sinks: 4,
        recent: 64,
    };
    let mut group = c.benchmark_group(format!("evict/{name}/{held}_to_{}", held / 2));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    group.bench_function("h2o_scores", |bench| {
        bench.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let mut cache = b.new_cache(&shape).unwrap();
                let s = Some(&score);
                b.attention(&spec, &prompt, held, 0, &mut cache, 0, s, &mut out)
                    .unwrap();
                b.download(&out, 1).unwrap();
                let t0 = Instant::now();
                b.evict(&mut cache, 0, &keep).unwrap();
                b.download(&out, 1).unwrap();
                spent += t0.elapsed();
            }
            spent
        })
    });
    group.finish();
}

fn every_op<B: Backend>(c: &mut Criterion, name: &str, b: &B, dim: usize) {
    products(c, name, b, dim);
    attention(c, name, b);
    eviction(c, name, b);
    sampling(c, name, b);
}

fn benches(c: &mut Criterion) {
    every_op(c, "cpu", &CpuBackend, 1024);
    match CudaBackend::new(0, CudaDtype::F16) {
        Ok(b) => every_op(c, "cuda", &b, 4096),
        Err(e) => println!("SKIP cuda: {e}"),
    }
    match WgpuBackend::new(WgpuOptions::default()) {
        Ok(b) => every_op(c, "wgpu", &b, 4096),
        Err(e) => println!("SKIP wgpu: {e}"),
    }
}

criterion_group!(ops, benches);
criterion_main!(ops);
