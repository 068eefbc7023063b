//! The scalar types the oracle runs in.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Mul, Sub};

/// A floating-point scalar (`f32` or `f64`). CG values and coefficients are computed in f64 and
/// cast once, as e3nn casts its float64 tables to the module dtype.
pub trait Real:
    Copy
    + Send
    + Sync
    + Debug
    + Default
    + PartialEq
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + AddAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}
