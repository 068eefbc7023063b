//! equikern-core: the e3nn-exact foundation every backend is judged against.
//!
//! * [`irreps`] — `Irrep`, `Irreps`: e3nn's grammar, layout (`mul_ir`), `simplify`, `sort`.
//! * [`so3`] — real-basis Wigner 3j, Wigner D, spherical harmonics, rotations (e3nn ≥ 0.5).
//! * [`spec`] — tensor-product spec (JSON), validation, normalisation coefficients, weight layout.
//! * [`oracle`] — the f64/f32 CPU reference: forward, backward, double backward.
//! * [`conv`] — fused graph convolution: CSR views and the conv oracle; [`graph`] — graphs.
//!
//! No GPU crates, no threads or files in required dependencies: builds for wasm32.

pub mod conv;
pub mod graph;
pub mod irreps;
pub mod oracle;
pub mod so3;
pub mod spec;

pub use irreps::{Irrep, Irreps, IrrepsError, MulIr, Parity, Sorted};
pub use oracle::{DoubleGrads, Grads, Oracle, OracleError, Real};
pub use spec::{
    load_suite, ConnectionMode, Instruction, IrrepNormalization, Path, PathNormalization,
    SpecError, TensorProduct, TpSpec,
};
