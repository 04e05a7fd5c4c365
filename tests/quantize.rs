//! Quantizers: every writable format's output read back by the (bit-exact) dequantizers is close
//! to the input; against llama.cpp's own reference quantizers on committed rows, the error is at
//! most 1.10 times theirs; Q8_0, Q4_0 and Q5_0 give a dequantized block its bytes back; bad input
//! is an error.
//!
//! tests/fixtures/quant/quantize_reference.safetensors was made by
//! tests/fixtures/quant/make_quantize_reference.py: seeded rows of several kinds and, per format
//! and row, the squared error of llama.cpp's `quantize_row_*_ref` + `dequantize_row_*` (compiled
//! from the llama-cpp-python==0.3.36 source archive).

use keyformer::model::quant::{self, FORMATS, Format};
use safetensors::SafeTensors;

const REFERENCE: &[u8] = include_bytes!("fixtures/quant/quantize_reference.safetensors");

/// The block formats this crate writes, with the relative RMS error (RMSE over the standard
/// deviation) allowed on normal values. The bound follows from the level count: a uniform
/// quantizer of step `range / (levels - 1)` has RMS error `step / sqrt(12)`, and the range a
/// scale must cover is about 4.5 standard deviations for 32 normal values (4 for 16); the
/// bounds below are that figure times 1.25, with the sub-block sizes and level counts of each
/// format: levels 256 (Q8_0), 64 (Q6_K), 32, 16, 8 (Q3_K), 4 (Q2_K).
const BLOCK_FORMATS: &[(&str, f64)] = &[
    ("Q8_0", 1.25 * 4.5 / (255.0 * 3.4641)),
    ("Q6_K", 1.25 * 4.0 / (63.0 * 3.4641)),
    ("Q5_0", 1.25 * 4.5 / (31.0 * 3.4641)),
    ("Q5_1", 1.25 * 4.5 / (31.0 * 3.4641)),
    ("Q5_K", 1.25 * 4.5 / (31.0 * 3.4641)),
    ("Q4_0", 1.25 * 4.5 / (15.0 * 3.4641)),
    ("Q4_1", 1.25 * 4.5 / (15.0 * 3.4641)),
    ("Q4_K", 1.25 * 4.5 / (15.0 * 3.4641)),
    ("Q3_K", 1.25 * 4.0 / (7.0 * 3.4641)),
    ("Q2_K", 1.25 * 4.0 / (3.0 * 3.4641)),
];

fn format(name: &str) -> &'static Format {
    quant::by_name(name).unwrap_or_else(|| panic!("no format {name}"))
}

/// Seeded normal values (Box-Muller over a 64-bit LCG).
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn values(&mut self, n: usize, sigma: f64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u, v) = (self.uniform(), self.uniform());
                let r = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
                (r * sigma) as f32
            })
            .collect()
    }
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    nanos | 1
}

fn sse(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum()
}

fn round_trip(f: &Format, x: &[f32]) -> Vec<f32> {
    let bytes = f.quantize(x).unwrap();
    assert_eq!(bytes.len(), f.bytes_for(x.len()).unwrap(), "{}", f.name);
    f.dequantize(&bytes).unwrap()
}

#[test]
fn the_table_lists_the_writable_formats() {
    let writable: Vec<&str> = FORMATS
        .iter()
        .filter(|f| f.can_quantize())
        .map(|f| f.name)
        .collect();
    for (name, _) in BLOCK_FORMATS {
        assert!(writable.contains(name), "{name} has no quantizer");
    }
    for name in ["F32", "F16", "BF16"] {
        assert!(writable.contains(&name), "{name} has no quantizer");
    }
    assert!(!format("IQ4_NL").can_quantize());
    assert!(
        FORMATS
            .iter()
            .all(|f| !f.can_quantize() || f.can_dequantize())
    );
}

#[test]
fn quantized_values_dequantize_close_to_the_input() {
    let seed = seed();
    println!("seed {seed}");
    let mut rng = Normal(seed);
    for &(name, bound) in BLOCK_FORMATS {
        let f = format(name);
        for sigma in [1.0, 0.02] {
            let x = rng.values(256 * 64, sigma);
            let y = round_trip(f, &x);
            let rel = (sse(&y, &x) / x.len() as f64).sqrt() / sigma;
            println!("{name} sigma {sigma}: relative RMSE {rel:.5} (bound {bound:.5})");
            assert!(
                rel <= bound,
                "{name} sigma {sigma}: {rel} > {bound} (seed {seed})"
            );
        }
    }
    // Plain floats: exact where the value is representable, rounded otherwise.
    let x = rng.values(1000, 1.0);
    assert_eq!(round_trip(format("F32"), &x), x);
    let halves: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    assert_eq!(round_trip(format("F16"), &x), halves);
    let bhalves: Vec<f32> = x
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect();
    assert_eq!(round_trip(format("BF16"), &x), bhalves);
}

#[test]
fn zero_blocks_come_back_exactly_and_constant_ones_closely() {
    for &(name, _) in BLOCK_FORMATS {
        let f = format(name);
        let zeros = vec![0.0f32; 512];
        assert_eq!(round_trip(f, &zeros), zeros, "{name}");
        // A constant comes back within the rounding of a (normal) f16 scale: 2^-11 relative.
        for c in [0.5f32, -1.0, 2.0] {
            let constant = vec![c; 512];
            let y = round_trip(f, &constant);
            let worst = y.iter().fold(0f32, |m, v| m.max((v - c).abs() / c.abs()));
            assert!(
                worst <= 1.0 / 2048.0,
                "{name} constant {c}: relative error {worst}"
            );
        }
    }
}

/// The committed reference: row kinds, input rows, llama.cpp's squared error per format and row.
struct Reference {
    kinds: Vec<String>,
    rows: Vec<Vec<f32>>,
    sse: Vec<(String, Vec<f64>)>,
}

fn reference() -> Reference {
    let (_, header) = SafeTensors::read_metadata(REFERENCE).unwrap();
    let meta = header.metadata().as_ref().unwrap();
    let kinds: Vec<String> = meta["rows"].split(';').map(String::from).collect();
    let st = SafeTensors::deserialize(REFERENCE).unwrap();
    let input = st.tensor("input").unwrap();
    let cols = input.shape()[1];
    let values: Vec<f32> = input
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let rows: Vec<Vec<f32>> = values.chunks_exact(cols).map(<[f32]>::to_vec).collect();
    assert_eq!(rows.len(), kinds.len());
    let mut sse = Vec::new();
    for (name, view) in st.tensors() {
        if let Some(format) = name.strip_prefix("sse.") {
            let row_sse = view
                .data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            sse.push((format.to_string(), row_sse));
        }
    }
    sse.sort_by(|a, b| a.0.cmp(&b.0));
    Reference { kinds, rows, sse }
}

#[test]
fn error_is_at_most_1_10_times_llama_cpps_reference_quantizers() {
    let Reference {
        kinds,
        rows,
        sse: reference,
    } = reference();
    assert_eq!(
        reference.len(),
        BLOCK_FORMATS.len(),
        "one reference per format"
    );
    for (i, kind) in kinds.iter().enumerate() {
        println!("row {i}: {kind}");
    }
    let mut failures = Vec::new();
    for (name, llama) in &reference {
        let f = format(name);
        let (mut ours_total, mut llama_total) = (0.0, 0.0);
        let mut ratios = Vec::new();
        for (r, x) in rows.iter().enumerate() {
            let ours = sse(&round_trip(f, x), x);
            ours_total += ours;
            llama_total += llama[r];
            // Rows both reproduce (nearly) exactly are compared on an absolute floor.
            let floor = 1e-12 * x.len() as f64;
            let ratio = ((ours + floor) / (llama[r] + floor)).sqrt();
            ratios.push(format!("{ratio:.3}"));
            if ratio > 1.10 {
                failures.push(format!("{name} row {r} ({}): {ratio:.3}", kinds[r]));
            }
        }
        let n = (rows.len() * rows[0].len()) as f64;
        println!(
            "{name}: RMSE ours {:.6} llama.cpp {:.6} ratio {:.3}; per row {}",
            (ours_total / n).sqrt(),
            (llama_total / n).sqrt(),
            (ours_total / llama_total).sqrt(),
            ratios.join(" ")
        );
        if ours_total > 1.10 * 1.10 * llama_total {
            failures.push(format!("{name} over all rows"));
        }
    }
    assert!(
        failures.is_empty(),
        "over 1.10 x llama.cpp's RMSE: {failures:?}"
    );
}

#[test]
fn quantizing_a_dequantized_block_gives_its_bytes_back() {
    let seed = seed();
    println!("seed {seed}");
    let mut rng = Normal(seed);
    for name in ["Q8_0", "Q4_0", "Q5_0"] {
        let f = format(name);
        // Blocks of these scales keep their f16 scales normal numbers (for Q8_0 the largest
        // magnitude must exceed 128 * 2^-14 = 0.0078): with a subnormal scale the f16 steps are
        // coarse enough that a block's best encoding can change when quantized again.
        for sigma in [1.0, 0.02] {
            let x = rng.values(32 * 512, sigma);
            let bytes = f.quantize(&x).unwrap();
            let again = f.quantize(&f.dequantize(&bytes).unwrap()).unwrap();
            let differ = bytes
                .chunks_exact(f.block_bytes)
                .zip(again.chunks_exact(f.block_bytes))
                .position(|(a, b)| a != b);
            assert_eq!(
                differ, None,
                "{name} sigma {sigma}: block differs (seed {seed})"
            );
        }
    }
}

#[test]
fn bad_input_is_an_error() {
    let q4_k = format("Q4_K");
    let err = q4_k.quantize(&[0.0; 300]).unwrap_err().to_string();
    assert!(
        err.contains("300 values are not a whole number of Q4_K blocks"),
        "{err}"
    );
    assert_eq!(q4_k.quantize(&[]).unwrap(), Vec::<u8>::new());
    for (bad, shown) in [
        (f32::NAN, "NaN"),
        (f32::INFINITY, "inf"),
        (70000.0, "70000"),
    ] {
        let mut x = vec![0.5f32; 256];
        x[7] = bad;
        let err = q4_k.quantize(&x).unwrap_err().to_string();
        assert!(err.contains(&format!("value 7 ({shown})")), "{err}");
    }
    let err = format("IQ4_NL")
        .quantize(&[0.0; 32])
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot quantize to IQ4_NL"), "{err}");
    assert!(err.contains("Q4_K"), "names the writable types: {err}");
}
