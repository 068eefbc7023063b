//! Adapter selection, device creation, and the capabilities the plan lowering reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use equikern_plan::Capabilities;

use crate::{Result, Runtime, WgpuError};

/// How to open a [`Runtime`]. `Default` picks the best adapter (or `EQUIKERN_ADAPTER`).
#[derive(Clone, Debug, Default)]
pub struct RuntimeOptions {
    /// Case-insensitive substring of the adapter name or backend to use. `None`: the
    /// `EQUIKERN_ADAPTER` environment variable (native only), else the best adapter.
    pub adapter: Option<String>,
    /// Clamp the storage binding size below the device's (forces batch splitting in tests).
    pub max_storage_binding_bytes: Option<u64>,
    /// Clamp the samples per dispatch below the plan's (forces batch splitting in tests).
    pub max_samples_per_dispatch: Option<u32>,
    /// Clamp every capability to at most these values (e.g. [`Capabilities::webgpu_min`], to
    /// run browser-shaped plans on a native device).
    pub clamp_caps: Option<Capabilities>,
    /// Fill output buffers of host-slice runs with NaN before dispatch, so that any element
    /// the kernels fail to write shows up (testing aid; costs one extra write).
    pub poison_outputs: bool,
}

/// `"name (Backend, device type)"` of an adapter.
pub fn adapter_summary(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

#[cfg(not(target_arch = "wasm32"))]
fn rank(info: &wgpu::AdapterInfo) -> (u32, u32) {
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let be = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::BrowserWebGpu => 0,
        _ => 1,
    };
    (be, ty)
}

async fn pick_adapter(instance: &wgpu::Instance, wanted: Option<&str>) -> Result<wgpu::Adapter> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let mut all = instance.enumerate_adapters(wgpu::Backends::all()).await;
        if let Some(w) = wanted {
            let w = w.to_lowercase();
            let names: Vec<String> = all.iter().map(|a| adapter_summary(&a.get_info())).collect();
            all.retain(|a| adapter_summary(&a.get_info()).to_lowercase().contains(&w));
            if all.is_empty() {
                return Err(WgpuError::NoAdapter(format!(
                    " matching EQUIKERN_ADAPTER/adapter {w:?}; available: [{}]",
                    names.join("; ")
                )));
            }
        }
        all.sort_by_key(|a| rank(&a.get_info()));
        all.into_iter().next().ok_or_else(|| {
            WgpuError::NoAdapter(" (is a Vulkan/Metal/DX12 driver installed?)".into())
        })
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = wanted;
        instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| WgpuError::NoAdapter(format!(": {e}")))
    }
}

/// Capabilities of a device as the plan lowering sees them.
pub fn capabilities_of(
    limits: &wgpu::Limits,
    features: wgpu::Features,
    info: &wgpu::AdapterInfo,
    options: &RuntimeOptions,
) -> Capabilities {
    let subgroups = features.contains(wgpu::Features::SUBGROUP);
    let mut binding = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
    if let Some(b) = options.max_storage_binding_bytes {
        binding = binding.min(b);
    }
    let caps = Capabilities {
        subgroup_size: if subgroups { info.subgroup_min_size } else { 0 },
        subgroups,
        max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        max_workgroup_size_x: limits.max_compute_workgroup_size_x,
        workgroup_memory_bytes: limits.max_compute_workgroup_storage_size,
        max_storage_binding_bytes: binding,
        max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
        max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
        f64: features.contains(wgpu::Features::SHADER_F64),
        float_atomics: features.contains(wgpu::Features::SHADER_FLOAT32_ATOMIC),
        // The WGSL printers use no subgroup operations.
        warp_shuffles: false,
    };
    match &options.clamp_caps {
        Some(c) => clamp(caps, c),
        None => caps,
    }
}

fn clamp(a: Capabilities, b: &Capabilities) -> Capabilities {
    let subgroups = a.subgroups && b.subgroups;
    Capabilities {
        subgroup_size: if subgroups { a.subgroup_size } else { 0 },
        subgroups,
        max_invocations_per_workgroup: a
            .max_invocations_per_workgroup
            .min(b.max_invocations_per_workgroup),
        max_workgroup_size_x: a.max_workgroup_size_x.min(b.max_workgroup_size_x),
        workgroup_memory_bytes: a.workgroup_memory_bytes.min(b.workgroup_memory_bytes),
        max_storage_binding_bytes: a.max_storage_binding_bytes.min(b.max_storage_binding_bytes),
        max_workgroups_per_dim: a.max_workgroups_per_dim.min(b.max_workgroups_per_dim),
        max_storage_buffers_per_stage: a
            .max_storage_buffers_per_stage
            .min(b.max_storage_buffers_per_stage),
        f64: a.f64 && b.f64,
        float_atomics: a.float_atomics && b.float_atomics,
        warp_shuffles: a.warp_shuffles && b.warp_shuffles,
    }
}

impl Runtime {
    /// Open the best adapter (see [`RuntimeOptions`]) and a device with its full limits.
    pub async fn new(options: RuntimeOptions) -> Result<Runtime> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
        let wanted = options.adapter.clone();
        // Native programs may also pick the adapter from the environment.
        #[cfg(not(target_arch = "wasm32"))]
        let wanted = wanted.or_else(|| {
            std::env::var("EQUIKERN_ADAPTER")
                .ok()
                .filter(|s| !s.is_empty())
        });
        let adapter = pick_adapter(&instance, wanted.as_deref()).await?;
        let info = adapter.get_info();
        // Timestamp queries let benchmarks time kernels on the device (`equikern bench`).
        let optional = wgpu::Features::SHADER_F64
            | wgpu::Features::SHADER_FLOAT32_ATOMIC
            | wgpu::Features::SUBGROUP
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let features = adapter.features() & optional;
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("equikern"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| WgpuError::RequestDevice {
                adapter: adapter_summary(&info),
                why: e.to_string(),
            })?;
        Ok(Self::from_device(info, device, queue, options))
    }

    /// Blocking [`Runtime::new`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(options: RuntimeOptions) -> Result<Runtime> {
        pollster::block_on(Self::new(options))
    }

    /// Use a device the caller already holds (its buffers can then be passed directly).
    pub fn from_device(
        info: wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: RuntimeOptions,
    ) -> Runtime {
        let limits = device.limits();
        let caps = capabilities_of(&limits, device.features(), &info, &options);
        // Errors we do not capture in a scope must not panic the host program.
        device.on_uncaptured_error(Arc::new(|e| {
            eprintln!("equikern-wgpu: uncaptured device error: {e}");
        }));
        Runtime {
            device,
            queue,
            info,
            limits,
            caps,
            options,
            cache: Mutex::new(HashMap::new()),
            scratch: Mutex::new(None),
            sample_scratch: Mutex::new(None),
        }
    }
}
