//! NVRTC compilation to a cubin for the device's own arch, with a module cache in memory
//! (per device) and on disk (`<cache_dir>/<key>.cubin`).

use crate::device::CudaDevice;
use crate::{CudaError, Result};
use cudarc::driver::{CudaFunction, CudaModule};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys, Ptx};
use equikern_emit::cuda::{emit_with, CudaOptions, EmittedCuda, Target, EMITTER_VERSION};
use equikern_plan::{Direction, Dtype, KernelPlan};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Where a module came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheLevel {
    /// Already loaded on this device in this process.
    Memory,
    /// Cubin read from the disk cache (no NVRTC).
    Disk,
    /// Compiled by NVRTC now (and written to the disk cache).
    Compiled,
}

/// How one direction's module was obtained, and what it cost.
#[derive(Clone, Debug, PartialEq)]
pub struct CompileInfo {
    pub direction: Direction,
    pub key: String,
    pub level: CacheLevel,
    pub source_bytes: usize,
    pub kernels: usize,
    /// Printing the source (ms).
    pub emit_ms: f64,
    /// NVRTC (ms; 0 unless compiled now).
    pub nvrtc_ms: f64,
    /// `cuModuleLoadData` + function lookups (ms; 0 for memory hits).
    pub load_ms: f64,
    pub total_ms: f64,
}

/// A plan's module with its functions in plan-kernel order.
pub(crate) struct Loaded {
    pub emitted: EmittedCuda,
    pub funcs: Vec<CudaFunction>,
    pub info: CompileInfo,
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Cache key: plan hash, dtype, arch, emitter version, and a hash of the text itself (so an
/// emitter change that forgot a version bump cannot load stale code).
fn cache_key(plan: &KernelPlan, src: &str, arch: &str) -> String {
    let plan_hash = fnv(&serde_json::to_vec(plan).unwrap_or_default());
    let dtype = match plan.dtype {
        Dtype::F32 => "f32",
        Dtype::F64 => "f64",
    };
    format!(
        "{plan_hash:016x}-{dtype}-{arch}-e{EMITTER_VERSION}-{:08x}",
        fnv(src.as_bytes()) as u32
    )
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

pub(crate) fn load(dev: &CudaDevice, plan: &KernelPlan, opts: CudaOptions) -> Result<Loaded> {
    let t0 = Instant::now();
    let emitted = emit_with(plan, Target::Cuda, opts)?;
    let emit_ms = ms(t0);
    let arch = dev.arch();
    let key = cache_key(plan, &emitted.source, &arch);
    let (mut nvrtc_ms, mut load_ms) = (0.0, 0.0);

    let cached = dev
        .inner
        .modules
        .lock()
        .ok()
        .and_then(|m| m.get(&key).cloned());
    let (module, level) = match cached {
        Some(m) => (m, CacheLevel::Memory),
        None => {
            let disk = dev.cache_dir().map(|d| d.join(format!("{key}.cubin")));
            let t = Instant::now();
            let from_disk = disk
                .as_deref()
                .and_then(|p| std::fs::read(p).ok())
                .and_then(|bin| load_cubin(dev, bin).ok());
            let (m, level) = match from_disk {
                Some(m) => {
                    load_ms = ms(t);
                    (m, CacheLevel::Disk)
                }
                None => {
                    let t = Instant::now();
                    let bin = nvrtc_cubin(&emitted.source, &arch)?;
                    nvrtc_ms = ms(t);
                    if let Some(p) = &disk {
                        store(p, &bin);
                    }
                    let t = Instant::now();
                    let m = load_cubin(dev, bin)?;
                    load_ms = ms(t);
                    (m, CacheLevel::Compiled)
                }
            };
            if let Ok(mut map) = dev.inner.modules.lock() {
                map.insert(key.clone(), m.clone());
            }
            (m, level)
        }
    };
    let t = Instant::now();
    let funcs = emitted
        .kernels
        .iter()
        .map(|k| module.load_function(&k.name))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    load_ms += ms(t);
    let info = CompileInfo {
        direction: plan.direction,
        key,
        level,
        source_bytes: emitted.source.len(),
        kernels: emitted.kernels.len(),
        emit_ms,
        nvrtc_ms,
        load_ms,
        total_ms: ms(t0),
    };
    Ok(Loaded {
        emitted,
        funcs,
        info,
    })
}

impl CudaDevice {
    /// A hand-written CUDA source (kernels outside the plan, e.g. the model crate's neighbour
    /// list) compiled by NVRTC for this device's arch, or found in the module cache: in memory
    /// on this device, then on disk (`<cache_dir>/<name>-<arch>-<source hash>.cubin`). The
    /// key holds a hash of the text, so an edited source never loads a stale cubin.
    pub fn load_source(&self, name: &str, source: &str) -> Result<(Arc<CudaModule>, CacheLevel)> {
        let arch = self.arch();
        let key = format!("{name}-{arch}-{:016x}", fnv(source.as_bytes()));
        if let Some(m) = self
            .inner
            .modules
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned())
        {
            return Ok((m, CacheLevel::Memory));
        }
        let disk = self.cache_dir().map(|d| d.join(format!("{key}.cubin")));
        let from_disk = disk
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bin| load_cubin(self, bin).ok());
        let (m, level) = match from_disk {
            Some(m) => (m, CacheLevel::Disk),
            None => {
                let bin = nvrtc_cubin(source, &arch)?;
                if let Some(p) = &disk {
                    store(p, &bin);
                }
                (load_cubin(self, bin)?, CacheLevel::Compiled)
            }
        };
        if let Ok(mut map) = self.inner.modules.lock() {
            map.insert(key, m.clone());
        }
        Ok((m, level))
    }
}

pub(crate) fn load_cubin(dev: &CudaDevice, bin: Vec<u8>) -> Result<Arc<CudaModule>> {
    crate::device::guard(|| Ok(dev.context().load_module(Ptx::from_binary(bin))?))
}

/// Best effort: a cache that cannot be written only costs a recompile next time.
fn store(path: &Path, bin: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    // Write then rename, so a concurrent reader never sees half a file.
    let tmp: PathBuf = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, bin).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

fn log_string(raw: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Compiles `src` to a cubin for `arch` (e.g. `sm_90`).
pub(crate) fn nvrtc_cubin(src: &str, arch: &str) -> Result<Vec<u8>> {
    let err = |log: String| CudaError::Compile {
        arch: arch.to_string(),
        log,
    };
    let csrc = CString::new(src).map_err(|_| err("source contains a NUL byte".into()))?;
    crate::device::guard(|| {
        let prog = nvrtc::create_program(&csrc, None).map_err(|e| err(format!("{e:?}")))?;
        let opts = [
            format!("--gpu-architecture={arch}"),
            "--std=c++17".to_string(),
        ];
        // SAFETY: `prog` is a live program; it is destroyed exactly once below.
        let out = unsafe {
            match nvrtc::compile_program(prog, &opts) {
                Err(e) => {
                    let log = nvrtc::get_program_log(prog)
                        .map(|l| log_string(&l))
                        .unwrap_or_default();
                    Err(err(format!("{e:?}: {log}")))
                }
                Ok(()) => {
                    let mut size = 0usize;
                    let r = nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size).result();
                    let mut bin = vec![0u8; size];
                    r.and_then(|_| nvrtc_sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr().cast()).result())
                        .map(|_| bin)
                        .map_err(|e| err(format!("reading the cubin: {e:?}")))
                }
            }
        };
        let _ = unsafe { nvrtc::destroy_program(prog) };
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_writes_atomically() {
        let dir = std::env::temp_dir().join(format!("equikern-cuda-test-{}", std::process::id()));
        let p = dir.join("k.cubin");
        store(&p, b"abc");
        assert_eq!(std::fs::read(&p).unwrap(), b"abc");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn log_stops_at_nul() {
        let raw: Vec<std::ffi::c_char> = b"err\0junk".iter().map(|&b| b as _).collect();
        assert_eq!(log_string(&raw), "err");
    }
}
