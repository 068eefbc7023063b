//! Writers: print a [`equikern_plan::KernelPlan`] as WGSL (and, later, CUDA/HIP).
//! Every decision is already in the plan; writers only print it.

pub mod cuda;
