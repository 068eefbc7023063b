//! e3nn-exact building blocks (generic over f64/f32: [`crate::scalar::Scalar`]), each with the backward pass forces need.
//!
//! Layout everywhere: a batch of rows, row-major, features in e3nn's `mul_ir` layout.

pub mod act;
pub mod fcnet;
pub mod gate;
pub mod linear;
pub mod radial;

pub use act::{normalize2mom_quadrature, normalize2mom_torch, silu, silu_grad};
pub use fcnet::{FcTape, FullyConnectedNet};
pub use gate::Gate;
pub use linear::{Linear, LinearPath};
pub use radial::{BesselBasis, Cutoff};
