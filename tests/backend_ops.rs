//! The cross-backend op table. The CPU against itself checks the harness (every error must be
//! exactly zero); each GPU backend that is present runs the same table in its own test file.

mod common;

use keyformer::CpuBackend;

#[test]
fn cpu_against_itself_is_exact() {
    let rows = common::ops::op_table(&CpuBackend, 0.0, 2026);
    assert!(rows.len() > 40, "{} ops", rows.len());
}
