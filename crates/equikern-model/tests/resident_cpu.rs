//! The resident step end to end on the CPU: `cuda_model::Resident` — the same code that
//! runs on CUDA (`CudaSevenNet = Resident<T, CudaExec<T>>`) — on an emulated device whose
//! kernels are `kernels.cu` compiled as C++ (each launch's arguments packed like
//! `cuLaunchKernel`'s `kernelParams`, the grid walked one thread at a time, at most 3
//! blocks of 256 so grid-stride loops wrap), whose products are the `ek_gemm` kernel and
//! whose convolutions are the core oracle. Checked against the host model
//! (`SevenNet::evaluate`): f64 within 1e-12 relative, f32 within 1e-5, with the workspace
//! poisoned (NaN), both radial-MLP memory modes, a larger structure before a smaller one,
//! no edges. What this does not cover is only `CudaExec`'s mapping to the driver
//! (tests/cuda_model.rs on a GPU). Skips where no C++ compiler is found. The real 7net-0
//! model runs 3 of the 6 modes unless `EQUIKERN_EMULATION_FULL=1` (CI time).

#![cfg(feature = "cuda")]

mod common;

use common::*;
use equikern::plan::{Direction, Tensor};
use equikern_core::conv::{ConvOracle, Csr, End};
use equikern_model::cuda_model::exec::{Arg, Exec, Kern, Memory, Pod};
use equikern_model::cuda_model::tables::{gemm_iterations, model_kernel_source, tf32};
use equikern_model::cuda_model::{DevReal, Resident};
use equikern_model::systems::si_diamond;
use equikern_model::{Prediction, Result, SevenNet, Structure};
use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

/// One launcher per kernel: `l_<name>(void** params, u64 iterations)`, the parameters read
/// from `params` in the kernel's order (as the driver does), the grid walked.
const LAUNCHERS: &str = r#"
#define A(i, T) (*(T*)p[i])
#define R const real*
#define W real*
#define D const double*
#define U const unsigned*
#ifdef EK_REAL_F32
#define RF const float4*
#else
#define RF const real*
#endif
extern "C" void l_ek_edge_geometry(void** p, u64 it) { grid(it, [&] { ek_edge_geometry(A(0,u64), A(1,D), A(2,D), A(3,int), A(4,double), A(5,int), A(6,double), A(7,double), A(8,W), A(9,W)); }); }
extern "C" void l_ek_edge_force(void** p, u64 it) { grid(it, [&] { ek_edge_force(A(0,u64), A(1,D), A(2,D), A(3,int), A(4,double), A(5,int), A(6,double), A(7,double), A(8,R), A(9,R), A(10,double*), A(11,u64)); }); }
extern "C" void l_ek_one_hot(void** p, u64 it) { grid(it, [&] { ek_one_hot(A(0,u64), A(1,U), A(2,int), A(3,W)); }); }
extern "C" void l_ek_linear(void** p, u64 it) { grid(it, [&] { ek_linear(A(0,u64), A(1,R), A(2,int), A(3,W), A(4,int), A(5,R), A(6,const int*), A(7,R), A(8,real), A(9,R), A(10,int)); }); }
extern "C" void l_ek_linear_path3(void** p, u64 it) { grid(it, [&] { ek_linear_path3(A(0,u64), A(1,int), A(2,int), A(3,R), A(4,u64), A(5,R), A(6,real), A(7,int), A(8,W), A(9,u64)); }); }
extern "C" void l_ek_linear_path5(void** p, u64 it) { grid(it, [&] { ek_linear_path5(A(0,u64), A(1,int), A(2,int), A(3,R), A(4,u64), A(5,R), A(6,real), A(7,int), A(8,W), A(9,u64)); }); }
extern "C" void l_ek_linear_path7(void** p, u64 it) { grid(it, [&] { ek_linear_path7(A(0,u64), A(1,int), A(2,int), A(3,R), A(4,u64), A(5,R), A(6,real), A(7,int), A(8,W), A(9,u64)); }); }
extern "C" void l_ek_gate(void** p, u64 it) { grid(it, [&] { ek_gate(A(0,u64), A(1,R), A(2,W), A(3,int), A(4,int), A(5,const int*), A(6,int), A(7,int), A(8,real)); }); }
extern "C" void l_ek_gate_backward(void** p, u64 it) { grid(it, [&] { ek_gate_backward(A(0,u64), A(1,R), A(2,R), A(3,W), A(4,int), A(5,int), A(6,const int*), A(7,int), A(8,int), A(9,real)); }); }
extern "C" void l_ek_act(void** p, u64 it) { grid(it, [&] { ek_act(A(0,u64), A(1,R), A(2,W), A(3,real)); }); }
extern "C" void l_ek_act_backward(void** p, u64 it) { grid(it, [&] { ek_act_backward(A(0,u64), A(1,R), A(2,W), A(3,real)); }); }
extern "C" void l_ek_mlp_hidden(void** p, u64 it) { grid_threads(it, [&] { ek_mlp_hidden(A(0,u64), A(1,int), A(2,R), A(3,R), A(4,int), A(5,real), A(6,W), A(7,W)); }); }
extern "C" void l_ek_mlp_hidden_backward(void** p, u64 it) { grid_threads(it, [&] { ek_mlp_hidden_backward(A(0,u64), A(1,int), A(2,R), A(3,R), A(4,int), A(5,real), A(6,R), A(7,W), A(8,int)); }); }
extern "C" void l_ek_mlp_hidden_backward2(void** p, u64 it) { grid_threads(it, [&] { ek_mlp_hidden_backward2(A(0,u64), A(1,int), A(2,R), A(3,R), A(4,int), A(5,real), A(6,W), A(7,W), A(8,int)); }); }
extern "C" int unsynced_barriers() { return ek_unsynced_barriers; }
extern "C" void l_ek_gemm(void** p, u64 it) { grid(it, [&] { ek_gemm(A(0,u64), A(1,u64), A(2,u64), A(3,real), A(4,R), A(5,R), A(6,int), A(7,real), A(8,W)); }); }
extern "C" void l_ek_accumulate(void** p, u64 it) { grid(it, [&] { ek_accumulate(A(0,u64), A(1,W), A(2,R), A(3,int)); }); }
extern "C" void l_ek_pair_sum(void** p, u64 it) { grid(it, [&] { ek_pair_sum(A(0,u64), A(1,W)); }); }
extern "C" void l_ek_fill(void** p, u64 it) { grid(it, [&] { ek_fill(A(0,u64), A(1,W), A(2,real)); }); }
extern "C" void l_ek_radial_last_tf32x3(void** p, u64 it) { grid_threads(it, [&] { ek_radial_last_tf32x3(A(0,u64), A(1,int), A(2,int), A(3,R), A(4,RF), A(5,real), A(6,W)); }); }
extern "C" void l_ek_split_tf32(void** p, u64 it) { grid(it, [&] { ek_split_tf32(A(0,u64), A(1,int), A(2,R), A(3,W)); }); }
extern "C" void l_ek_mlp_backward_tc(void** p, u64 it) { grid_threads(it, [&] { ek_mlp_backward_tc(A(0,u64), A(1,int), A(2,R), (const float4*)A(3,R), A(4,real), A(5,R), A(6,W), A(7,int), A(8,int)); }); }
extern "C" void l_ek_mlp_backward_tc_smem(void** p, u64 it) { grid_threads(it, [&] { ek_mlp_backward_tc_smem(A(0,u64), A(1,int), A(2,R), (const float4*)A(3,R), A(4,real), A(5,R), A(6,W), A(7,int), A(8,int)); }); }
extern "C" void l_ek_mlp_forward_tc_smem(void** p, u64 it) { grid_threads(it, [&] { ek_mlp_forward_tc_smem(A(0,u64), A(1,int), A(2,R), (const float4*)A(3,R), A(4,real), A(5,W), A(6,W)); }); }
extern "C" void l_ek_mlp_forward_tc(void** p, u64 it) { grid_threads(it, [&] { ek_mlp_forward_tc(A(0,u64), A(1,int), A(2,R), (const float4*)A(3,R), A(4,real), A(5,W), A(6,W)); }); }
extern "C" void l_ek_gemm_tf32x3_nt(void** p, u64 it) { grid_threads(it, [&] { ek_gemm_tf32x3_nt(A(0,u64), A(1,int), A(2,int), A(3,real), A(4,R), A(5,R), A(6,real), A(7,W), A(8,int)); }); }
extern "C" void l_ek_gemm_tf32x3_nt_pipe(void** p, u64 it) { grid_threads(it, [&] { ek_gemm_tf32x3_nt_pipe(A(0,u64), A(1,int), A(2,int), A(3,real), A(4,R), A(5,R), A(6,real), A(7,W), A(8,u64)); }); }
extern "C" void l_ek_linear_tc(void** p, u64 it) { grid_threads(it, [&] { ek_linear_tc(A(0,u64), A(1,int), A(2,const int*), (const float4*)A(3,R), A(4,R), A(5,u64), A(6,real), A(7,int), A(8,W), A(9,u64)); }); }
extern "C" void l_ek_conv_radial_bwd(void** p, u64 it) { grid_threads(it, [&] { ek_conv_radial_bwd(A(0,int), A(1,u64), A(2,u64), A(3,U), A(4,R), A(5,R), A(6,R), A(7,R), A(8,R), A(9,real), A(10,int), A(11,W), A(12,W), A(13,W)); }); }
extern "C" void l_ek_split_tf32_rows(void** p, u64 it) { grid(it, [&] { ek_split_tf32_rows(A(0,u64), A(1,int), A(2,R), A(3,u64), A(4,W), A(5,u64)); }); }
extern "C" void l_ek_fill_f64(void** p, u64 it) { grid(it, [&] { ek_fill_f64(A(0,u64), A(1,double*), A(2,double)); }); }
extern "C" void l_ek_readout(void** p, u64 it) { grid(it, [&] { ek_readout(A(0,u64), A(1,R), A(2,U), A(3,D), A(4,D), A(5,double*), A(6,W)); }); }
extern "C" void l_ek_forces(void** p, u64 it) { grid(it, [&] { ek_forces(A(0,u64), A(1,U), A(2,U), A(3,D), A(4,double*)); }); }
extern "C" void l_ek_virial_partial(void** p, u64 it) { grid(it, [&] { ek_virial_partial(A(0,u64), A(1,u64), A(2,D), A(3,D), A(4,double*)); }); }
extern "C" void l_ek_virial_final(void** p, u64 it) { grid(it, [&] { ek_virial_final(A(0,u64), A(1,D), A(2,double*)); }); }
"#;

/// A host buffer written through raw pointers by the emulated kernels.
struct HostBuf<E>(UnsafeCell<Vec<E>>);

impl<E> HostBuf<E> {
    fn ptr(&self) -> *mut E {
        // SAFETY: the emulated device is single-threaded; no reference outlives a call.
        unsafe { (*self.0.get()).as_mut_ptr() }
    }
    fn len(&self) -> usize {
        // SAFETY: as above.
        unsafe { (*self.0.get()).len() }
    }
    fn vec(&mut self) -> &mut Vec<E> {
        self.0.get_mut()
    }
    fn slice(&self, n: usize) -> &[E] {
        // SAFETY: as above; n ≤ len checked by the caller.
        unsafe { &(&*self.0.get())[..n] }
    }
}

/// A graph on the emulated device: the CSR (for the oracle) and its packed views.
struct HostGraph {
    csr: Arc<Csr>,
    recv: HostBuf<u32>,
    send: HostBuf<u32>,
    /// Edges from `fold` on read the weight rows `fold` before them (0: none).
    fold: usize,
}

type TpDims = (usize, usize, usize, usize);

type Launcher = unsafe extern "C" fn(*mut *mut c_void, u64);

/// The emulated device: kernels from a C++ library, convolutions by the oracle.
struct HostExec<T> {
    _lib: libloading::Library,
    launchers: Vec<Launcher>,
    /// Each layer's convolution and its `(dim_x, dim_y, dim_z, weight_numel)`.
    convs: Vec<(ConvOracle<T>, TpDims)>,
    launches: std::cell::Cell<usize>,
    /// ... of them `ek_gemm_tf32x3_nt` or `ek_gemm_tf32x3_nt_pipe`.
    tc_launches: std::cell::Cell<usize>,
    /// ... of them `ek_gemm_tf32x3_nt_pipe`.
    ntp_launches: std::cell::Cell<usize>,
    /// ... of them `ek_linear_path`.
    lp_launches: std::cell::Cell<usize>,
    /// ... of them `ek_linear_tc`.
    ltc_launches: std::cell::Cell<usize>,
    /// ... of them `ek_conv_radial_bwd`.
    rcb_launches: std::cell::Cell<usize>,
    /// ... of them summing an edge pair's `g_w` rows: `ek_pair_sum`, or
    /// `ek_gemm_tf32x3_nt_pipe` in its pair form.
    pair_launches: std::cell::Cell<usize>,
    /// ... of them `ek_mlp_hidden`.
    mh_launches: std::cell::Cell<usize>,
    /// ... of them `ek_split_tf32`.
    split_launches: std::cell::Cell<usize>,
    /// ... of them `ek_mlp_backward_tc` or `ek_mlp_backward_tc_smem`.
    mlp_tc_launches: std::cell::Cell<usize>,
    /// ... of them `ek_mlp_backward_tc_smem` or `ek_mlp_forward_tc_smem`.
    mlp_tc_smem_launches: std::cell::Cell<usize>,
    /// ... of them `ek_mlp_forward_tc[_smem]` (counted in `mh_launches` too).
    mlp_tc_fwd_launches: std::cell::Cell<usize>,
    /// Whether `gemm_strided` runs (the linears as products, like cuBLAS) or declines (the
    /// linears by `ek_linear`, like the kernel fallback).
    strided: bool,
    /// Products run so far: `gemm_strided` (plain), `gemm_strided_tf32`, `gemm_tf32`.
    counts: std::cell::Cell<[usize; 3]>,
    /// Whether side lanes open (run in order on the one emulated stream): the step then
    /// takes the paths that depend on them (the two `w` slots), not their concurrency.
    sides: bool,
}

fn build<T: DevReal>(model: &SevenNet<T>, dir: &Path) -> Option<HostExec<T>> {
    let cxx = ["c++", "g++", "clang++"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(cxx) = cxx else {
        println!("SKIP: no C++ compiler (c++, g++, clang++)");
        return None;
    };
    let lmax = model.sh_ls.iter().copied().max().unwrap_or(0);
    let src = format!(
        "{KERNEL_SHIM}{}{GRID_WALKER}{GRID_THREADS}{LAUNCHERS}",
        model_kernel_source(model).unwrap()
    );
    let name = format!("ek_resident_{}_l{lmax}", T::NAME);
    let cpp = dir.join(format!("{name}.cpp"));
    let so = dir.join(format!("{name}.so"));
    std::fs::write(&cpp, src).unwrap();
    let o = Command::new(cxx)
        .args([
            "-std=c++17",
            "-O2",
            "-shared",
            "-fPIC",
            "-pthread",
            "-w",
            "-o",
        ])
        .arg(&so)
        .arg(&cpp)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "C++ build failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // SAFETY: a library we just built (constant tables only).
    let lib = unsafe { libloading::Library::new(&so) }.unwrap();
    let launchers = Kern::ALL
        .iter()
        .map(|k| {
            let sym = format!("l_{}", k.name());
            // SAFETY: every launcher has this signature.
            let f: libloading::Symbol<Launcher> = unsafe { lib.get(sym.as_bytes()) }.unwrap();
            *f
        })
        .collect();
    let convs = model
        .layers
        .iter()
        .map(|l| (ConvOracle::new(&l.product).unwrap(), l.tp_dims))
        .collect();
    Some(HostExec {
        _lib: lib,
        launchers,
        convs,
        launches: std::cell::Cell::new(0),
        tc_launches: std::cell::Cell::new(0),
        ntp_launches: std::cell::Cell::new(0),
        lp_launches: std::cell::Cell::new(0),
        ltc_launches: std::cell::Cell::new(0),
        rcb_launches: std::cell::Cell::new(0),
        pair_launches: std::cell::Cell::new(0),
        mh_launches: std::cell::Cell::new(0),
        split_launches: std::cell::Cell::new(0),
        mlp_tc_launches: std::cell::Cell::new(0),
        mlp_tc_smem_launches: std::cell::Cell::new(0),
        mlp_tc_fwd_launches: std::cell::Cell::new(0),
        strided: false,
        counts: std::cell::Cell::new([0; 3]),
        sides: false,
    })
}

/// Upper half of a 4-byte argument's 8-byte slot.
const JUNK: u64 = 0x7ff4_dead_0000_0000;

/// Panics unless every element of the `rows × cols` block from `off` (row stride `ld`) is
/// exact in TF32 (f32; a 3xTF32 factor that skipped its split fails here).
fn assert_tf32<T: DevReal>(
    what: &str,
    b: &HostBuf<T>,
    off: usize,
    rows: usize,
    ld: usize,
    cols: usize,
) {
    if T::NAME != "f32" {
        return;
    }
    let v = b.slice(b.len());
    for r in 0..rows {
        for c in 0..cols {
            let x = v[off + r * ld + c].to_f64() as f32;
            assert!(
                tf32(x) == x,
                "{what}: element ({r}, {c}) = {x:e} is not exact in TF32"
            );
        }
    }
}

impl<T> HostExec<T> {
    fn count(&self, i: usize) {
        let mut c = self.counts.get();
        c[i] += 1;
        self.counts.set(c);
    }

    /// The last product, counted as plain by `gemm_strided`, was of kind `i`.
    fn recount(&self, i: usize) {
        let mut c = self.counts.get();
        c[0] -= 1;
        c[i] += 1;
        self.counts.set(c);
    }

    /// `__syncthreads` calls outside `grid_threads` (a kernel with a barrier launched by the
    /// sequential walker).
    fn unsynced_barriers(&self) -> i32 {
        type UFn = unsafe extern "C" fn() -> i32;
        // SAFETY: the launcher library defines it with this signature.
        let f: libloading::Symbol<UFn> = unsafe { self._lib.get(b"unsynced_barriers") }.unwrap();
        // SAFETY: no arguments.
        unsafe { f() }
    }
}

fn val_bits<T: DevReal>(v: T) -> u64 {
    if T::NAME == "f32" {
        JUNK | u64::from((v.to_f64() as f32).to_bits())
    } else {
        v.to_f64().to_bits()
    }
}

impl<T: DevReal> Memory for HostExec<T> {
    type Buf<E: Pod> = HostBuf<E>;
    type Graph = HostGraph;

    fn describe(&self) -> String {
        "CPU emulation".into()
    }
    fn alloc<E: Pod>(&self, n: usize) -> Result<HostBuf<E>> {
        Ok(HostBuf(UnsafeCell::new(vec![E::default(); n.max(1)])))
    }
    fn capacity<E: Pod>(b: &HostBuf<E>) -> usize {
        b.len()
    }
    fn upload<E: Pod>(&self, src: &[E], dst: &mut HostBuf<E>) -> Result<()> {
        assert!(dst.len() >= src.len(), "upload past the end");
        dst.vec()[..src.len()].copy_from_slice(src);
        Ok(())
    }
    fn download(&self, src: &HostBuf<f64>, n: usize) -> Result<Vec<f64>> {
        assert!(src.len() >= n, "download past the end");
        Ok(src.slice(n).to_vec())
    }
    fn zero<E: Pod>(&self, b: &mut HostBuf<E>) -> Result<()> {
        b.vec().fill(E::default());
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn graph(&self, n: usize, receiver: &[u32], sender: &[u32]) -> Result<HostGraph> {
        let csr = Arc::new(Csr::build(n, receiver, sender).unwrap());
        let view = |v: Vec<u32>| HostBuf(UnsafeCell::new(v));
        Ok(HostGraph {
            recv: view(csr.packed(End::Receiver)),
            send: view(csr.packed(End::Sender)),
            csr,
            fold: 0,
        })
    }
    fn fold_weights(&self, g: HostGraph, fold: usize) -> Result<HostGraph> {
        assert!(fold <= g.csr.edges(), "fold {fold} past the edges");
        Ok(HostGraph { fold, ..g })
    }
    fn graph_views(g: &HostGraph) -> (&HostBuf<u32>, &HostBuf<u32>) {
        (&g.recv, &g.send)
    }
    fn graph_bytes(_: &HostGraph) -> u64 {
        0
    }
}

impl<T: DevReal> Exec<T> for HostExec<T> {
    fn fork_side_available(&self) -> bool {
        self.sides
    }
    fn fork_side(&self, _: equikern_model::cuda_model::exec::Side) -> Result<bool> {
        Ok(self.sides)
    }
    fn launch(&self, k: Kern, iterations: u64, args: &[Arg<'_, T, Self>]) -> Result<()> {
        if iterations == 0 {
            return Ok(());
        }
        let mut slots: Vec<u64> = args
            .iter()
            .map(|a| match a {
                Arg::Real(b, off) => {
                    assert!(*off <= b.len(), "{}: offset past the end", k.name());
                    b.ptr() as u64 + (off * std::mem::size_of::<T>()) as u64
                }
                Arg::F64s(b, off) => b.ptr() as u64 + (off * 8) as u64,
                Arg::U32s(b, off) => b.ptr() as u64 + (off * 4) as u64,
                Arg::I32s(b) => b.ptr() as u64,
                Arg::U64(v) => *v,
                // 4-byte values carry garbage in the slot's upper half: a kernel parameter
                // of 8 bytes fed a 4-byte argument (which the driver would read past) fails
                Arg::I32(v) => JUNK | u64::from(*v as u32),
                Arg::F64(v) => v.to_bits(),
                Arg::Val(v) => val_bits(*v),
                Arg::Null => 0,
            })
            .collect();
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect();
        self.launches.set(self.launches.get() + 1);
        if matches!(k, Kern::GemmTf32x3Nt | Kern::GemmTf32x3NtPipe) {
            self.tc_launches.set(self.tc_launches.get() + 1);
        }
        if k == Kern::GemmTf32x3NtPipe {
            self.ntp_launches.set(self.ntp_launches.get() + 1);
        }
        if matches!(
            k,
            Kern::MlpHidden | Kern::MlpForwardTc | Kern::MlpForwardTcSmem
        ) {
            self.mh_launches.set(self.mh_launches.get() + 1);
        }
        if matches!(k, Kern::MlpForwardTc | Kern::MlpForwardTcSmem) {
            self.mlp_tc_fwd_launches
                .set(self.mlp_tc_fwd_launches.get() + 1);
        }
        if k == Kern::SplitTf32 {
            self.split_launches.set(self.split_launches.get() + 1);
        }
        if matches!(k, Kern::MlpBackwardTc | Kern::MlpBackwardTcSmem) {
            self.mlp_tc_launches.set(self.mlp_tc_launches.get() + 1);
        }
        if matches!(k, Kern::MlpBackwardTcSmem | Kern::MlpForwardTcSmem) {
            self.mlp_tc_smem_launches
                .set(self.mlp_tc_smem_launches.get() + 1);
        }
        if matches!(k, Kern::LinearPath3 | Kern::LinearPath5 | Kern::LinearPath7) {
            self.lp_launches.set(self.lp_launches.get() + 1);
        }
        if k == Kern::LinearTc {
            self.ltc_launches.set(self.ltc_launches.get() + 1);
        }
        if k == Kern::ConvRadialBwd {
            self.rcb_launches.set(self.rcb_launches.get() + 1);
        }
        // a pair's g_w rows summed: by ek_pair_sum, or by the pipelined product's pair form
        if k == Kern::PairSum || (k == Kern::GemmTf32x3NtPipe && slots[8] != 0) {
            self.pair_launches.set(self.pair_launches.get() + 1);
        }
        // SAFETY: the launcher reads the parameters in the kernel's order; the step sized
        // every buffer (the same code as on the GPU).
        unsafe { (self.launchers[k.index()])(params.as_mut_ptr(), iterations) };
        Ok(())
    }

    fn gemm(
        &self,
        (m, n, k): (usize, usize, usize),
        alpha: T,
        a: &HostBuf<T>,
        b: &HostBuf<T>,
        trans_b: bool,
        beta: T,
        c: &mut HostBuf<T>,
    ) -> Result<()> {
        assert!(
            a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
            "gemm sizes"
        );
        let c: &HostBuf<T> = c;
        self.launch(
            Kern::Gemm,
            gemm_iterations(m, n),
            &[
                Arg::U64(m as u64),
                Arg::U64(n as u64),
                Arg::U64(k as u64),
                Arg::Val(alpha),
                Arg::Real(a, 0),
                Arg::Real(b, 0),
                Arg::I32(i32::from(trans_b)),
                Arg::Val(beta),
                Arg::Real(c, 0),
            ],
        )
    }

    fn gemm_tf32_available(&self) -> bool {
        self.strided
    }

    /// The 3xTF32 product's factors multiplied exactly (in `T`): checks the split kernel and
    /// the orchestration; tensor-core rounding is the GPU test's to judge.
    fn gemm_tf32(
        &self,
        dims: (usize, usize, usize),
        alpha: T,
        a: &HostBuf<T>,
        b: &HostBuf<T>,
        beta: T,
        c: &mut HostBuf<T>,
    ) -> Result<bool> {
        if !self.strided {
            return Ok(false);
        }
        let (m, n, k) = dims;
        assert_tf32("gemm_tf32 A", a, 0, m, k, k);
        assert_tf32("gemm_tf32 B", b, 0, k, n, n);
        self.gemm_strided(dims, alpha, (a, 0, k), (b, 0, n), beta, (c, 0, n))?;
        self.recount(2);
        Ok(true)
    }

    /// As `gemm_tf32`: the factors (exact in TF32, checked) multiplied exactly in `T`.
    fn gemm_strided_tf32(
        &self,
        dims: (usize, usize, usize),
        alpha: T,
        a: (&HostBuf<T>, usize, usize),
        b: (&HostBuf<T>, usize, usize),
        beta: T,
        c: (&mut HostBuf<T>, usize, usize),
    ) -> Result<bool> {
        if !self.strided {
            return Ok(false);
        }
        let (m, n, k) = dims;
        assert_tf32("gemm_strided_tf32 A", a.0, a.1, m, a.2, k);
        assert_tf32("gemm_strided_tf32 B", b.0, b.1, k, b.2, n);
        self.gemm_strided(dims, alpha, a, b, beta, c)?;
        self.recount(1);
        Ok(true)
    }

    fn gemm_strided(
        &self,
        (m, n, k): (usize, usize, usize),
        alpha: T,
        a: (&HostBuf<T>, usize, usize),
        b: (&HostBuf<T>, usize, usize),
        beta: T,
        c: (&mut HostBuf<T>, usize, usize),
    ) -> Result<bool> {
        if !self.strided {
            return Ok(false);
        }
        self.count(0);
        let (av, bv) = (a.0.slice(a.0.len()), b.0.slice(b.0.len()));
        let cv = c.0.vec();
        for i in 0..m {
            for j in 0..n {
                let mut acc = T::ZERO;
                for q in 0..k {
                    acc += av[a.1 + i * a.2 + q] * bv[b.1 + q * b.2 + j];
                }
                let o = &mut cv[c.1 + i * c.2 + j];
                // beta = 0 overwrites (a poisoned NaN must not survive), as cuBLAS does
                *o = if beta == T::ZERO {
                    alpha * acc
                } else {
                    alpha * acc + beta * *o
                };
            }
        }
        Ok(true)
    }

    fn conv(
        &self,
        layer: usize,
        d: Direction,
        g: &HostGraph,
        inputs: &[(Tensor, &HostBuf<T>)],
        outputs: &mut [(Tensor, &mut HostBuf<T>)],
    ) -> Result<()> {
        let (op, (d1, d2, dmid, numel)) = &self.convs[layer];
        let fold = g.fold;
        let g = &g.csr;
        let (nodes, edges) = (g.nodes, g.edges());
        let get = |t: Tensor, n: usize| {
            let b = inputs.iter().find(|(u, _)| *u == t).expect("input").1;
            assert!(b.len() >= n, "conv input {t:?}: {} < {n}", b.len());
            b.slice(n).to_vec()
        };
        let x = get(Tensor::X, nodes * d1);
        let y = get(Tensor::Y, edges * d2);
        // shared weight rows expanded to one per edge for the oracle (only the rows the
        // fold names are read: a buffer of exactly those rows passes)
        let rows = equikern::plan::conv::weight_rows(edges as u64, fold as u64) as usize;
        let w_rows = get(Tensor::W, rows * numel);
        let w: Vec<T> = (0..edges)
            .flat_map(|e| {
                let r = if fold > 0 && e >= fold { e - fold } else { e };
                w_rows[r * numel..(r + 1) * numel].to_vec()
            })
            .collect();
        let mut put = |t: Tensor, v: Vec<T>| {
            let b = &mut outputs.iter_mut().find(|(u, _)| *u == t).expect("output").1;
            assert!(b.len() >= v.len());
            b.vec()[..v.len()].copy_from_slice(&v);
        };
        match d {
            Direction::Forward => put(Tensor::Z, op.forward(g, &x, &y, &w).unwrap()),
            Direction::Backward => {
                let gz = get(Tensor::GZ, nodes * dmid);
                let r = op.backward(g, &x, &y, &w, &gz).unwrap();
                put(Tensor::GX, r.gx);
                put(Tensor::GY, r.gy);
                put(Tensor::GW, r.gw);
            }
            Direction::DoubleBackward => unreachable!("the step has no double backward"),
        }
        Ok(())
    }

    fn gemm_name(&self) -> &'static str {
        "ek_gemm (CPU emulation)"
    }

    /// The emulated `mma.m16n8k8` (tests/common): `ek_gemm_tf32x3_nt` runs.
    fn tensor_cores(&self) -> bool {
        true
    }

    /// ... and the shared-memory-staged kernels (`cp.async` copies immediate, one block's
    /// shared memory at a time).
    fn staged(&self, _k: Kern) -> bool {
        true
    }
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ek-resident-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Relative errors of `p` against the host model's `r` (forces: max |Δ| / max |F|, energy:
/// |ΔE| / |E − Σ shift|, stress: max |Δ| / max |σ|), with the worst atom.
fn check(what: &str, model: &SevenNet, s: &Structure, p: &Prediction, r: &Prediction, tol: f64) {
    assert_eq!(p.num_edges, r.num_edges);
    let (mut df, mut at) = (0.0f64, (0, 0));
    for (i, (a, b)) in p.forces.iter().zip(&r.forces).enumerate() {
        for c in 0..3 {
            assert!(a[c].is_finite(), "{what}: force {i}.{c} = {}", a[c]);
            if (a[c] - b[c]).abs() > df {
                df = (a[c] - b[c]).abs();
                at = (i, c);
            }
        }
    }
    let fs = r
        .forces
        .iter()
        .flatten()
        .fold(0.0f64, |m, x| m.max(x.abs()))
        .max(1e-300);
    let shift: f64 = s
        .numbers
        .iter()
        .map(|z| model.shift[model.type_map[z]])
        .sum();
    let es = (r.energy - shift).abs().max(1e-300);
    let de = (p.energy - r.energy).abs() / es;
    let ds = match (p.stress, r.stress) {
        (Some(a), Some(b)) => {
            let m = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-300);
            a.iter()
                .zip(&b)
                .fold(0.0f64, |x, (u, v)| x.max((u - v).abs()))
                / m
        }
        (None, None) => 0.0,
        _ => panic!("{what}: stress presence differs"),
    };
    let ea = p
        .atomic_energies
        .iter()
        .zip(&r.atomic_energies)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    println!(
        "  {what:46} {:3} atoms {:5} edges: rel dF {:.1e} (atom {} comp {}), rel dE {de:.1e}, rel dS {ds:.1e}, max|dE_i| {ea:.1e}",
        s.positions.len(),
        p.num_edges,
        df / fs,
        at.0,
        at.1
    );
    assert!(
        df / fs <= tol,
        "{what}: forces rel {:.2e} at atom {} comp {}: {} vs {}",
        df / fs,
        at.0,
        at.1,
        p.forces[at.0][at.1],
        r.forces[at.0][at.1]
    );
    assert!(
        de <= tol,
        "{what}: energy rel {de:.2e}: {} vs {}",
        p.energy,
        r.energy
    );
    assert!(ds <= tol, "{what}: stress rel {ds:.2e}");
}

/// `linear_min`: the smallest `k` and `n` of a Linear product run as 3xTF32 (f32, in the
/// mode with the linears as products); `mixed`: the step must then have both kinds.
fn run<T: DevReal>(model: &SevenNet, label: &str, tol: f64, linear_min: usize, mixed: bool) {
    let dir = tmpdir(&format!("{}-{label}", T::NAME));
    let mt: SevenNet<T> = model.cast();
    let mut systems: Vec<(&str, Structure)> =
        vec![("triclinic", triclinic()), ("molecule", molecule())];
    if model.type_map.contains_key(&14) {
        // rattled: the perfect crystal's forces vanish by symmetry
        let mut si = si_diamond(1);
        for (i, p) in si.positions.iter_mut().enumerate() {
            for (c, x) in p.iter_mut().enumerate() {
                *x += 0.05 * ((i * 3 + c) as f64 * 1.37).sin();
            }
        }
        systems.push(("si 8 rattled", si));
    }
    systems.retain(|(_, s)| s.numbers.iter().all(|z| model.type_map.contains_key(z)));
    // the radial MLP's hidden layers fused in both memory modes (and with the two-pass
    // backward), on cuBLAS (here `ek_gemm`) + `ek_act` in both; f32 with the radial outputs
    // kept: 3xTF32, its backward by `ek_gemm_tf32x3_nt` (emulated tensor cores) on both MLP
    // paths, and once by the plain product (`set_tf32x3_bwd(false)`)
    // 7net-0 (the real model: minutes per mode on 2 cores) runs a subset on CI — the kept
    // fused mode with every f32 tensor-core path, the recomputing cuBLAS mode, the kept mode
    // without the tensor-core backward — and every mode with `EQUIKERN_EMULATION_FULL=1`;
    // the small models run every mode always.
    let full = std::env::var("EQUIKERN_EMULATION_FULL").is_ok_and(|v| v == "1");
    for (mode, (keep, fused, two_pass, tc_bwd)) in [
        (true, true, false, true),
        (false, true, false, true),
        (false, true, true, true),
        (true, false, false, true),
        (false, false, false, true),
        (true, true, false, false),
    ]
    .into_iter()
    .enumerate()
    {
        if !tc_bwd && T::NAME != "f32" {
            continue;
        }
        if label == "7net-0" && !full && ![0, 4, 5].contains(&mode) {
            println!("[{label}] mode {mode} skipped on CI (EQUIKERN_EMULATION_FULL=1 runs it)");
            continue;
        }
        let Some(mut exec) = build(&mt, &dir) else {
            return;
        };
        // the linears as strided products with one memory mode, by ek_linear with the other
        exec.strided = keep;
        let mut ev = Resident::with_exec(&mt, exec).unwrap();
        // f32 with 3xTF32 (kept outputs): the forward last product by the tensor-core kernel
        // `ek_radial_last_tf32x3` with the fused MLP, by split rows + the emulated cuBLAS
        // product without
        // (mode 5: by split rows that `ek_mlp_hidden` writes itself, `set_mlp_split`)
        ev.set_tf32x3_mma(fused && mode != 5);
        ev.set_mlp_split(mode == 5);
        // modes 0 and 1: the fused MLP's backward on (emulated) tensor cores where the
        // hidden widths are [nb ≤ 8, 64, 64] (7net-0's; not the small models')
        let mlp_tc = mode <= 1;
        ev.set_mlp_tc(mlp_tc);
        // modes 0 (h out) and 5 (split rows out): its forward too, by `ek_mlp_forward_tc`
        let mlp_tc_fwd = mode == 0 || mode == 5;
        ev.set_mlp_tc_fwd(mlp_tc_fwd);
        // mode 0: with the L1 prefetches' argument on (no-ops here: the launch carries it)
        ev.set_prefetch(mode == 0);
        // mode 0: the backward product by `ek_gemm_tf32x3_nt_pipe` where k % 4 == 0, and the
        // tensor-core MLP backward with its pack in shared memory
        ev.set_nt_pipe(mode == 0);
        ev.set_mlp_tc_smem(mode == 0);
        ev.set_keep_w_bytes(if keep { u64::MAX } else { 0 });
        // f32: the radial MLP's last product and the Linear products as 3xTF32 factors with
        // one memory mode
        ev.set_tf32x3(keep);
        ev.set_tf32x3_bwd(tc_bwd);
        ev.set_tf32x3_linear(true, linear_min).unwrap();
        ev.set_mlp_fused(fused).unwrap();
        ev.set_mlp_two_pass(two_pass);
        // the Linears' l > 0 paths by `ek_linear_path`, except in mode 3 (`W ⊗ I` products)
        let paths = mode != 3;
        ev.set_linear_paths(paths);
        // mode 1 (fused, recomputing): the last hidden activations kept for the recomputation
        let keep_h = mode == 1;
        ev.set_keep_h(keep_h);
        // the recomputing modes (1, 2, 4): every f32 Linear by one `ek_linear_tc` launch; the
        // others keep the per-path products and `ek_linear` (7net-0's ≈ 200 emulated launches
        // only with EQUIKERN_EMULATION_FULL=1: 10 min of CI; `cuda_kernels_cpu` checks the
        // kernel on each of its Linears)
        let linear_tc = !keep && (label != "7net-0" || full);
        ev.set_linear_tc(linear_tc);
        // a radial row per edge pair (Graph::build's pair order) except in mode 2
        let pairs = mode != 2;
        ev.set_pair_rows(pairs);
        println!(
            "{} [{label}, radial outputs kept: {keep}, linears as products: {keep}, MLP fused: {fused}, two-pass: {two_pass}, tensor-core backward: {tc_bwd}, 3xTF32 forward mma: {}]",
            ev.describe(),
            keep && fused
        );
        // the largest first: later (smaller) structures run on a larger, stale workspace
        systems.sort_by_key(|(_, s)| std::cmp::Reverse(edge_count(model, s)));
        for (name, s) in &systems {
            let r = model.evaluate(s).unwrap();
            let mh = ev.exec().mh_launches.get();
            let p0 = ev.evaluate(s).unwrap();
            assert_eq!(ev.kept_radial_outputs(), keep);
            assert_eq!(ev.kept_hidden(), keep_h);
            if fused && edge_count(model, s) > 0 {
                // forward: one per layer; the recomputing backward: one per layer but the
                // last, unless their hidden activations were kept
                let nl = model.layers.len();
                let want = if keep || keep_h { nl } else { 2 * nl - 1 };
                assert_eq!(
                    ev.exec().mh_launches.get() - mh,
                    want,
                    "{name}: ek_mlp_hidden launches"
                );
            }
            ev.poison_workspace().unwrap();
            let p = ev.evaluate(s).unwrap();
            assert_eq!(p, p0, "{name}: a run on a poisoned workspace differs");
            // the pair rows' gradient sum, once per layer's convolution backward (by
            // ek_pair_sum or in the pipelined product)
            let pair_n = ev.exec().pair_launches.get();
            ev.exec().pair_launches.set(0);
            let want = if pairs && edge_count(model, s) > 0 {
                2 * model.layers.len()
            } else {
                0
            };
            assert_eq!(
                pair_n, want,
                "{name}: ek_pair_sum launches (pair rows {pairs})"
            );
            check(
                &format!(
                    "{} {label} {name} keep={keep} fused={fused}{}{}",
                    T::NAME,
                    if two_pass { "2" } else { "" },
                    if tc_bwd { "" } else { " tc_bwd=0" }
                ),
                model,
                s,
                &p,
                &r,
                tol,
            );
        }
        let mlp_tc_n = ev.exec().mlp_tc_launches.get();
        println!("  {mlp_tc_n} launches of ek_mlp_backward_tc");
        if !(mlp_tc && fused && T::NAME == "f32") {
            assert_eq!(mlp_tc_n, 0, "ek_mlp_backward_tc launched with it off");
        } else if label == "7net-0" {
            assert!(mlp_tc_n > 0, "7net-0: no ek_mlp_backward_tc launch");
        }
        // ... in mode 0 every one of them, forward and backward, with the pack in shared
        // memory, elsewhere none
        let smem_n = ev.exec().mlp_tc_smem_launches.get();
        if mode == 0 {
            let fwd_n = ev.exec().mlp_tc_fwd_launches.get();
            assert_eq!(
                smem_n,
                mlp_tc_n + fwd_n,
                "mode 0: shared-memory MLP launches"
            );
        } else {
            assert_eq!(smem_n, 0, "ek_mlp_backward_tc_smem launched in mode {mode}");
        }
        let fwd_n = ev.exec().mlp_tc_fwd_launches.get();
        println!("  {fwd_n} launches of ek_mlp_forward_tc");
        if !(mlp_tc_fwd && fused && T::NAME == "f32") {
            assert_eq!(fwd_n, 0, "ek_mlp_forward_tc launched with it off");
        } else if label == "7net-0" {
            assert!(fwd_n > 0, "7net-0: no ek_mlp_forward_tc launch");
        }
        let splits = ev.exec().split_launches.get();
        println!("  {splits} launches of ek_split_tf32");
        if mode == 5 && T::NAME == "f32" {
            // every radial last product from the hidden kernel's own split rows
            assert_eq!(
                splits, 0,
                "ek_split_tf32 ran with the split in ek_mlp_hidden"
            );
        } else if mode == 3 && T::NAME == "f32" {
            assert!(
                splits > 0,
                "no ek_split_tf32 for the cuBLAS 3xTF32 radial product"
            );
        }
        let tc = ev.exec().tc_launches.get();
        println!(
            "  {} launches ({tc} of ek_gemm_tf32x3_nt), workspace {} bytes",
            ev.exec().launches.get(),
            ev.workspace_bytes()
        );
        // the tensor-core backward ran exactly where it should: f32, 3xTF32 on, switch on
        assert_eq!(
            tc > 0,
            T::NAME == "f32" && keep && tc_bwd,
            "ek_gemm_tf32x3_nt launches: {tc}"
        );
        // ... the pipelined kernel in mode 0 (7net-0's widths are multiples of 4) only
        let ntp = ev.exec().ntp_launches.get();
        println!("  {ntp} launches of ek_gemm_tf32x3_nt_pipe");
        if mode != 0 || T::NAME != "f32" {
            assert_eq!(ntp, 0, "ek_gemm_tf32x3_nt_pipe ran in mode {mode}");
        } else if label == "7net-0" {
            assert_eq!(ntp, tc, "7net-0 mode 0: every backward product pipelined");
        }
        let ltc = ev.exec().ltc_launches.get();
        println!("  {ltc} launches of ek_linear_tc");
        if linear_tc && T::NAME == "f32" {
            assert!(ltc > 0, "no ek_linear_tc launch with it on");
        } else {
            assert_eq!(ltc, 0, "ek_linear_tc launched in mode {mode} ({})", T::NAME);
        }
        let lp = ev.exec().lp_launches.get();
        println!("  {lp} launches of ek_linear_path");
        // (the small models' l > 0 blocks are not 4-aligned: no products, no paths for them;
        // without strided products a Linear falls back to `ek_linear` at its first 0e block)
        if !paths {
            assert_eq!(lp, 0, "ek_linear_path launched with the paths off");
        } else if label == "7net-0" && keep {
            assert!(lp > 0, "7net-0: no ek_linear_path launch");
        }
        let [plain, lin3, mlp3] = ev.exec().counts.get();
        println!(
            "  {} launches, workspace {} bytes; products: {plain} plain strided, {lin3} strided 3xTF32 (linears), {mlp3} 3xTF32 (radial)",
            ev.exec().launches.get(),
            ev.workspace_bytes()
        );
        if keep && T::NAME == "f32" {
            assert!(lin3 > 0, "no Linear product ran as 3xTF32");
            assert!(
                mode != 5 || mlp3 > 0,
                "no radial product from ek_mlp_hidden's split rows"
            );
            if mixed {
                assert!(
                    plain > 0,
                    "no Linear product stayed plain below the minimum"
                );
            }
        } else {
            assert_eq!(lin3 + mlp3, 0, "3xTF32 products with 3xTF32 off");
        }
        assert_eq!(
            ev.exec().unsynced_barriers(),
            0,
            "a barrier ran outside grid_threads"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn edge_count(model: &SevenNet, s: &Structure) -> usize {
    equikern_model::Graph::build(s, model.cutoff).map_or(0, |g| g.len())
}

#[test]
fn resident_step_matches_host_f64() {
    for (label, cutoff) in [("small XPLOR", "XPLOR"), ("small poly", "poly")] {
        run::<f64>(&small_model(cutoff, 3), label, 1e-12, 0, false);
    }
}

#[test]
fn resident_step_matches_host_f32() {
    for (label, cutoff) in [("small XPLOR", "XPLOR"), ("small poly", "poly")] {
        // the small models' aligned products (the only ones not on `ek_linear`) are 4 wide
        run::<f32>(&small_model(cutoff, 3), label, 1e-5, 4, false);
    }
}

#[test]
fn resident_step_matches_host_7net0() {
    let Some(model) = real_model() else { return };
    run::<f64>(&model, "7net-0", 1e-12, 0, false);
    // 7net-0's products are all ≥ 64 wide (the default minimum): 160 leaves the 128- and
    // 64-wide ones plain, so one step has both kinds
    run::<f32>(&model, "7net-0", 1e-5, 160, true);
}

/// The convolution backward fused with the radial last product (`ek_conv_radial_bwd`,
/// `set_conv_radial`) in the resident step — f32, fused radial MLP, `w` recomputed with the
/// hidden activations kept — on the synthetic model whose layers all qualify (widths 64 /
/// 16 / 8, hidden 16), against the host model (1e-5), with it off and on: one launch per
/// group of every layer but the last with it on, none off.
#[test]
fn resident_step_conv_radial() {
    use equikern_model::cuda_model::radial_conv::RadialConvKernels;
    let model = rcb_model();
    let mt: SevenNet<f32> = model.cast();
    let rk = RadialConvKernels::of(&mt);
    let nl = mt.layers.len();
    let groups: usize = mt.layers[..nl - 1]
        .iter()
        .map(|l| rk.variants(l).expect("every layer qualifies").len())
        .sum();
    let dir = tmpdir("f32-rcb");
    for on in [false, true] {
        let Some(exec) = build(&mt, &dir) else {
            return;
        };
        let mut ev = Resident::with_exec(&mt, exec).unwrap();
        ev.set_mlp_fused(true).unwrap();
        ev.set_keep_w_bytes(0);
        ev.set_keep_h(true);
        ev.set_conv_radial(on);
        println!("{} [conv_radial {on}]", ev.describe());
        for (name, s) in [("triclinic", triclinic()), ("molecule", molecule())] {
            let r = model.evaluate(&s).unwrap();
            let n0 = ev.exec().rcb_launches.get();
            ev.poison_workspace().unwrap();
            let p = ev.evaluate(&s).unwrap();
            let n = ev.exec().rcb_launches.get() - n0;
            assert!(edge_count(&model, &s) > 0);
            assert_eq!(
                n,
                if on { groups } else { 0 },
                "{name}: ek_conv_radial_bwd launches"
            );
            check(
                &format!("f32 synthetic {name} conv_radial={on}"),
                &model,
                &s,
                &p,
                &r,
                1e-5,
            );
        }
    }
}

/// The backward recomputing `w` two layers ahead in two alternating buffers
/// (`set_recompute_ahead`, with side lanes: here run in order) — f32 with 3xTF32 (its split
/// rows in their own scratch) and f64, fused radial MLP, `w` recomputed from kept hidden
/// activations — against the host model and bitwise against the one-buffer schedule, on a
/// poisoned workspace.
#[test]
fn resident_step_recompute_ahead() {
    fn run<T: DevReal>(model: &SevenNet, tol: f64) {
        let mt: SevenNet<T> = model.cast();
        let dir = tmpdir(&format!("{}-ahead", T::NAME));
        let systems = [("triclinic", triclinic()), ("molecule", molecule())];
        let mut got: Vec<Vec<Prediction>> = vec![];
        for ahead in [false, true] {
            let Some(mut exec) = build(&mt, &dir) else {
                return;
            };
            exec.sides = true;
            let mut ev = Resident::with_exec(&mt, exec).unwrap();
            ev.set_mlp_fused(true).unwrap();
            ev.set_keep_w_bytes(0);
            ev.set_keep_h(true);
            ev.set_tf32x3(true);
            ev.set_tf32x3_linear(false, 0).unwrap();
            ev.set_lanes(true);
            ev.set_recompute_ahead(ahead);
            println!("{} [recompute ahead {ahead}]", ev.describe());
            let mut preds = vec![];
            for (name, s) in &systems {
                assert!(edge_count(model, s) > 0);
                let r = model.evaluate(s).unwrap();
                ev.poison_workspace().unwrap();
                let splits = ev.exec().split_launches.get();
                let p = ev.evaluate(s).unwrap();
                assert!(ev.kept_hidden());
                assert_eq!(ev.recomputed_ahead(), ahead, "{name}");
                if T::NAME == "f32" {
                    // split rows: every layer's forward, each recomputed layer's (all but
                    // the last)
                    assert_eq!(
                        ev.exec().split_launches.get() - splits,
                        2 * model.layers.len() - 1,
                        "{name}: ek_split_tf32 launches"
                    );
                }
                check(
                    &format!("{} {name} recompute ahead {ahead}", T::NAME),
                    model,
                    s,
                    &p,
                    &r,
                    tol,
                );
                preds.push(p);
            }
            got.push(preds);
        }
        if got.len() == 2 {
            assert_eq!(got[0], got[1], "two w slots differ from one");
        }
    }
    let model = small_model("XPLOR", 3);
    run::<f32>(&model, 1e-5);
    run::<f64>(&model, 1e-12);
}

/// The 3xTF32 Linears' right factors exist on the device only while that switch is on: the
/// default placement holds none of them, turning it on adds them, off frees them again.
#[test]
fn linear_tf32_factors_placed_only_while_on() {
    if std::env::var(equikern_model::cuda_model::TF32X3_LINEAR_ENV).is_ok() {
        println!(
            "SKIP: {} is set",
            equikern_model::cuda_model::TF32X3_LINEAR_ENV
        );
        return;
    }
    let mut models = vec![("small XPLOR", small_model("XPLOR", 3))];
    if let Some(m) = real_model() {
        models.push(("7net-0", m));
    }
    let dir = tmpdir("tf32-factors");
    for (label, model) in models {
        let mt: SevenNet<f32> = model.cast();
        let Some(exec) = build(&mt, &dir) else {
            return;
        };
        let mut ev = Resident::with_exec(&mt, exec).unwrap();
        let live = |ev: &Resident<f32, HostExec<f32>>| ev.counters().live_bytes;
        let off = live(&ev);
        ev.set_tf32x3_linear(true, 4).unwrap();
        let on = live(&ev);
        ev.set_tf32x3_linear(true, 4).unwrap();
        assert_eq!(
            live(&ev),
            on,
            "{label}: turning it on twice placed them twice"
        );
        ev.set_tf32x3_linear(false, 4).unwrap();
        println!(
            "{label}: {off} bytes placed by default, {} more with the 3xTF32 Linears on",
            on - off
        );
        assert!(on > off, "{label}: no factors placed with the switch on");
        assert_eq!(live(&ev), off, "{label}: factors left after turning it off");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn resident_step_without_edges() {
    let model = small_model("XPLOR", 4);
    let s = Structure {
        positions: vec![[0.0, 0.0, 0.0], [20.0, 0.0, 0.0]],
        numbers: vec![6, 8],
        cell: [[0.0; 3]; 3],
        pbc: [false; 3],
    };
    let r = model.evaluate(&s).unwrap();
    assert_eq!(r.num_edges, 0);
    let dir = tmpdir("noedges");
    let Some(exec) = build(&model, &dir) else {
        return;
    };
    let ev = Resident::with_exec(&model, exec).unwrap();
    let p = ev.evaluate(&s).unwrap();
    println!(
        "no edges: E {} (host {}), forces {:?}",
        p.energy, r.energy, p.forces
    );
    assert!((p.energy - r.energy).abs() <= 1e-12 * r.energy.abs().max(1.0));
    assert!(p.forces.iter().flatten().all(|f| *f == 0.0));
    let _ = std::fs::remove_dir_all(dir);
}

/// A model whose hidden layer is wider than the fused MLP supports: by default it runs on
/// cuBLAS (and matches the host model); asking for the fused MLP is an error naming the
/// layer and the switch that runs it on cuBLAS.
#[test]
fn too_wide_hidden_layer_falls_back_to_cublas() {
    if std::env::var(equikern_model::cuda_model::MLP_ENV).is_ok() {
        println!("SKIP: EQUIKERN_MODEL_MLP is set");
        return;
    }
    let mut cfg = small_config("XPLOR");
    if let equikern_model::Value::Dict(kv) = &mut cfg {
        for (k, v) in kv.iter_mut() {
            if *k == equikern_model::Value::Str("weight_nn_hidden_neurons".into()) {
                *v = equikern_model::Value::List(vec![equikern_model::Value::Int(130)]);
            }
        }
    }
    let model = SevenNet::random(
        &cfg,
        equikern_model::sevennet::Options {
            silu_cst: 1.679176792398926,
        },
        9,
    )
    .unwrap();
    let dir = tmpdir("wide-mlp");
    let Some(exec) = build(&model, &dir) else {
        return;
    };
    let mut ev = Resident::with_exec(&model, exec).unwrap();
    assert!(!ev.mlp_fused(), "a 130-wide hidden layer cannot run fused");
    let s = molecule();
    let r = model.evaluate(&s).unwrap();
    let p = ev.evaluate(&s).unwrap();
    assert!((p.energy - r.energy).abs() <= 1e-10 * r.energy.abs().max(1.0));
    let msg = ev.set_mlp_fused(true).unwrap_err().to_string();
    println!("{msg}");
    assert!(
        msg.contains("layer 0") && msg.contains("130") && msg.contains("EQUIKERN_MODEL_MLP=cublas"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
