//! Measuring what a reduced cache preserves: ROUGE and the aclsum documents.

pub mod aclsum;
pub mod report;
pub mod rouge;
pub mod sweep;
