//! kernels/quant.cu's block formats (each struct's load and decode, the lane shares and their
//! columns) compiled as host C++ with `QUANT_HOST`, against the CPU's dequantizers (bit-exact
//! against the `gguf` package, tests/quant.rs) on random blocks at both 4-byte alignments: the
//! CUDA kernels' decoding checked without a GPU. Prints SKIP where no C++ compiler is found.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::quant_ops::{QUANT_FORMATS, format, random_blocks};
use keyformer::backend::cuda::quant::FORMATS;

const QUANT_CU: &str = include_str!("../kernels/quant.cu");

/// The device primitives quant.cu leaves to its host build, in plain C++.
const PRELUDE: &str = r#"
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#define __device__
#define __forceinline__ inline
#define QUANT_HOST
typedef unsigned int u32;
struct uint2 { u32 x, y; };
struct uint4 { u32 x, y, z, w; };
static float __uint_as_float(u32 u) { float f; memcpy(&f, &u, 4); return f; }
static u32 __byte_perm(u32 x, u32 y, u32 s) {
    uint64_t v = x | ((uint64_t)y << 32);
    u32 r = 0;
    for (int n = 0; n < 4; n++) r |= (u32)((v >> (8 * ((s >> (4 * n)) & 7))) & 0xff) << (8 * n);
    return r;
}
static u32 ld8(const unsigned char* p) { return p[0]; }
static u32 ld16(const unsigned char* p) { return p[0] | (p[1] << 8); }
static u32 ld32(const unsigned char* p) { u32 v; memcpy(&v, p, 4); return v; }
static uint2 ld64(const unsigned char* p) { uint2 v; memcpy(&v, p, 8); return v; }
static uint4 ld128(const unsigned char* p) { uint4 v; memcpy(&v, p, 16); return v; }
static u32 funnel_right(u32 lo, u32 hi, u32 sh) {
    return (u32)((((uint64_t)hi << 32) | lo) >> (sh > 32 ? 32 : sh));
}
static float half_bits(u32 h) {
    u32 s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023;
    float f = e == 0 ? std::ldexp((float)m, -24)
            : e == 31 ? (m ? NAN : INFINITY)
            : std::ldexp((float)(m | 1024), (int)e - 25);
    return s ? -f : f;
}
"#;

/// Reads a format's struct name and its blocks on stdin (16 bytes of tail after them, as the
/// backend allocates), writes every value as f32, each column once.
const MAIN: &str = r#"
template <class F> int run(const std::vector<unsigned char>& bytes, size_t blocks) {
    std::vector<float> out(blocks * F::VALUES, NAN);
    for (size_t b = 0; b < blocks; b++)
        for (u32 s = 0; s < F::SHARES; s++) {
            float v[F::RUNS * F::RUN];
            typename F::Raw raw = F::load(bytes.data() + b * F::BYTES, s);
            F::decode(raw, s, v);
            for (u32 k = 0; k < F::RUNS; k++)
                for (u32 j = 0; j < F::RUN; j++) {
                    float& o = out[b * F::VALUES + F::col(s, k) + j];
                    if (!std::isnan(o)) { fprintf(stderr, "a column written twice\n"); return 2; }
                    o = v[k * F::RUN + j];
                }
        }
    fwrite(out.data(), 4, out.size(), stdout);
    return 0;
}
int main(int argc, char** argv) {
    std::string name = argv[1];
    std::vector<unsigned char> bytes;
    int c;
    while ((c = getchar()) != EOF) bytes.push_back((unsigned char)c);
    size_t real = bytes.size() - 16;
#define CASE(F) if (name == #F) return run<F>(bytes, real / F::BYTES);
    CASES
    fprintf(stderr, "no format %s\n", name.c_str());
    return 1;
}
"#;

/// Compiles the host build into `dir`; None where no compiler runs.
fn build(dir: &Path) -> Option<PathBuf> {
    let cases: String = FORMATS.iter().map(|(n, _)| format!("CASE({n}) ")).collect();
    let source = format!("{PRELUDE}\n{QUANT_CU}\n{}", MAIN.replace("CASES", &cases));
    std::fs::create_dir_all(dir).unwrap();
    let cpp = dir.join("decode.cpp");
    std::fs::write(&cpp, source).unwrap();
    let exe = dir.join("decode");
    for compiler in ["c++", "g++", "clang++"] {
        let Ok(out) = Command::new(compiler)
            .args(["-O1", "-std=c++17", "-o"])
            .arg(&exe)
            .arg(&cpp)
            .output()
        else {
            continue;
        };
        assert!(
            out.status.success(),
            "{compiler} failed on kernels/quant.cu's host build:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return Some(exe);
    }
    None
}

#[test]
fn every_block_format_decodes_like_the_cpu() {
    let dir = std::env::temp_dir().join(format!("keyformer-decode-host-{}", std::process::id()));
    let Some(exe) = build(&dir) else {
        println!(
            "SKIP every_block_format_decodes_like_the_cpu: no C++ compiler (c++, g++, clang++)"
        );
        return;
    };
    assert_eq!(
        FORMATS.len(),
        QUANT_FORMATS.len(),
        "a CUDA format the table does not test"
    );
    for (i, name) in QUANT_FORMATS.into_iter().enumerate() {
        let f = format(name);
        // Rows of an odd number of blocks: blocks of an even size sit at both alignments.
        let blocks = random_blocks(70 + i as u64, f, 3, 7 * f.block_values);
        let want = f.dequantize(&blocks.bytes).unwrap();
        let mut child = Command::new(&exe)
            .arg(name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = blocks.bytes.clone();
        input.extend([0xAA; 16]);
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<f32> = out
            .stdout
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(got.len(), want.len(), "{name}: values");
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let error = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (g, w)| m.max((g - w).abs()))
            / scale;
        println!(
            "{name:<7} {} values, max error {error:.1e} of the largest",
            got.len()
        );
        // The kernels fold a scale and an offset into one FMA where the reference rounds twice.
        assert!(got.iter().all(|x| x.is_finite()), "{name}: not finite");
        assert!(error <= 1e-6, "{name}: error {error:e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
