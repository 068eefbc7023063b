//! Target capabilities: the only way target differences reach the lowering.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Capabilities {
    /// Subgroup / warp / wavefront width (0 if unknown).
    pub subgroup_size: u32,
    pub subgroups: bool,
    pub max_invocations_per_workgroup: u32,
    pub max_workgroup_size_x: u32,
    pub workgroup_memory_bytes: u32,
    pub max_storage_binding_bytes: u64,
    pub max_workgroups_per_dim: u32,
    pub max_storage_buffers_per_stage: u32,
    pub f64: bool,
    pub float_atomics: bool,
    /// The emitted dialect has 32-lane warp shuffles over consecutive invocations that
    /// the plans may rely on (CUDA, HIP; not WGSL, whose subgroup lanes are not tied to
    /// invocation ids): [`crate::ChannelConv::warp_units`].
    #[serde(default)]
    pub warp_shuffles: bool,
}

impl Capabilities {
    /// WebGPU's guaranteed minimums (what a browser may offer and no more).
    pub fn webgpu_min() -> Self {
        Capabilities {
            subgroup_size: 0,
            subgroups: false,
            max_invocations_per_workgroup: 256,
            max_workgroup_size_x: 256,
            workgroup_memory_bytes: 16384,
            max_storage_binding_bytes: 128 << 20,
            max_workgroups_per_dim: 65535,
            max_storage_buffers_per_stage: 8,
            f64: false,
            float_atomics: false,
            warp_shuffles: false,
        }
    }
}

impl Capabilities {
    /// A typical NVIDIA data-centre GPU (H100, sm_90) as the CUDA runtime reads it; for
    /// emitting CUDA without a device (`equikern emit`). Runtimes read the real device.
    pub fn cuda_sm90() -> Self {
        Capabilities {
            subgroup_size: 32,
            subgroups: true,
            max_invocations_per_workgroup: 1024,
            max_workgroup_size_x: 1024,
            workgroup_memory_bytes: 232_448,
            max_storage_binding_bytes: u64::MAX >> 8,
            max_workgroups_per_dim: 65_535,
            max_storage_buffers_per_stage: 64,
            f64: true,
            float_atomics: true,
            warp_shuffles: true,
        }
    }

    /// An AMD MI200-class GPU (gfx90a, 64-wide wavefronts), for emitting HIP without a device.
    pub fn hip_gfx90a() -> Self {
        Capabilities {
            subgroup_size: 64,
            workgroup_memory_bytes: 65_536,
            ..Self::cuda_sm90()
        }
    }
}
