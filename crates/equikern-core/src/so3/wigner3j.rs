//! Real-basis Wigner 3j symbols exactly as e3nn's `o3.wigner_3j` (unit Frobenius norm).

use std::sync::Arc;

/// Largest l supported by [`wigner_3j`]; larger l is an error.
pub const MAX_L: u32 = 0; // set by the implementation

/// Dense `[2l1+1][2l2+1][2l3+1]` row-major tensor plus its nonzeros (|v| > 1e-14).
#[derive(Clone, Debug)]
pub struct Wigner3j {
    pub l1: u32,
    pub l2: u32,
    pub l3: u32,
    pub dense: Vec<f64>,
    /// `(i, j, k, value)` in row-major order.
    pub nonzeros: Vec<(u32, u32, u32, f64)>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum So3Error {
    #[error("wigner_3j({l1},{l2},{l3}): {why}")]
    Wigner3j {
        l1: u32,
        l2: u32,
        l3: u32,
        why: String,
    },
}

/// e3nn's `wigner_3j(l1, l2, l3)`, cached. Errors on a triangle violation or l > MAX_L.
pub fn wigner_3j(l1: u32, l2: u32, l3: u32) -> Result<Arc<Wigner3j>, So3Error> {
    let _ = (l1, l2, l3);
    todo!("implemented by the so3 work")
}
