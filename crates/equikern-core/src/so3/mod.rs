//! SO(3)/O(3) math with e3nn's conventions (e3nn ≥ 0.5): real-basis Wigner 3j, Wigner D,
//! spherical harmonics, rotations. See `shared/notes/e3nn-conventions.md` §2 and §4.
//!
//! Every routine supports `l <= MAX_L` (16) and returns an error above it.

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
    angles_to_matrix, matrix_to_angles, matrix_x, matrix_y, matrix_z, uniform_angles,
    uniform_rotation, Mat3,
};
pub use sh::{spherical_harmonics, spherical_harmonics_with_grad, ShNormalization};
pub use wigner3j::{wigner_3j, Wigner3j, MAX_L};
pub use wigner_d::{d_from_matrix, irreps_d_from_matrix, wigner_d};
