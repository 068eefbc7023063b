//! SO(3)/O(3) math with e3nn's conventions (e3nn ≥ 0.5): real-basis Wigner 3j, Wigner D,
//! spherical harmonics, rotations. See `shared/notes/e3nn-conventions.md` §2 and §4.
//!
//! * [`wigner_3j`]: exact (big-integer Racah CG), entries within a few ulp (≤ 1.7e-16 vs
//!   e3nn's golden table, l1, l2 ≤ 3). All triples up to l = 10 build in ~0.06 s, cached.
//! * [`wigner_d()`], [`d_from_matrix`], [`irreps_d_from_matrix`]: ≤ 6e-16 vs e3nn (l ≤ 3);
//!   orthogonality/homomorphism ≤ 1e-14 up to MAX_L.
//! * [`spherical_harmonics`] (+ Jacobian): ≤ 5e-16 vs e3nn (l ≤ 4, unit vectors);
//!   equivariance and exact-quadrature orthonormality ≤ 1e-14 up to MAX_L.
//!
//! Every routine supports `l <= MAX_L` (16) and returns [`So3Error`] above it (not a panic).
//! The construction itself is not limited to 16: all property tests also pass at l = 24.

mod basis;
mod cg;
pub mod error;
pub mod generators;
pub mod rotation;
pub mod sh;
pub mod wigner3j;
pub mod wigner_d;

pub use error::So3Error;
pub use generators::so3_generators;
pub use rotation::{
    angles_to_matrix, angles_to_xyz, matrix_to_angles, matrix_x, matrix_y, matrix_z,
    uniform_angles, uniform_rotation, xyz_to_angles, Mat3,
};
pub use sh::{spherical_harmonics, spherical_harmonics_with_grad, ShNormalization};
pub use wigner3j::{wigner_3j, Wigner3j, MAX_L};
pub use wigner_d::{d_from_matrix, irreps_d_from_matrix, wigner_d};
