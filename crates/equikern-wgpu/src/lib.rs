//! wgpu runtime for equikern kernel plans.
//!
//! Async at its core (browsers must never block); native callers get `*_blocking` wrappers.
//! The runtime owns the device, the pipeline cache (keyed by the serialised plan) and the
//! shared-weight reduction scratch. It splits batches into dispatches that respect the
//! device's binding-size, offset-alignment and grid limits; the kernels write every output
//! element, so outputs are never cleared here.

mod context;
mod conv;
mod csr;
mod dispatch;
mod host;
mod oneshot;
mod pipelines;

pub use context::{adapter_summary, capabilities_of, RuntimeOptions};
pub use conv::{conv_inputs, conv_outputs, WgpuGraph};
pub use csr::DeviceCsr;
pub use dispatch::TensorBuffer;
pub use pipelines::CompiledPlan;
/// The wgpu version this runtime is built on (its `Buffer`s cross the API).
pub use wgpu;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use equikern_plan::Capabilities;

/// Errors of the wgpu runtime. Messages name the offending tensor or limit.
#[derive(Debug, thiserror::Error)]
pub enum WgpuError {
    #[error("no wgpu adapter found{0}")]
    NoAdapter(String),
    #[error("requesting a device from adapter {adapter}: {why}")]
    RequestDevice { adapter: String, why: String },
    #[error(transparent)]
    Emit(#[from] equikern_emit::EmitError),
    #[error("creating pipeline for kernel {kernel}: {why}")]
    Pipeline { kernel: String, why: String },
    #[error("plan was lowered for capabilities {plan:?}, but this device offers {device:?}")]
    CapsMismatch {
        plan: Box<Capabilities>,
        device: Box<Capabilities>,
    },
    #[error("tensor {tensor}: {why}")]
    Binding { tensor: String, why: String },
    #[error("batch of {batch} samples: {why}")]
    Batch { batch: u64, why: String },
    #[error("reading results back: {0}")]
    Readback(String),
    #[error("device error: {0}")]
    Device(String),
    /// A convolution's graph was rejected before any kernel ran.
    #[error(transparent)]
    Conv(#[from] equikern_core::conv::ConvError),
}

pub type Result<T, E = WgpuError> = std::result::Result<T, E>;

/// A wgpu device with everything needed to run kernel plans on it.
pub struct Runtime {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    caps: Capabilities,
    options: RuntimeOptions,
    cache: Mutex<HashMap<String, Arc<CompiledPlan>>>,
    scratch: Mutex<Option<wgpu::Buffer>>,
    /// Per-sample scratch (`Tensor::Scratch`) of split gathers.
    sample_scratch: Mutex<Option<wgpu::Buffer>>,
}

impl Runtime {
    /// Adapter name and backend, e.g. `"llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)"`.
    pub fn adapter_name(&self) -> String {
        adapter_summary(&self.info)
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// What the plan lowering may use on this device.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }
}

/// Tensors a plan reads from the caller, in first-use order.
pub fn plan_inputs_of(plan: &equikern_plan::KernelPlan) -> Vec<equikern_plan::Tensor> {
    dispatch::plan_inputs(plan)
}

/// Tensors a plan writes for the caller.
pub fn plan_outputs_of(plan: &equikern_plan::KernelPlan) -> Vec<equikern_plan::Tensor> {
    dispatch::plan_outputs(plan)
}

/// Elements of a tensor for `batch` samples under `plan`'s dims.
pub fn tensor_elements_of(
    plan: &equikern_plan::KernelPlan,
    t: equikern_plan::Tensor,
    batch: u64,
) -> u64 {
    dispatch::tensor_elements(plan, t, batch)
}
