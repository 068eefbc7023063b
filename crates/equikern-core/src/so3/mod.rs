//! SO(3)/O(3) math with e3nn's conventions (e3nn ≥ 0.5): real-basis Wigner 3j, Wigner D,
//! spherical harmonics, rotations. See `shared/notes/e3nn-conventions.md` §2 and §4.

mod cg;
pub mod error;
pub mod wigner3j;

pub use error::So3Error;
pub use wigner3j::{wigner_3j, Wigner3j, MAX_L};
