//! equikern-model: whole models on top of equikern's tensor products.
//!
//! * [`checkpoint`] — PyTorch `.pth` reader (zip + pickle VM), no Python at run time.
//! * [`nn`] — e3nn-exact building blocks with the backward passes forces need.
//! * [`graph`] — periodic radius graph (edges `i → j` with cell shifts).
//! * [`extxyz`] — extended XYZ (ASE's format), read and write; [`elements`] — symbols, masses.
//! * [`md`] — molecular dynamics (velocity Verlet, Langevin BAOAB) on any [`Potential`];
//!   [`units`] — eV, Å, fs, amu.
//! * [`torch_save`] — writes torch.save-layout checkpoints (random SevenNet weights for tests).
//! * [`sevennet`] — SevenNet-0: energy, forces, stress, in f64 or f32 ([`scalar`]).
//! * [`systems`] — benchmark structures (Si diamond supercells, water boxes).
//! * [`cuda_model`] — the whole step resident on a CUDA GPU (`CudaSevenNet`).
//! * [`backend`] — where it runs: [`Backend`] (the ops the model needs), [`CpuBackend`],
//!   `DeviceBackend` (wgpu/CUDA convolutions through `equikern::ConvOp`), and [`Evaluator`]
//!   (backend and dtype chosen at run time).

pub mod backend;
pub mod checkpoint;
pub mod cuda_model;
pub mod elements;
pub mod error;
pub mod extxyz;
pub mod graph;
pub mod md;
pub mod neighbours_cuda;
pub mod nn;
pub mod scalar;
pub mod sevennet;
pub mod systems;
pub mod torch_save;
pub mod units;

#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use backend::DeviceBackend;
pub use backend::{Backend, CpuBackend, DeviceCounters, Dtype, Evaluator, Target};
pub use checkpoint::{Checkpoint, Tensor, Value};
pub use error::{ModelError, Result};
pub use extxyz::Frame;
pub use graph::{Graph, Structure};
pub use md::{Md, MdOptions, Potential, Thermostat};
pub use scalar::Scalar;
pub use sevennet::{Prediction, SevenNet, StepProfile};

/// An atomic structure (positions Å, atomic numbers, cell rows, pbc): the model's input.
pub type Atoms = Structure;
