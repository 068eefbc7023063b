//! Backends and devices: where a tensor product runs.

use std::sync::Arc;

use crate::{Error, Result};

/// Which engine runs the kernels. CUDA/HIP will be further variants with the same calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The f64 CPU oracle (results rounded to f32): slow, obviously right.
    Cpu,
    /// wgpu: Vulkan, Metal, DX12, or WebGPU in a browser.
    Wgpu,
}

/// An open backend instance. Cheap to clone (shared handle); tensor products built on the
/// same device share its pipeline cache.
#[derive(Clone)]
pub struct Device {
    pub(crate) inner: DeviceInner,
}

#[derive(Clone)]
pub(crate) enum DeviceInner {
    Cpu,
    #[cfg(feature = "wgpu")]
    Wgpu(Arc<equikern_wgpu::Runtime>),
}

/// Options for opening a wgpu device (adapter choice, test hooks).
#[cfg(feature = "wgpu")]
pub use equikern_wgpu::RuntimeOptions as WgpuOptions;

impl Device {
    /// The CPU oracle.
    pub fn cpu() -> Device {
        Device {
            inner: DeviceInner::Cpu,
        }
    }

    /// Open `backend` with default options (async: usable in browsers).
    pub async fn new_async(backend: Backend) -> Result<Device> {
        match backend {
            Backend::Cpu => Ok(Device::cpu()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Device::wgpu_async(WgpuOptions::default()).await,
            #[cfg(not(feature = "wgpu"))]
            Backend::Wgpu => Err(Error::Unavailable {
                backend: "wgpu",
                why: "equikern was built without the `wgpu` feature".into(),
            }),
        }
    }

    /// Blocking [`Device::new_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(backend: Backend) -> Result<Device> {
        pollster::block_on(Self::new_async(backend))
    }

    /// Open a wgpu device (adapter from `options.adapter` or `EQUIKERN_ADAPTER`, else the
    /// best one: discrete GPU first, then Vulkan/Metal/DX12 before GL).
    #[cfg(feature = "wgpu")]
    // On wasm, wgpu objects are not Send: the browser's single thread shares the Arc.
    #[allow(clippy::arc_with_non_send_sync)]
    pub async fn wgpu_async(options: WgpuOptions) -> Result<Device> {
        let rt = equikern_wgpu::Runtime::new(options)
            .await
            .map_err(|e| Error::Unavailable {
                backend: "wgpu",
                why: e.to_string(),
            })?;
        Ok(Device::from_wgpu_runtime(Arc::new(rt)))
    }

    /// Blocking [`Device::wgpu_async`] (native only).
    #[cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
    pub fn wgpu(options: WgpuOptions) -> Result<Device> {
        pollster::block_on(Self::wgpu_async(options))
    }

    /// Wrap a runtime the caller built (e.g. on its own `wgpu::Device` via
    /// [`equikern_wgpu::Runtime::from_device`]), so its buffers can be passed directly.
    #[cfg(feature = "wgpu")]
    pub fn from_wgpu_runtime(rt: Arc<equikern_wgpu::Runtime>) -> Device {
        Device {
            inner: DeviceInner::Wgpu(rt),
        }
    }

    pub fn backend(&self) -> Backend {
        match &self.inner {
            DeviceInner::Cpu => Backend::Cpu,
            #[cfg(feature = "wgpu")]
            DeviceInner::Wgpu(_) => Backend::Wgpu,
        }
    }

    /// Human-readable name: `"cpu (f64 oracle)"` or the adapter name and backend.
    pub fn name(&self) -> String {
        match &self.inner {
            DeviceInner::Cpu => "cpu (f64 oracle)".into(),
            #[cfg(feature = "wgpu")]
            DeviceInner::Wgpu(rt) => rt.adapter_name(),
        }
    }

    /// The wgpu runtime (device, queue, caches), if this is a wgpu device.
    #[cfg(feature = "wgpu")]
    pub fn wgpu_runtime(&self) -> Option<&Arc<equikern_wgpu::Runtime>> {
        match &self.inner {
            DeviceInner::Wgpu(rt) => Some(rt),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.name())
    }
}
