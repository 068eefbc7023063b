//! e3nn-exact building blocks (f64), each with the backward pass forces need.
//!
//! Layout everywhere: a batch of rows, row-major, features in e3nn's `mul_ir` layout.

pub mod act;
pub mod fcnet;
pub mod gate;
pub mod linear;
pub mod radial;

pub use act::{normalize2mom_quadrature, normalize2mom_torch, silu, silu_grad};
pub use fcnet::FullyConnectedNet;
pub use gate::Gate;
pub use linear::Linear;
pub use radial::{BesselBasis, Cutoff};
