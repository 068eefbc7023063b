//! Error type shared by the SO(3) module.

/// Invalid input to an SO(3) routine (bad degree, triangle violation, ...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum So3Error {
    #[error("wigner_3j({l1},{l2},{l3}): {why}")]
    Wigner3j {
        l1: u32,
        l2: u32,
        l3: u32,
        why: String,
    },
    /// A degree above what the routine supports (see `so3::MAX_L`).
    #[error("{what}: l = {l} exceeds the supported maximum {max}")]
    LTooLarge {
        what: &'static str,
        l: u32,
        max: u32,
    },
}
