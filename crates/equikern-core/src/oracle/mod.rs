//! The CPU oracle: readable, obviously-right reference for every backend (f64 and f32).
//!
//! Layout: `x [batch, dim_in1]`, `y [batch, dim_in2]`, `w [batch, weight_numel]` (per-sample)
//! or `[weight_numel]` (shared), `z [batch, dim_out]`, all row-major, flat slices.
