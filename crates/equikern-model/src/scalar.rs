//! The floating-point types the model computes in: `f64` (the reference) and `f32`.

use equikern_core::Real;
use std::iter::Sum;
use std::ops::{Div, DivAssign, MulAssign, Neg};

/// `f32` or `f64`: what the model's layers need beyond [`Real`].
pub trait Scalar:
    Real + Div<Output = Self> + Neg<Output = Self> + DivAssign + MulAssign + Sum
{
    /// `"f32"` / `"f64"`.
    const NAME: &'static str;
    fn exp(self) -> Self;

    /// `silu(x) = x · sigmoid(x)` (as [`crate::nn::silu`], in this type).
    #[inline]
    fn silu(self) -> Self {
        self / (Self::ONE + (-self).exp())
    }

    /// `d silu / dx = s + x s (1 − s)`, `s = sigmoid(x)` (as [`crate::nn::silu_grad`]).
    #[inline]
    fn silu_grad(self) -> Self {
        let s = Self::ONE / (Self::ONE + (-self).exp());
        s + self * s * (Self::ONE - s)
    }
}

impl Scalar for f64 {
    const NAME: &'static str = "f64";
    #[inline]
    fn exp(self) -> Self {
        f64::exp(self)
    }
}

impl Scalar for f32 {
    const NAME: &'static str = "f32";
    #[inline]
    fn exp(self) -> Self {
        f32::exp(self)
    }
}

/// Casts a slice (weights are stored in f64 and cast once per model).
pub fn cast_vec<T: Scalar, U: Scalar>(v: &[T]) -> Vec<U> {
    v.iter().map(|x| U::from_f64(x.to_f64())).collect()
}
