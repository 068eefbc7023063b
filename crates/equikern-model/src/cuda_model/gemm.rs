//! Row-major matrix products of the radial MLP on the evaluator's stream: cuBLAS (plain
//! sgemm/dgemm, default math mode: no TF32) when libcublas loads, else the `ek_gemm` kernel.
//! `EQUIKERN_MODEL_GEMM=kernel` forces the kernel (A/B, and machines without cuBLAS).

use crate::error::{ModelError, Result};
use crate::scalar::Scalar;
use cudarc::cublas::{sys as blas_sys, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, PushKernelArg};
use equikern::cuda_runtime::Real;
use std::sync::Arc;

/// f32 / f64 on the device: cuBLAS's product in this type.
pub trait DevReal: Scalar + Real + super::exec::Pod {
    fn blas_gemm(
        blas: &CudaBlas,
        cfg: GemmConfig<Self>,
        a: &CudaSlice<Self>,
        b: &CudaSlice<Self>,
        c: &mut CudaSlice<Self>,
    ) -> std::result::Result<(), cudarc::cublas::result::CublasError>;
    /// [`Self::blas_gemm`] on views (sub-ranges: strided row blocks).
    fn blas_gemm_views(
        blas: &CudaBlas,
        cfg: GemmConfig<Self>,
        a: &CudaView<'_, Self>,
        b: &CudaView<'_, Self>,
        c: &mut CudaViewMut<'_, Self>,
    ) -> std::result::Result<(), cudarc::cublas::result::CublasError>;
}

impl DevReal for f32 {
    fn blas_gemm(
        blas: &CudaBlas,
        cfg: GemmConfig<f32>,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        c: &mut CudaSlice<f32>,
    ) -> std::result::Result<(), cudarc::cublas::result::CublasError> {
        // SAFETY: the caller checked every buffer against the product's dimensions.
        unsafe { blas.gemm(cfg, a, b, c) }
    }
    fn blas_gemm_views(
        blas: &CudaBlas,
        cfg: GemmConfig<f32>,
        a: &CudaView<'_, f32>,
        b: &CudaView<'_, f32>,
        c: &mut CudaViewMut<'_, f32>,
    ) -> std::result::Result<(), cudarc::cublas::result::CublasError> {
        // SAFETY: `Gemmer::gemm_strided` checked every operand's last row against its buffer.
        unsafe { blas.gemm(cfg, a, b, c) }
    }
}

impl DevReal for f64 {
    fn blas_gemm(
        blas: &CudaBlas,
        cfg: GemmConfig<f64>,
        a: &CudaSlice<f64>,
        b: &CudaSlice<f64>,
        c: &mut CudaSlice<f64>,
    ) -> std::result::Result<(), cudarc::cublas::result::CublasError> {
        // SAFETY: the caller checked every buffer against the product's dimensions.
        unsafe { blas.gemm(cfg, a, b, c) }
    }
    fn blas_gemm_views(
        blas: &CudaBlas,
        cfg: GemmConfig<f64>,
        a: &CudaView<'_, f64>,
        b: &CudaView<'_, f64>,
        c: &mut CudaViewMut<'_, f64>,
    ) -> std::result::Result<(), cudarc::cublas::result::CublasError> {
        // SAFETY: `Gemmer::gemm_strided` checked every operand's last row against its buffer.
        unsafe { blas.gemm(cfg, a, b, c) }
    }
}

/// Where libcublas may sit outside the loader's path: `$EQUIKERN_CUBLAS_DIR`, the CUDA
/// toolkit, the pip wheel `nvidia-cublas` that PyTorch uses (`nvidia/cu13/lib` or
/// `nvidia/cublas/lib` under the system's, a virtualenv's, conda's, the user's site folders
/// and `$PYTHONPATH`).
fn cublas_dirs() -> Vec<std::path::PathBuf> {
    let mut v: Vec<std::path::PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("EQUIKERN_CUBLAS_DIR") {
        v.push(d.into());
    }
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/lib/x86_64-linux-gnu",
    ] {
        v.push(d.into());
    }
    let mut roots: Vec<std::path::PathBuf> = ["/usr/local/lib", "/usr/lib", "/opt/conda/lib"]
        .iter()
        .map(Into::into)
        .collect();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(d) = std::env::var_os(var) {
            roots.push(std::path::PathBuf::from(d).join("lib"));
        }
    }
    if let Some(h) = std::env::var_os("HOME") {
        roots.push(std::path::PathBuf::from(h).join(".local/lib"));
    }
    let wheel_dirs =
        |site: &std::path::Path| [site.join("nvidia/cu13/lib"), site.join("nvidia/cublas/lib")];
    // PYTHONPATH entries are site folders themselves
    if let Some(pp) = std::env::var_os("PYTHONPATH") {
        for site in std::env::split_paths(&pp) {
            v.extend(wheel_dirs(&site));
        }
    }
    for root in roots {
        if let Ok(rd) = std::fs::read_dir(&root) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("python3") {
                    for sub in ["dist-packages", "site-packages"] {
                        v.extend(wheel_dirs(&e.path().join(sub)));
                    }
                }
            }
        }
    }
    v
}

/// Loads libcublasLt and libcublas (major version of the CUDA build) by full path from the
/// first directory of [`cublas_dirs`] that has both, so that cudarc's later load by soname
/// finds them (the dynamic loader matches already loaded libraries by soname). The handles
/// are kept for the life of the process. `true` if cuBLAS is then present.
fn preload_cublas() -> bool {
    for dir in cublas_dirs() {
        let lt = dir.join("libcublasLt.so.13");
        let blas = dir.join("libcublas.so.13");
        if !(lt.exists() && blas.exists()) {
            continue;
        }
        // SAFETY: loading NVIDIA's cuBLAS libraries; their initialisers only set up state.
        let loaded = unsafe {
            libloading::Library::new(&lt)
                .and_then(|a| libloading::Library::new(&blas).map(|b| (a, b)))
        };
        if let Ok(pair) = loaded {
            std::mem::forget(pair);
            // SAFETY: as above, a dlopen by name.
            if unsafe { blas_sys::is_culib_present() } {
                return true;
            }
        }
    }
    false
}

/// cuBLAS's (column-major) configuration for the row-major `C[m, n] = alpha · A[m, k] ·
/// op(B) + beta · C`: a row-major matrix is its transpose column-major, so cuBLAS computes
/// `Cᵀ (n × m) = op(B)ᵀ (n × k) · Aᵀ (k × m)` with B as its first operand: `B [k, n]` is
/// column-major `n × k` with leading dimension n (no transpose); `B [n, k]` (`trans_b`) is
/// column-major `k × n`, leading dimension k, transposed; `A [m, k]` is column-major `k × m`
/// (leading dimension k); `C` has leading dimension n. Call with `(B, A, C)`.
pub fn blas_config<T>(
    (m, n, k): (usize, usize, usize),
    trans_b: bool,
    alpha: T,
    beta: T,
) -> Result<GemmConfig<T>> {
    use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
    let int = |v: usize| {
        i32::try_from(v)
            .map_err(|_| ModelError::backend("cuda", format!("gemm dimension {v} exceeds i32")))
    };
    Ok(GemmConfig {
        transa: if trans_b { CUBLAS_OP_T } else { CUBLAS_OP_N },
        transb: CUBLAS_OP_N,
        m: int(n)?,
        n: int(m)?,
        k: int(k)?,
        alpha,
        lda: int(if trans_b { k } else { n })?.max(1),
        ldb: int(k)?.max(1),
        beta,
        ldc: int(n)?.max(1),
    })
}

/// Sets the math mode of `blas` (host-side state read at its next call).
fn set_math_mode(blas: &CudaBlas, mode: blas_sys::cublasMath_t) -> Result<()> {
    // SAFETY: a valid handle.
    let r = unsafe { blas_sys::cublasSetMathMode(*blas.handle(), mode) };
    if r == blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(ModelError::backend(
            "cuda",
            format!("cublasSetMathMode: {r:?}"),
        ))
    }
}

pub enum Gemmer {
    Blas(CudaBlas),
    Kernel,
}

impl Gemmer {
    /// cuBLAS on `stream` when available (and not turned off), else the kernel.
    pub fn new(stream: &Arc<CudaStream>) -> Gemmer {
        if std::env::var("EQUIKERN_MODEL_GEMM").as_deref() == Ok("kernel") {
            return Gemmer::Kernel;
        }
        // SAFETY: only tries to dlopen libcublas by its names.
        if !unsafe { blas_sys::is_culib_present() } && !preload_cublas() {
            return Gemmer::Kernel;
        }
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let blas = CudaBlas::new(stream.clone()).ok()?;
            // Plain IEEE products: never TF32 tensor-core math for f32.
            // SAFETY: a live handle.
            let r = unsafe {
                blas_sys::cublasSetMathMode(
                    *blas.handle(),
                    blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
                )
            };
            (r == blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS).then_some(blas)
        }));
        match made {
            Ok(Some(b)) => Gemmer::Blas(b),
            _ => Gemmer::Kernel,
        }
    }

    /// Row-major `C[m, n] = alpha · A[m, k] · B[k, n] + beta · C` on sub-blocks: `A` from
    /// element `a.1` with row stride `a.2`, likewise `B` and `C`. cuBLAS only: `Ok(false)`
    /// for the kernel fallback (the caller then uses its own kernel).
    #[allow(clippy::type_complexity)]
    pub fn gemm_strided<T: DevReal>(
        &self,
        (m, n, k): (usize, usize, usize),
        alpha: T,
        a: (&CudaSlice<T>, usize, usize),
        b: (&CudaSlice<T>, usize, usize),
        beta: T,
        c: (&mut CudaSlice<T>, usize, usize),
    ) -> Result<bool> {
        let Gemmer::Blas(blas) = self else {
            return Ok(false);
        };
        if m == 0 || n == 0 {
            return Ok(true);
        }
        // The last row's end bounds each operand (rows of `ld` elements, the last `cols`).
        let end = |off: usize, rows: usize, ld: usize, cols: usize| off + (rows - 1) * ld + cols;
        if a.2 < k
            || b.2 < n
            || c.2 < n
            || end(a.1, m, a.2, k) > a.0.len()
            || end(b.1, k.max(1), b.2, n) > b.0.len()
            || end(c.1, m, c.2, n) > c.0.len()
        {
            return Err(ModelError::backend(
                "cuda",
                format!("strided gemm {m}x{n}x{k}: operand out of its buffer"),
            ));
        }
        let int = |v: usize| {
            i32::try_from(v)
                .map_err(|_| ModelError::backend("cuda", format!("gemm dimension {v} exceeds i32")))
        };
        use blas_sys::cublasOperation_t::CUBLAS_OP_N;
        // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ.
        let cfg = GemmConfig {
            transa: CUBLAS_OP_N,
            transb: CUBLAS_OP_N,
            m: int(n)?,
            n: int(m)?,
            k: int(k)?,
            alpha,
            lda: int(b.2)?,
            ldb: int(a.2)?,
            beta,
            ldc: int(c.2)?,
        };
        let av = a.0.slice(a.1..);
        let bv = b.0.slice(b.1..);
        let mut cv = c.0.slice_mut(c.1..);
        T::blas_gemm_views(blas, cfg, &bv, &av, &mut cv)
            .map_err(|e| ModelError::backend("cuda", e))?;
        Ok(true)
    }

    /// [`Self::gemm_strided`] with cuBLAS in its TF32 tensor-op math mode (operands already
    /// exact in TF32: the 3xTF32 factors of the Linear products), then the default mode
    /// again. `Ok(false)` for the kernel fallback.
    #[allow(clippy::type_complexity)]
    pub fn gemm_strided_tf32<T: DevReal>(
        &self,
        dims: (usize, usize, usize),
        alpha: T,
        a: (&CudaSlice<T>, usize, usize),
        b: (&CudaSlice<T>, usize, usize),
        beta: T,
        c: (&mut CudaSlice<T>, usize, usize),
    ) -> Result<bool> {
        let Gemmer::Blas(blas) = self else {
            return Ok(false);
        };
        use blas_sys::cublasMath_t::{CUBLAS_DEFAULT_MATH, CUBLAS_TF32_TENSOR_OP_MATH};
        set_math_mode(blas, CUBLAS_TF32_TENSOR_OP_MATH)?;
        let r = self.gemm_strided(dims, alpha, a, b, beta, c);
        set_math_mode(blas, CUBLAS_DEFAULT_MATH)?;
        r
    }

    /// Row-major `C[m, n] = alpha · A[m, k] · B[k, n] + beta · C` with cuBLAS in its TF32
    /// tensor-op math mode (operands already exact in TF32: the 3xTF32 factors), then the
    /// default mode again. `Ok(false)` for the kernel fallback.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_tf32<T: DevReal>(
        &self,
        stream: &Arc<CudaStream>,
        kernel: &CudaFunction,
        dims: (usize, usize, usize),
        alpha: T,
        a: &CudaSlice<T>,
        b: &CudaSlice<T>,
        beta: T,
        c: &mut CudaSlice<T>,
    ) -> Result<bool> {
        let Gemmer::Blas(blas) = self else {
            return Ok(false);
        };
        use blas_sys::cublasMath_t::{CUBLAS_DEFAULT_MATH, CUBLAS_TF32_TENSOR_OP_MATH};
        set_math_mode(blas, CUBLAS_TF32_TENSOR_OP_MATH)?;
        let r = self.gemm(stream, kernel, dims, alpha, a, b, false, beta, c);
        set_math_mode(blas, CUBLAS_DEFAULT_MATH)?;
        r.map(|()| true)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Gemmer::Blas(_) => "cuBLAS",
            Gemmer::Kernel => "ek_gemm kernel",
        }
    }

    /// Row-major `C[m, n] = alpha · A[m, k] · op(B) + beta · C`, `op(B)` = `B [k, n]`, or the
    /// transpose of `B [n, k]` when `trans_b`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm<T: DevReal>(
        &self,
        stream: &Arc<CudaStream>,
        kernel: &CudaFunction,
        (m, n, k): (usize, usize, usize),
        alpha: T,
        a: &CudaSlice<T>,
        b: &CudaSlice<T>,
        trans_b: bool,
        beta: T,
        c: &mut CudaSlice<T>,
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        if a.len() < m * k || b.len() < k * n || c.len() < m * n {
            return Err(ModelError::backend(
                "cuda",
                format!(
                    "gemm {m}x{n}x{k}: buffers of {}, {}, {} elements are too small",
                    a.len(),
                    b.len(),
                    c.len()
                ),
            ));
        }
        match self {
            Gemmer::Blas(blas) => {
                let cfg = blas_config((m, n, k), trans_b, alpha, beta)?;
                T::blas_gemm(blas, cfg, b, a, c).map_err(|e| ModelError::backend("cuda", e))
            }
            Gemmer::Kernel => {
                let (m64, n64, k64) = (m as u64, n as u64, k as u64);
                let tb = i32::from(trans_b);
                let mut lb = stream.launch_builder(kernel);
                lb.arg(&m64)
                    .arg(&n64)
                    .arg(&k64)
                    .arg(&alpha)
                    .arg(a)
                    .arg(b)
                    .arg(&tb)
                    .arg(&beta)
                    .arg(c);
                // SAFETY: lengths checked above; the kernel reads A[m·k], B[k·n], writes C[m·n].
                unsafe { lb.launch(super::launch_cfg(super::tables::gemm_iterations(m, n))) }
                    .map(|_| ())
                    .map_err(super::buffers::drv)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blas_sys::cublasOperation_t::CUBLAS_OP_N;

    /// cuBLAS's gemm semantics on column-major arrays: `C = alpha op(A) op(B) + beta C`.
    #[allow(clippy::too_many_arguments)]
    fn col_major_gemm(cfg: &GemmConfig<f64>, a: &[f64], b: &[f64], c: &mut [f64]) {
        let (m, n, k) = (cfg.m as usize, cfg.n as usize, cfg.k as usize);
        let (lda, ldb, ldc) = (cfg.lda as usize, cfg.ldb as usize, cfg.ldc as usize);
        let opa = |i: usize, p: usize| {
            if cfg.transa == CUBLAS_OP_N {
                a[i + p * lda]
            } else {
                a[p + i * lda]
            }
        };
        let opb = |p: usize, j: usize| {
            if cfg.transb == CUBLAS_OP_N {
                b[p + j * ldb]
            } else {
                b[j + p * ldb]
            }
        };
        for j in 0..n {
            for i in 0..m {
                let s: f64 = (0..k).map(|p| opa(i, p) * opb(p, j)).sum();
                c[i + j * ldc] = cfg.alpha * s + cfg.beta * c[i + j * ldc];
            }
        }
    }

    /// The configuration, run with cuBLAS's column-major semantics on (B, A, C), gives the
    /// row-major product in both layouts of B.
    #[test]
    fn blas_config_gives_the_row_major_product() {
        let (m, n, k) = (5, 3, 4);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let c0: Vec<f64> = (0..m * n).map(|i| (i as f64 * 0.11).cos()).collect();
        for trans_b in [false, true] {
            let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.73).cos()).collect();
            let bv = |p: usize, j: usize| if trans_b { b[j * k + p] } else { b[p * n + j] };
            let cfg = blas_config((m, n, k), trans_b, 0.7, 0.3).unwrap();
            let mut c = c0.clone();
            col_major_gemm(&cfg, &b, &a, &mut c);
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..k).map(|p| a[i * k + p] * bv(p, j)).sum();
                    let want = 0.7 * s + 0.3 * c0[i * n + j];
                    assert!(
                        (c[i * n + j] - want).abs() < 1e-14,
                        "trans_b {trans_b} ({i},{j})"
                    );
                }
            }
        }
    }
}
