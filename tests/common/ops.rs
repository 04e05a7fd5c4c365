//! The cross-backend op table: every op on several shapes, run on a backend and on the CPU
//! oracle from the same seeded random inputs, compared by relative error; cached positions and
//! kept-token sets compared exactly except where two candidates' scores are near-ties.

use keyformer::backend::{AttentionSpec, Backend, NormSpec, SeqStep};
use keyformer::engine::sampling::{Draw, Sampler, SamplingParams};
use keyformer::kv::{CacheShape, Keep, StepScore};
use keyformer::model::config::{Activation, NormKind, Positions, RopePairs};
use keyformer::model::weights::Linear;
use keyformer::{CpuBackend, Result};

/// Seeded uniform values in [-scale, scale).
pub struct Rng(pub u64);

impl Rng {
    pub fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

/// max |a - b| / max |b|.
pub fn rel_error(actual: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(actual.len(), reference.len());
    let scale = reference
        .iter()
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(f32::MIN_POSITIVE);
    actual
        .iter()
        .zip(reference)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// Relative score gap under which two eviction candidates count as tied.
pub const NEAR_TIE: f32 = 1e-3;

/// One op's result: its name, the relative error against the CPU, the tolerance.
pub struct Row {
    pub op: String,
    pub error: f32,
}

/// Runs every op on `b` and on the CPU, returns the table and panics on the first op over
/// `tolerance` (after printing the table so far).
pub fn op_table<B: Backend>(b: &B, tolerance: f32, seed: u64) -> Vec<Row> {
    println!(
        "op table on {} (seed {seed}, tolerance {tolerance:e})",
        b.name()
    );
    let cpu = CpuBackend;
    let mut rng = Rng(seed);
    let mut rows = Vec::new();
    let mut record = |op: String, error: f32| {
        println!("  {op:<60} {error:.2e}");
        assert!(
            error <= tolerance,
            "{op}: relative error {error:e} over {tolerance:e}"
        );
        rows.push(Row { op, error });
    };

    for (vocab, dim, n) in [(37, 70, 5), (1000, 256, 1)] {
        let table = rng.values(vocab * dim, 1.0);
        let ids: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
        let (got, want) = (embed(b, &table, &ids, dim), embed(&cpu, &table, &ids, dim));
        record(
            format!("embed vocab {vocab} dim {dim} rows {n}"),
            rel_error(&got, &want),
        );
        let x = rng.values(n * dim, 1.0);
        let got = add_positions(b, &x, &table, 2, n, dim).unwrap();
        let want = add_positions(&cpu, &x, &table, 2, n, dim).unwrap();
        record(
            format!("add_positions dim {dim} rows {n}"),
            rel_error(&got, &want),
        );
    }

    for (kind, bias) in [
        (NormKind::LayerNorm, true),
        (NormKind::LayerNorm, false),
        (NormKind::RmsNorm, false),
    ] {
        for (rows, dim) in [(1, 70), (5, 576), (3, 4096)] {
            let x = rng.values(rows * dim, 3.0);
            let w = rng.values(dim, 1.0);
            let bv = bias.then(|| rng.values(dim, 1.0));
            let got = norm(b, kind, &x, &w, bv.as_deref(), rows, dim).unwrap();
            let want = norm(&cpu, kind, &x, &w, bv.as_deref(), rows, dim).unwrap();
            record(
                format!("norm {kind:?} bias {bias} rows {rows} dim {dim}"),
                rel_error(&got, &want),
            );
        }
    }

    // One-row products take the gemv: n_in 100 is a whole number of f32 16-byte units but not
    // of f16 ones, 1160 leaves a part pass of units, 4096 is a model's width; from 8192 the
    // CUDA gemv splits each row over four warps (8194 on the scalar path). Where wgpu has
    // cooperative matrices, (64, 128, 64) is one whole tile of them and (70, 208, 160) ends
    // in part tiles both ways.
    for (rows, n_out, n_in) in [
        (1, 37, 70),
        (1, 1000, 256),
        (1, 45, 100),
        (1, 70, 1160),
        (1, 300, 4096),
        (3, 40, 8200),
        (1, 30, 8194),
        (7, 130, 96),
        (33, 67, 200),
        (64, 128, 64),
        (70, 208, 160),
    ] {
        for bias in [false, true] {
            let x = rng.values(rows * n_in, 1.0);
            let w = rng.values(n_out * n_in, 0.2);
            let bv = bias.then(|| rng.values(n_out, 1.0));
            let got = linear(b, &x, rows, &w, bv.as_deref(), n_out, n_in).unwrap();
            let want = linear(&cpu, &x, rows, &w, bv.as_deref(), n_out, n_in).unwrap();
            record(
                format!("linear rows {rows} out {n_out} in {n_in} bias {bias}"),
                rel_error(&got, &want),
            );
        }
    }

    // The fused products: into the residual stream, and through the MLP's activation.
    for (rows, n_out, n_in) in [(1, 1000, 256), (7, 130, 96), (70, 208, 160)] {
        for act in [
            None,
            Some(Activation::GeluErf),
            Some(Activation::GeluTanh),
            Some(Activation::SwiGlu),
            Some(Activation::GeGluTanh),
        ] {
            let x = rng.values(rows * n_in, 1.0);
            let w = rng.values(n_out * n_in, 0.2);
            let bias = rng.values(n_out, 1.0);
            let residual = rng.values(rows * n_out, 1.0);
            let inputs = (&x[..], &w[..], &bias[..], &residual[..]);
            let got = fused_linear(b, inputs, rows, n_out, n_in, act).unwrap();
            let want = fused_linear(&cpu, inputs, rows, n_out, n_in, act).unwrap();
            let what = act.map_or("residual".to_string(), |a| format!("{a:?}"));
            record(
                format!("linear {what} rows {rows} out {n_out} in {n_in}"),
                rel_error(&got, &want),
            );
        }
    }

    // A parallel block's pairs of products over a LayerNorm: the CUDA backend runs up to four
    // GELU rows in one launch per pair, folding the norm in up to 1024 wide (n_in 100 takes the
    // f16 scalar path); more rows and SwiGLU run in turn.
    for (rows, n_a, n_b, n_in, act) in [
        (1, 300, 1000, 256, Activation::GeluErf),
        (1, 45, 70, 100, Activation::GeluTanh),
        (3, 130, 64, 96, Activation::GeluErf),
        (2, 50, 60, 4160, Activation::GeluTanh),
        (7, 37, 50, 70, Activation::GeluTanh),
        (1, 30, 80, 64, Activation::SwiGlu),
        (1, 30, 80, 64, Activation::GeGluTanh),
        (3, 40, 60, 96, Activation::GeGluTanh),
    ] {
        let x = rng.values(rows * n_in, 3.0);
        let (nw, nb) = (rng.values(n_in, 1.0), rng.values(n_in, 1.0));
        let a = HostLinear::random(&mut rng, n_a, n_in, false);
        let p = HostLinear::random(&mut rng, n_b, n_in, true);
        let inputs = (&x[..], &nw[..], &nb[..], (&a, &p));
        let got = norm_pair(b, inputs, rows, act).unwrap();
        let want = norm_pair(&cpu, inputs, rows, act).unwrap();
        record(
            format!("norm linear pair {act:?} rows {rows} out {n_a}+{n_b} in {n_in}"),
            rel_error(&got, &want),
        );
    }
    // The output pair: CUDA streams the first product before waiting (8200 columns: split).
    for (rows, n_out, n_a, n_b) in [
        (1, 300, 256, 1000),
        (2, 45, 100, 70),
        (4, 130, 96, 1160),
        (6, 37, 64, 32),
        (2, 50, 8200, 1000),
    ] {
        let (x_a, x_b) = (rng.values(rows * n_a, 1.0), rng.values(rows * n_b, 1.0));
        let a = HostLinear::random(&mut rng, n_out, n_a, rows % 2 == 0);
        let p = HostLinear::random(&mut rng, n_out, n_b, true);
        let residual = rng.values(rows * n_out, 1.0);
        let inputs = ((&x_a[..], &a), (&x_b[..], &p));
        let got = residual_pair(b, rows, inputs, &residual).unwrap();
        let want = residual_pair(&cpu, rows, inputs, &residual).unwrap();
        record(
            format!("linear residual pair rows {rows} out {n_out} in {n_a}+{n_b}"),
            rel_error(&got, &want),
        );
    }

    // Norms folded into the product: the GPU backends fold rows of up to 1024 into the gemv,
    // one row on wgpu and up to four on CUDA (n_in 100 takes the scalar path on f16); other
    // calls run the norm first.
    for (kind, bias) in [
        (NormKind::LayerNorm, true),
        (NormKind::LayerNorm, false),
        (NormKind::RmsNorm, false),
    ] {
        for (rows, n_out, n_in, act) in [
            (1, 960, 576, None),
            (1, 45, 100, Some(Activation::GeluTanh)),
            (1, 3072, 576, Some(Activation::SwiGlu)),
            (3, 130, 96, Some(Activation::SwiGlu)),
            (1, 3072, 576, Some(Activation::GeGluTanh)),
            (1, 130, 100, Some(Activation::GeGluTanh)),
            (3, 130, 96, Some(Activation::GeGluTanh)),
            (4, 64, 1024, Some(Activation::GeluErf)),
            (2, 40, 2100, None),
        ] {
            let x = rng.values(rows * n_in, 3.0);
            let nw = rng.values(n_in, 1.0);
            let nb = bias.then(|| rng.values(n_in, 1.0));
            let w = rng.values(n_out * n_in, 0.2);
            let inputs = (&x[..], &nw[..], nb.as_deref(), &w[..]);
            let got = norm_product(b, kind, inputs, rows, (n_out, n_in), act).unwrap();
            let want = norm_product(&cpu, kind, inputs, rows, (n_out, n_in), act).unwrap();
            let what = act.map_or("linear".to_string(), |a| format!("{a:?}"));
            record(
                format!("norm {kind:?} bias {bias} {what} rows {rows} out {n_out} in {n_in}"),
                rel_error(&got, &want),
            );
        }
    }

    for act in [
        Activation::GeluErf,
        Activation::GeluTanh,
        Activation::SwiGlu,
        Activation::GeGluTanh,
    ] {
        let (rows, width) = (3, 77);
        let x = rng.values(rows * 2 * width, 4.0);
        let got = activation(b, act, &x, rows, width).unwrap();
        let want = activation(&cpu, act, &x, rows, width).unwrap();
        record(
            format!("activation {act:?} rows {rows} width {width}"),
            rel_error(&got, &want),
        );
    }

    let x = rng.values(300, 1.0);
    let y = rng.values(300, 1.0);
    record(
        "add 300".into(),
        rel_error(&add(b, &x, &y).unwrap(), &add(&cpu, &x, &y).unwrap()),
    );

    let logits = rng.values(1000, 5.0);
    let greedy = SamplingParams::default();
    let got = b
        .sample(
            &b.upload(&logits).unwrap(),
            1000,
            &mut Sampler::new(greedy.clone()),
        )
        .unwrap();
    let want = cpu
        .sample(&logits, 1000, &mut Sampler::new(greedy))
        .unwrap();
    record(
        "sample argmax vocab 1000".into(),
        if got == want { 0.0 } else { 1.0 },
    );
    // Logits holding a NaN give no token, greedy or drawn, on every backend.
    let mut broken = logits.clone();
    broken[617] = f32::NAN;
    let device_broken = b.upload(&broken).unwrap();
    let top_k = SamplingParams {
        temperature: 1.0,
        top_k: 40,
        ..Default::default()
    };
    for (name, params) in [("argmax", SamplingParams::default()), ("top-k", top_k)] {
        let refused = |r: keyformer::Result<u32>| matches!(r, Err(keyformer::Error::NanLogits));
        let got = b.sample(&device_broken, 1000, &mut Sampler::new(params.clone()));
        let want = cpu.sample(&broken, 1000, &mut Sampler::new(params));
        record(
            format!("sample {name} refuses a NaN logit"),
            if refused(got) && refused(want) {
                0.0
            } else {
                1.0
            },
        );
    }

    // Temperature / top-k / top-p: each seed's first draw on the device against the host
    // sampler's. A different token counts as an error unless the host's f64 sums put that draw
    // within a near-tie of the boundary between the two tokens.
    for vocab in [49152, 50257] {
        let smooth = rng.values(vocab, 8.0);
        // Steps of 1/4: runs of equal logits, so cuts and draws fall inside ties.
        let steps: Vec<f32> = smooth.iter().map(|x| (x * 4.0).round() / 4.0).collect();
        let cases = [
            ("temperature", &smooth, 0.8, 0, 1.0),
            ("top-k", &smooth, 1.0, 40, 1.0),
            ("top-p", &smooth, 1.5, 0, 0.9),
            ("top-k top-p", &smooth, 0.7, 500, 0.6),
            ("ties top-k", &steps, 1.0, 1000, 1.0),
            ("ties top-p", &steps, 2.0, 0, 0.5),
        ];
        for (name, logits, temperature, top_k, top_p) in cases {
            let device_logits = b.upload(logits).unwrap();
            let (mut differ, mut wrong) = (0, 0);
            for seed in 0..SAMPLE_SEEDS {
                let params = SamplingParams {
                    temperature,
                    top_k,
                    top_p,
                    seed,
                };
                let sampler = || Sampler::new(params.clone());
                let got = b.sample(&device_logits, vocab, &mut sampler()).unwrap();
                let want = cpu.sample(logits, vocab, &mut sampler()).unwrap();
                if got != want {
                    differ += 1;
                    let draw = sampler().draw();
                    let picks = near_tie_picks(logits, &draw, SAMPLE_NEAR_TIE);
                    assert!(
                        picks.contains(&want),
                        "the host's pick is not a near-tie pick"
                    );
                    if !picks.contains(&got) {
                        println!("    seed {seed}: {got}, host {want}, draw {draw:?}");
                        wrong += 1;
                    }
                }
            }
            record(
                format!("sample {name} vocab {vocab} ({differ} of {SAMPLE_SEEDS} differ)"),
                wrong as f32,
            );
        }
    }

    let rope = |dims: usize, pairs| Positions::Rotary {
        dims,
        pairs,
        inv_freq: (0..dims / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / dims as f32))
            .collect(),
        scale: 1.0,
    };
    let cases = [
        ("learned", 3, 3, 64, Positions::Learned),
        ("rope halves gqa", 9, 3, 64, rope(64, RopePairs::Halves)),
        (
            "rope interleaved partial",
            4,
            4,
            256,
            rope(64, RopePairs::Interleaved),
        ),
        (
            "alibi",
            5,
            5,
            128,
            Positions::Alibi {
                slopes: vec![0.5, 0.25, 0.125, 0.0625, 0.03125],
            },
        ),
    ];
    for (name, heads, kv_heads, hd, positions) in cases {
        let spec = AttentionSpec {
            heads,
            kv_heads,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            positions: &positions,
            softcap: None,
            window: None,
        };
        let labels = (
            format!("attention {name} heads {heads}/{kv_heads} dim {hd}"),
            format!("attention batch {name} dim {hd}"),
        );
        trace_every_score_rule(b, &spec, (1.4, 9), labels, &mut rng, &mut record);
    }
    // Many heads over a longer cache: GPU decode kernels split it into several spans of
    // several steps each, the last ones partial.
    let positions = rope(8, RopePairs::Halves);
    let spec = AttentionSpec {
        heads: 64,
        kv_heads: 8,
        head_dim: 8,
        scale: 1.0 / 8f32.sqrt(),
        positions: &positions,
        softcap: None,
        window: None,
    };
    let score = StepScore {
        noise: true,
        tau: 1.5,
        seed: 11,
    };
    for score in [None, Some(score)] {
        let errors = attention_trace(b, &spec, score.as_ref(), None, (300, 3), &mut rng).unwrap();
        for (what, error) in errors {
            record(format!("attention long decode {what}"), error);
        }
    }

    // Architecture features. A sliding window (with and without soft-capping) over a prompt
    // longer than the window, then decode steps over the window - 1 tokens the engine keeps
    // (window layers are never scored); soft-capping and a scaled partial rotary with every
    // score rule, alone and batched.
    let plain = rope(64, RopePairs::Halves);
    let scaled = Positions::Rotary {
        dims: 32,
        pairs: RopePairs::Halves,
        inv_freq: (0..16)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / 32.0))
            .collect(),
        scale: 1.19,
    };
    let window_keep = Keep {
        budget: 7,
        sinks: 0,
        recent: 7,
    };
    for softcap in [None, Some(1.0)] {
        let spec = AttentionSpec {
            heads: 4,
            kv_heads: 2,
            head_dim: 64,
            scale: 0.125,
            positions: &plain,
            softcap,
            window: Some(8),
        };
        let errors =
            attention_trace(b, &spec, None, Some(&window_keep), (30, 6), &mut rng).unwrap();
        for (what, error) in errors {
            record(
                format!("attention window 8 softcap {softcap:?} {what}"),
                error,
            );
        }
    }
    for (name, positions, softcap) in [
        ("softcap 1", &plain, Some(1.0)),
        ("scaled partial rope", &scaled, None),
    ] {
        let spec = AttentionSpec {
            heads: 4,
            kv_heads: 2,
            head_dim: 64,
            scale: 0.125,
            positions,
            softcap,
            window: None,
        };
        let labels = (
            format!("attention {name}"),
            format!("attention batch {name}"),
        );
        trace_every_score_rule(b, &spec, (1.2, 5), labels, &mut rng, &mut record);
    }
    // Two layers of one cache with rotaries of different frequencies (Gemma 3's local and
    // global layers), in turn, prompt and decode.
    let other_base = Positions::Rotary {
        dims: 64,
        pairs: RopePairs::Halves,
        inv_freq: (0..32)
            .map(|i| 1.0 / 1e6f32.powf(2.0 * i as f32 / 64.0))
            .collect(),
        scale: 1.0,
    };
    let specs = [&plain, &other_base].map(|positions| AttentionSpec {
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        scale: 0.125,
        positions,
        softcap: None,
        window: None,
    });
    let width = (4 + 2 * 2) * 64;
    let inputs: Vec<Vec<f32>> = [20, 1, 1, 1]
        .iter()
        .map(|&r| rng.values(r * width, 1.5))
        .collect();
    let got = two_layer_attention(b, &specs, &inputs).unwrap();
    let want = two_layer_attention(&cpu, &specs, &inputs).unwrap();
    record(
        "attention two layers of different rotaries".into(),
        rel_error(&got, &want),
    );

    // Decode steps whose attention output goes straight into the output product, which the
    // wgpu backend fuses with the attention's last dispatch: the residual and the attention
    // output itself must both come out right.
    let positions = rope(64, RopePairs::Halves);
    let spec = AttentionSpec {
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        scale: 0.125,
        positions: &positions,
        softcap: None,
        window: None,
    };
    let width = (spec.heads + 2 * spec.kv_heads) * spec.head_dim;
    let inputs: Vec<Vec<f32>> = [70, 1, 1]
        .iter()
        .map(|&r| rng.values(r * width, 1.5))
        .collect();
    let w_o = HostLinear::random(&mut rng, 100, spec.heads * spec.head_dim, true);
    let residual = rng.values(100, 1.0);
    let case = (&inputs[..], &w_o, &residual[..]);
    let got = attention_then_product(b, &spec, case).unwrap();
    let want = attention_then_product(&cpu, &spec, case).unwrap();
    record(
        "attention decode then output product".into(),
        rel_error(&got, &want),
    );
    rows
}

/// A prompt (inputs[0]) then one decode step per further input, each attention output (one
/// row) added through `w_o` into a copy of `residual`: the residuals, then the attention
/// outputs, of every step.
fn attention_then_product<B: Backend>(
    b: &B,
    spec: &AttentionSpec,
    (inputs, w_o, residual): (&[Vec<f32>], &HostLinear, &[f32]),
) -> Result<Vec<f32>> {
    let width = (spec.heads + 2 * spec.kv_heads) * spec.head_dim;
    let q_dim = spec.heads * spec.head_dim;
    let tokens = inputs.iter().map(|i| i.len() / width).sum();
    let mut cache = b.new_cache(&trace_shape(spec, None, tokens))?;
    let lin = w_o.upload(b)?;
    let (mut residuals, mut outputs, mut position) = (vec![], vec![], 0);
    for input in inputs {
        let rows = input.len() / width;
        let mut out = b.zeros(rows * q_dim)?;
        let qkv = b.upload(input)?;
        b.attention(spec, &qkv, rows, position, &mut cache, 1, None, &mut out)?;
        position += rows;
        if rows > 1 {
            continue;
        }
        let (mut acc, mut scratch) = (b.upload(residual)?, b.zeros(w_o.n_out)?);
        let bias = lin.bias.as_ref();
        b.linear_residual(
            &out,
            1,
            &lin.weight,
            bias,
            w_o.n_out,
            q_dim,
            &mut scratch,
            &mut acc,
        )?;
        residuals.extend(b.download(&acc, w_o.n_out)?);
        outputs.extend(b.download(&out, q_dim)?);
    }
    residuals.extend(outputs);
    Ok(residuals)
}

/// A prompt (inputs[0]) then one decode step per further input, each through layer 0 with
/// specs[0] then layer 1 with specs[1] of one cache, without eviction: every output.
fn two_layer_attention<B: Backend>(
    b: &B,
    specs: &[AttentionSpec; 2],
    inputs: &[Vec<f32>],
) -> Result<Vec<f32>> {
    let spec = &specs[0];
    let width = (spec.heads + 2 * spec.kv_heads) * spec.head_dim;
    let q_dim = spec.heads * spec.head_dim;
    let tokens = inputs.iter().map(|i| i.len() / width).sum();
    let mut cache = b.new_cache(&trace_shape(spec, None, tokens))?;
    let (mut outputs, mut position) = (vec![], 0);
    for input in inputs {
        let rows = input.len() / width;
        let qkv = b.upload(input)?;
        for (layer, spec) in specs.iter().enumerate() {
            let mut out = b.zeros(rows * q_dim)?;
            b.attention(
                spec, &qkv, rows, position, &mut cache, layer, None, &mut out,
            )?;
            outputs.extend(b.download(&out, rows * q_dim)?);
        }
        position += rows;
    }
    Ok(outputs)
}

fn embed<B: Backend>(b: &B, table: &[f32], ids: &[u32], dim: usize) -> Vec<f32> {
    let t = b.upload_weight(table.to_vec()).unwrap();
    let mut out = b.zeros(ids.len() * dim).unwrap();
    b.embed(&t, ids, dim, &mut out).unwrap();
    b.download(&out, ids.len() * dim).unwrap()
}

fn add_positions<B: Backend>(
    b: &B,
    x: &[f32],
    table: &[f32],
    first: usize,
    rows: usize,
    dim: usize,
) -> Result<Vec<f32>> {
    let mut xb = b.upload(x)?;
    b.add_positions(&mut xb, &b.upload_weight(table.to_vec())?, first, rows, dim)?;
    let mut last = b.zeros(dim)?;
    b.copy_rows(&xb, rows - 1, 1, dim, &mut last, 0)?;
    let mut out = b.download(&xb, rows * dim)?;
    out.extend(b.download(&last, dim)?);
    Ok(out)
}

fn norm<B: Backend>(
    b: &B,
    kind: NormKind,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    dim: usize,
) -> Result<Vec<f32>> {
    let bias = bias.map(|v| b.upload_weight(v.to_vec())).transpose()?;
    let mut out = b.zeros(rows * dim)?;
    b.norm(
        kind,
        &b.upload(x)?,
        &b.upload_weight(w.to_vec())?,
        bias.as_ref(),
        1e-5,
        rows,
        dim,
        &mut out,
    )?;
    b.download(&out, rows * dim)
}

fn linear<B: Backend>(
    b: &B,
    x: &[f32],
    rows: usize,
    w: &[f32],
    bias: Option<&[f32]>,
    n_out: usize,
    n_in: usize,
) -> Result<Vec<f32>> {
    let bias = bias.map(|v| b.upload_weight(v.to_vec())).transpose()?;
    let mut out = b.zeros(rows * n_out)?;
    b.linear(
        &b.upload(x)?,
        rows,
        &b.upload_weight(w.to_vec())?,
        bias.as_ref(),
        n_out,
        n_in,
        &mut out,
    )?;
    b.download(&out, rows * n_out)
}

/// linear_residual (act None) or linear_activation, with a bias, from (x, w, bias, residual).
fn fused_linear<B: Backend>(
    b: &B,
    (x, w, bias, residual): (&[f32], &[f32], &[f32], &[f32]),
    rows: usize,
    n_out: usize,
    n_in: usize,
    act: Option<Activation>,
) -> Result<Vec<f32>> {
    let (x, w) = (b.upload(x)?, b.upload_weight(w.to_vec())?);
    let bias = b.upload_weight(bias.to_vec())?;
    let mut scratch = b.zeros(rows * n_out)?;
    let Some(act) = act else {
        let mut out = b.upload(residual)?;
        b.linear_residual(
            &x,
            rows,
            &w,
            Some(&bias),
            n_out,
            n_in,
            &mut scratch,
            &mut out,
        )?;
        return b.download(&out, rows * n_out);
    };
    let mut out = b.zeros(rows * n_out / 2)?;
    b.linear_activation(
        &x,
        rows,
        &w,
        Some(&bias),
        (n_out, n_in),
        act,
        &mut scratch,
        &mut out,
    )?;
    match act {
        a if a.gated() => b.download(&out, rows * n_out / 2),
        _ => b.download(&scratch, rows * n_out),
    }
}

/// A product's weights on the host.
struct HostLinear {
    w: Vec<f32>,
    bias: Option<Vec<f32>>,
    n_out: usize,
    n_in: usize,
}

impl HostLinear {
    fn random(rng: &mut Rng, n_out: usize, n_in: usize, bias: bool) -> HostLinear {
        let w = rng.values(n_out * n_in, 0.2);
        let bias = bias.then(|| rng.values(n_out, 1.0));
        HostLinear {
            w,
            bias,
            n_out,
            n_in,
        }
    }

    fn upload<B: Backend>(&self, b: &B) -> Result<Linear<B::Weight>> {
        Ok(Linear {
            weight: b.upload_weight(self.w.clone())?,
            bias: self.bias.clone().map(|v| b.upload_weight(v)).transpose()?,
            n_out: self.n_out,
            n_in: self.n_in,
        })
    }
}

/// (x, LayerNorm weight, LayerNorm bias, the two products).
type NormPairInputs<'a> = (
    &'a [f32],
    &'a [f32],
    &'a [f32],
    (&'a HostLinear, &'a HostLinear),
);

/// norm_linear_pair: a's rows, then p's activated rows.
fn norm_pair<B: Backend>(
    b: &B,
    (x, nw, nb, (a, p)): NormPairInputs,
    rows: usize,
    act: Activation,
) -> Result<Vec<f32>> {
    let (a, p) = (a.upload(b)?, p.upload(b)?);
    let (nw, nb) = (b.upload_weight(nw.to_vec())?, b.upload_weight(nb.to_vec())?);
    let norm = NormSpec {
        kind: NormKind::LayerNorm,
        weight: &nw,
        bias: Some(&nb),
        eps: 1e-5,
    };
    let mut a_out = b.zeros(rows * a.n_out)?;
    let mut mid = b.zeros(rows * p.n_out)?;
    let mut out = b.zeros(rows * p.n_out / 2)?;
    let (x, mut normed) = (b.upload(x)?, b.zeros(rows * a.n_in)?);
    let a_pair = (&a, &mut a_out);
    b.norm_linear_pair(
        &norm,
        &x,
        rows,
        &mut normed,
        a_pair,
        &p,
        act,
        &mut mid,
        &mut out,
    )?;
    let mut values = b.download(&a_out, rows * a.n_out)?;
    values.extend(match act {
        a if a.gated() => b.download(&out, rows * p.n_out / 2)?,
        _ => b.download(&mid, rows * p.n_out)?,
    });
    Ok(values)
}

/// Inputs and weights of the two products of a residual pair.
type PairInputs<'a> = ((&'a [f32], &'a HostLinear), (&'a [f32], &'a HostLinear));

/// linear_residual_pair over a copy of `residual`.
fn residual_pair<B: Backend>(
    b: &B,
    rows: usize,
    ((x_a, a), (x_b, p)): PairInputs,
    residual: &[f32],
) -> Result<Vec<f32>> {
    let (a, p) = (a.upload(b)?, p.upload(b)?);
    let (x_a, x_b) = (b.upload(x_a)?, b.upload(x_b)?);
    let mut scratch = b.zeros(residual.len())?;
    let mut out = b.upload(residual)?;
    b.linear_residual_pair(rows, (&x_a, &a), (&x_b, &p), &mut scratch, &mut out)?;
    b.download(&out, residual.len())
}

/// (x, norm weight, norm bias, w).
type NormProductInputs<'a> = (&'a [f32], &'a [f32], Option<&'a [f32]>, &'a [f32]);

/// norm_linear (act None) or norm_linear_activation.
fn norm_product<B: Backend>(
    b: &B,
    kind: NormKind,
    (x, nw, nb, w): NormProductInputs,
    rows: usize,
    (n_out, n_in): (usize, usize),
    act: Option<Activation>,
) -> Result<Vec<f32>> {
    let (nw, w) = (b.upload_weight(nw.to_vec())?, b.upload_weight(w.to_vec())?);
    let nb = nb.map(|v| b.upload_weight(v.to_vec())).transpose()?;
    let norm = NormSpec {
        kind,
        weight: &nw,
        bias: nb.as_ref(),
        eps: 1e-5,
    };
    let x = b.upload(x)?;
    let mut normed = b.zeros(rows * n_in)?;
    let mut mid = b.zeros(rows * n_out)?;
    let dims = (n_out, n_in);
    let Some(act) = act else {
        b.norm_linear(&norm, &x, rows, &mut normed, &w, None, dims, &mut mid)?;
        return b.download(&mid, rows * n_out);
    };
    let mut out = b.zeros(rows * n_out / 2)?;
    b.norm_linear_activation(
        &norm,
        &x,
        rows,
        &mut normed,
        &w,
        None,
        dims,
        act,
        &mut mid,
        &mut out,
    )?;
    match act {
        a if a.gated() => b.download(&out, rows * n_out / 2),
        _ => b.download(&mid, rows * n_out),
    }
}

fn activation<B: Backend>(
    b: &B,
    act: Activation,
    x: &[f32],
    rows: usize,
    width: usize,
) -> Result<Vec<f32>> {
    let mut xb = b.upload(x)?;
    let mut out = b.zeros(rows * width)?;
    b.activation(act, &mut xb, rows, width, &mut out)?;
    match act {
        a if a.gated() => b.download(&out, rows * width),
        _ => b.download(&xb, rows * width),
    }
}

fn add<B: Backend>(b: &B, x: &[f32], y: &[f32]) -> Result<Vec<f32>> {
    let mut xb = b.upload(x)?;
    b.add(&mut xb, &b.upload(y)?, x.len())?;
    b.download(&xb, x.len())
}

/// Seeds per sampling case.
const SAMPLE_SEEDS: u64 = 32;

/// Relative weight gap under which a draw counts as a near-tie: well above the f32 sums' error.
const SAMPLE_NEAR_TIE: f64 = 1e-5;

/// Every token a draw may take when any sum it compares may be off by `eps` of the total:
/// Draw::pick's tokens for each top-p cut within `eps` of top-p, and for each, the tokens
/// whose span of the running weight comes within `eps` of the target.
fn near_tie_picks(logits: &[f32], draw: &Draw, eps: f64) -> Vec<u32> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if draw.top_k > 0 {
        order.truncate(draw.top_k);
    }
    let max = logits[order[0]] as f64;
    let ends: Vec<f64> = order
        .iter()
        .scan(0.0, |sum, &i| {
            *sum += ((logits[i] as f64 - max) / draw.temperature as f64).exp();
            Some(*sum)
        })
        .collect();
    let total = ends[ends.len() - 1];
    let starts = |r: usize| if r == 0 { 0.0 } else { ends[r - 1] };
    let top_p = draw.top_p as f64;
    let cuts: Vec<usize> = if top_p >= 1.0 {
        vec![ends.len()]
    } else {
        (1..=ends.len())
            .filter(|&kept| {
                ends[kept - 1] >= (top_p - eps) * total && starts(kept - 1) < (top_p + eps) * total
            })
            .collect()
    };
    let mut picks = Vec::new();
    for kept in cuts {
        let target = draw.u * ends[kept - 1];
        let slack = eps * ends[kept - 1];
        picks.extend(
            (0..kept)
                .filter(|&r| ends[r] > target - slack && starts(r) <= target + slack)
                .map(|r| order[r] as u32),
        );
    }
    picks
}

/// What one backend's cache holds after a sequence of steps.
struct Trace {
    outputs: Vec<f32>,
    scores: Vec<f32>,
    positions: Vec<Vec<Vec<u32>>>,
    /// Scores at each eviction, per kv head, before it: for near-tie checks.
    scores_before_evict: Vec<Vec<Vec<f32>>>,
    positions_before_evict: Vec<Vec<Vec<u32>>>,
}

const KEEP: Keep = Keep {
    budget: 20,
    sinks: 2,
    recent: 6,
};

fn trace_shape(spec: &AttentionSpec, keep: Option<&Keep>, tokens: usize) -> CacheShape {
    CacheShape {
        layers: 2,
        kv_heads: spec.kv_heads,
        head_dim: spec.head_dim,
        capacity: keep.map_or(tokens, |k| k.budget + 1),
    }
}

/// A prompt (the first input), then one decode step per further input, each followed by an
/// eviction when there is a `keep`.
fn trace<B: Backend>(
    b: &B,
    spec: &AttentionSpec,
    score: Option<&StepScore>,
    keep: Option<&Keep>,
    inputs: &[Vec<f32>],
) -> Result<Trace> {
    let width = (spec.heads + 2 * spec.kv_heads) * spec.head_dim;
    let tokens = inputs.iter().map(|i| i.len() / width).sum();
    let shape = trace_shape(spec, keep, tokens);
    let mut cache = b.new_cache(&shape)?;
    let q_dim = spec.heads * spec.head_dim;
    let mut t = Trace {
        outputs: vec![],
        scores: vec![],
        positions: vec![],
        scores_before_evict: vec![],
        positions_before_evict: vec![],
    };
    let mut pos = 0;
    for input in inputs {
        let rows = input.len() / (q_dim + 2 * spec.kv_heads * spec.head_dim);
        let mut out = b.zeros(rows * q_dim)?;
        // Layer 1 of the cache, so layer indices reach the noise hash.
        b.attention(
            spec,
            &b.upload(input)?,
            rows,
            pos,
            &mut cache,
            1,
            score,
            &mut out,
        )?;
        pos += rows;
        t.outputs.extend(b.download(&out, rows * q_dim)?);
        let (positions, scores) = sorted_slots(b, &cache, score.is_some())?;
        t.positions_before_evict.push(positions);
        t.scores_before_evict.push(scores);
        if let Some(keep) = keep {
            b.evict(&mut cache, 1, keep)?;
        }
        t.positions.push(sorted_slots(b, &cache, false)?.0);
    }
    if score.is_some() {
        t.scores = sorted_slots(b, &cache, true)?.1.concat();
    }
    Ok(t)
}

/// Positions and scores of each kv head in position order (GPU backends keep slots unordered).
type Slots = (Vec<Vec<u32>>, Vec<Vec<f32>>);

fn sorted_slots<B: Backend>(b: &B, cache: &B::Cache, with_scores: bool) -> Result<Slots> {
    let positions = b.cache_positions(cache, 1)?;
    let scores = if with_scores {
        b.cache_scores(cache, 1)?
    } else {
        positions.iter().map(|p| vec![0.0; p.len()]).collect()
    };
    let mut out = (Vec::new(), Vec::new());
    for (p, s) in positions.iter().zip(&scores) {
        let mut pairs: Vec<(u32, f32)> = p.iter().copied().zip(s.iter().copied()).collect();
        pairs.sort_by_key(|x| x.0);
        out.0.push(pairs.iter().map(|x| x.0).collect());
        out.1.push(pairs.iter().map(|x| x.1).collect());
    }
    Ok(out)
}

/// A prompt of `prompt` random rows then `steps` decode steps, each evicting to `keep`: the
/// backend's trace against the CPU's.
/// `spec`'s attention traced (a prompt, then decode steps evicting to `KEEP`) without scores,
/// with H2O's plain scores and with noisy ones at (tau, seed), then its batched decode rows;
/// each error recorded under `labels` (traces, batch).
fn trace_every_score_rule<B: Backend>(
    b: &B,
    spec: &AttentionSpec,
    (tau, seed): (f32, u32),
    (trace_label, batch_label): (String, String),
    rng: &mut Rng,
    record: &mut dyn FnMut(String, f32),
) {
    let plain = StepScore {
        noise: false,
        tau: 1.0,
        seed: 0,
    };
    let noisy = StepScore {
        noise: true,
        tau,
        seed,
    };
    for score in [None, Some(plain), Some(noisy)] {
        let label = format!("{trace_label} score {:?}", score.map(|s| (s.noise, s.tau)));
        let errors = attention_trace(b, spec, score.as_ref(), Some(&KEEP), (45, 12), rng).unwrap();
        for (what, error) in errors {
            record(format!("{label} {what}"), error);
        }
    }
    for (what, error) in attention_batch_rows(b, spec, rng).unwrap() {
        record(format!("{batch_label} {what}"), error);
    }
}

fn attention_trace<B: Backend>(
    b: &B,
    spec: &AttentionSpec,
    score: Option<&StepScore>,
    keep: Option<&Keep>,
    (prompt, steps): (usize, usize),
    rng: &mut Rng,
) -> Result<Vec<(&'static str, f32)>> {
    let width = (spec.heads + 2 * spec.kv_heads) * spec.head_dim;
    let mut inputs = vec![rng.values(prompt * width, 1.5)];
    inputs.extend((0..steps).map(|_| rng.values(width, 1.5)));
    let got = trace(b, spec, score, keep, &inputs)?;
    let want = trace(&CpuBackend, spec, score, keep, &inputs)?;
    Ok(compare_traces(&got, &want, score.is_some()))
}

/// Output error and kept-set agreement (near-ties excepted) of a trace against the CPU's.
fn compare_traces(got: &Trace, want: &Trace, scoring: bool) -> Vec<(&'static str, f32)> {
    let mut errors = vec![("output", rel_error(&got.outputs, &want.outputs))];
    if scoring {
        // Kept sets may differ only where the CPU saw two candidates within NEAR_TIE.
        for (step, (g, w)) in got.positions.iter().zip(&want.positions).enumerate() {
            for (head, (gh, wh)) in g.iter().zip(w).enumerate() {
                if gh != wh {
                    let scores = &want.scores_before_evict[step][head];
                    let before = &want.positions_before_evict[step][head];
                    let differing: Vec<f32> = before
                        .iter()
                        .zip(scores)
                        .filter(|(p, _)| gh.contains(p) != wh.contains(p))
                        .map(|(_, s)| *s)
                        .collect();
                    let spread = differing.iter().fold(0f32, |m, s| m.max(*s))
                        - differing.iter().fold(f32::MAX, |m, s| m.min(*s));
                    let scale = differing.iter().fold(0f32, |m, s| m.max(s.abs()));
                    assert!(
                        spread <= NEAR_TIE * scale,
                        "step {step} head {head}: kept sets differ beyond a near-tie: {gh:?} vs {wh:?}"
                    );
                    println!(
                        "  (near-tie at step {step} head {head}: kept sets differ within {NEAR_TIE})"
                    );
                    return errors;
                }
            }
        }
        errors.push(("scores", rel_error(&got.scores, &want.scores)));
    } else {
        errors.push((
            "kept sets",
            if got.positions == want.positions {
                0.0
            } else {
                1.0
            },
        ));
    }
    errors
}

/// Three sequences with prompts of different lengths and different policies decode together
/// through attention_batch (evicting inside it); each must match the CPU running it alone.
fn attention_batch_rows<B: Backend>(
    b: &B,
    spec: &AttentionSpec,
    rng: &mut Rng,
) -> Result<Vec<(String, f32)>> {
    let width = (spec.heads + 2 * spec.kv_heads) * spec.head_dim;
    let q_dim = spec.heads * spec.head_dim;
    let h2o = StepScore {
        noise: false,
        tau: 1.0,
        seed: 0,
    };
    let noisy = StepScore {
        noise: true,
        tau: 1.3,
        seed: 4,
    };
    let plans = [
        (None, None),
        (Some(h2o), Some(KEEP)),
        (Some(noisy), Some(KEEP)),
    ];
    let (prompts, steps) = ([45, 12, 30], 10);
    let inputs: Vec<Vec<Vec<f32>>> = prompts
        .iter()
        .map(|&p| {
            let mut seq = vec![rng.values(p * width, 1.5)];
            seq.extend((0..steps).map(|_| rng.values(width, 1.5)));
            seq
        })
        .collect();
    let mut traces: Vec<Trace> = Vec::new();
    let mut caches = Vec::new();
    for ((score, keep), seq) in plans.iter().zip(&inputs) {
        let shape = trace_shape(spec, keep.as_ref(), prompts.iter().max().unwrap() + steps);
        let mut cache = b.new_cache(&shape)?;
        let rows = seq[0].len() / width;
        let mut out = b.zeros(rows * q_dim)?;
        let qkv = b.upload(&seq[0])?;
        b.attention(spec, &qkv, rows, 0, &mut cache, 1, score.as_ref(), &mut out)?;
        if let Some(keep) = keep {
            b.evict(&mut cache, 1, keep)?;
        }
        traces.push(Trace {
            outputs: b.download(&out, rows * q_dim)?,
            scores: vec![],
            positions: vec![sorted_slots(b, &cache, false)?.0],
            scores_before_evict: vec![],
            positions_before_evict: vec![],
        });
        caches.push(cache);
    }
    for step in 1..=steps {
        let rows: Vec<f32> = inputs.iter().flat_map(|s| s[step].clone()).collect();
        let mut out = b.zeros(plans.len() * q_dim)?;
        let mut seqs: Vec<SeqStep<'_, B::Cache>> = caches
            .iter_mut()
            .zip(&plans)
            .zip(prompts)
            .map(|((cache, (score, keep)), prompt)| SeqStep {
                cache,
                position: prompt + step - 1,
                score: *score,
                keep: *keep,
            })
            .collect();
        b.attention_batch(spec, &b.upload(&rows)?, &mut seqs, 1, &mut out)?;
        let out = b.download(&out, plans.len() * q_dim)?;
        for (i, t) in traces.iter_mut().enumerate() {
            t.outputs.extend(&out[i * q_dim..(i + 1) * q_dim]);
            t.positions.push(sorted_slots(b, &caches[i], false)?.0);
        }
    }
    let mut errors = Vec::new();
    for (i, ((score, keep), seq)) in plans.iter().zip(&inputs).enumerate() {
        if score.is_some() {
            traces[i].scores = sorted_slots(b, &caches[i], true)?.1.concat();
        }
        let want = trace(&CpuBackend, spec, score.as_ref(), keep.as_ref(), seq)?;
        for (what, error) in compare_traces(&traces[i], &want, score.is_some()) {
            let policy = ["full", "h2o", "keyformer"][i];
            errors.push((format!("{policy} {what}"), error));
        }
    }
    Ok(errors)
}
