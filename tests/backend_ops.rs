//! The cross-backend op table. The CPU against itself checks the harness (every error must be
//! exactly zero); each GPU backend that is present runs the same table in its own test file.

mod common;

use keyformer::CpuBackend;

#[test]
fn cpu_against_itself_is_exact() {
    let rows = common::ops::op_table(&CpuBackend, 0.0, 2026);
    assert!(rows.len() > 40, "{} ops", rows.len());
}

/// The CPU's products over weights kept in block formats against its products over the same
/// weights dequantized to f32 (the reference every backend's block-format table is held to).
#[test]
fn cpu_block_formats_match_dequantized() {
    let rows = common::quant_ops::quant_table(&CpuBackend, 2027, 0.0, 0.0);
    assert!(rows > 300, "{rows} ops");
}
