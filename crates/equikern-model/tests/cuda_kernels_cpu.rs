//! The CUDA evaluator's hand-written kernels (`src/cuda_model/kernels.cu` with its generated
//! prelude, exactly the text NVRTC compiles) run on the CPU: compiled as C++ (g++) with a
//! few lines standing in for the CUDA built-ins, each launch's grid walked one thread at a
//! time (a grid of at most 3 blocks of 256, so the grid-stride loops wrap), and every kernel
//! compared with the host implementation it replaces (`nn::Linear`, `Gate`,
//! `FullyConnectedNet`, Bessel × cutoff, `spherical_harmonics_with_grad`, the force and
//! virial sums of `sevennet.rs`) on random inputs: relative L2 error ≤ 1e-12 in f64 (the
//! f32 text is compiled and checked at 1e-5). Skips where no C++ compiler is found.

mod common;

use common::*;
use equikern_core::conv::{Csr, End};
use equikern_core::so3::{spherical_harmonics_with_grad, ShNormalization};
use equikern_model::cuda_model::radial_conv::RadialConvKernels;
use equikern_model::cuda_model::tables::{
    kernel_source, kernel_source_full, kernel_source_with, kron_tf32x3_right,
    linear_path_iterations, mlp_hidden_shape, mlp_pack, tc_gemm_iterations, tf32,
    tf32x3_mma_fragments, tf32x3_nt_pack, GateTable, LinearTable, LinearTc, MlpKernels,
    LINEAR_PATH_DIMS, MLP_MAX_WIDTH,
};
use equikern_model::nn::{BesselBasis, Cutoff, FullyConnectedNet, Gate, Linear};
use equikern_model::{Scalar, SevenNet};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::Command;

const HARNESS: &str = r#"
extern "C" void t_edge_geometry(u64 E, const double* vec, const double* coeffs, int nb, double cutoff,
    int kind, double r_on, double p, real* emb, real* sh) {
  grid(E, [&] { ek_edge_geometry(E, vec, coeffs, nb, cutoff, kind, r_on, p, emb, sh); });
}
extern "C" void t_edge_force(u64 E, const double* vec, const double* coeffs, int nb, double cutoff,
    int kind, double r_on, double p, const real* g_emb, const real* g_sh, double* fe) {
  grid(E, [&] { ek_edge_force(E, vec, coeffs, nb, cutoff, kind, r_on, p, g_emb, g_sh, fe, 0); });
}
extern "C" void t_one_hot(u64 N, const unsigned* types, int ns, real* out) {
  grid(N * ns, [&] { ek_one_hot(N, types, ns, out); });
}
extern "C" void t_linear(u64 N, const real* x, int di, real* y, int dout, const real* W,
    const int* tab, const real* coef, real alpha, const real* add, int cols) {
  grid((N + EK_LIN_NODES - 1) / EK_LIN_NODES * cols, [&] { ek_linear(N, x, di, y, dout, W, tab, coef, alpha, add, cols); });
}
extern "C" void t_linear_path(u64 it, u64 N, int dim, int mi, int mo, const real* x, u64 ldx,
    const real* w, real alpha, int acc, real* y, u64 ldy) {
  switch (dim) {
    case 3: grid(it, [&] { ek_linear_path3(N, mi, mo, x, ldx, w, alpha, acc, y, ldy); }); break;
    case 5: grid(it, [&] { ek_linear_path5(N, mi, mo, x, ldx, w, alpha, acc, y, ldy); }); break;
    case 7: grid(it, [&] { ek_linear_path7(N, mi, mo, x, ldx, w, alpha, acc, y, ldy); }); break;
  }
}
extern "C" void t_gate(u64 N, const real* x, real* y, int ns, int ng, const int* gtab, int din,
    int dout, real c) {
  grid(N * dout, [&] { ek_gate(N, x, y, ns, ng, gtab, din, dout, c); });
}
extern "C" void t_gate_backward(u64 N, const real* x, const real* gy, real* gx, int ns, int ng,
    const int* gtab, int din, int dout, real c) {
  grid(N * din, [&] { ek_gate_backward(N, x, gy, gx, ns, ng, gtab, din, dout, c); });
}
extern "C" void t_act(u64 n, const real* pre, real* h, real c) { grid(n, [&] { ek_act(n, pre, h, c); }); }
extern "C" void t_act_backward(u64 n, const real* pre, real* g, real c) {
  grid(n, [&] { ek_act_backward(n, pre, g, c); });
}
extern "C" void t_mlp_hidden(u64 E, int shape, const real* emb, const real* w, int wlen, real c,
    real* out, real* cat) {
  grid_threads(E, [&] { ek_mlp_hidden(E, shape, emb, w, wlen, c, out, cat); });
}
extern "C" void t_mlp_hidden_backward(u64 E, int shape, const real* emb, const real* w, int wlen,
    real c, const real* gl, real* ge, int acc) {
  grid_threads(E, [&] { ek_mlp_hidden_backward(E, shape, emb, w, wlen, c, gl, ge, acc); });
}
extern "C" void t_mlp_hidden_backward2(u64 E, int shape, const real* emb, const real* w, int wlen,
    real c, real* gl, real* ge, int acc) {
  grid_threads(E, [&] { ek_mlp_hidden_backward2(E, shape, emb, w, wlen, c, gl, ge, acc); });
}
#ifdef EK_REAL_F32
extern "C" void t_radial_last(u64 rows, int k, int n, const real* h, const float4* wf,
    real alpha, real* out) {
  grid_threads(((rows + 255) / 256) * 256, [&] { ek_radial_last_tf32x3(rows, k, n, h, wf, alpha, out); });
}
#endif
#ifdef EK_REAL_F32
// ek_conv_radial_bwd as the host launches it: a warp per sender node (the emulated grid's 3
// blocks stride over them)
extern "C" void t_conv_radial_bwd(int v, u64 nodes, u64 edges, const unsigned* csr, const real* x,
    const real* y, const real* h, const real* w2, const real* gz, real alpha, int first, real* gx,
    real* gy, real* gh) {
  grid_threads(nodes * 32, [&] { ek_conv_radial_bwd(v, nodes, edges, csr, x, y, h, w2, gz, alpha, first, gx, gy, gh); });
}
#endif
extern "C" int t_unsynced_barriers() { return ek_unsynced_barriers; }
extern "C" void t_gemm(u64 m, u64 n, u64 k, real alpha, const real* A, const real* B, int tb,
    real beta, real* C) {
  grid(((m + EK_LIN_NODES - 1) / EK_LIN_NODES) * ((n + EK_LIN_COLS - 1) / EK_LIN_COLS), [&] { ek_gemm(m, n, k, alpha, A, B, tb, beta, C); });
}
extern "C" void t_gemm_tf32x3_nt(u64 m, int n, int k, real alpha, const real* A, const real* bp,
    real beta, real* C) {
  grid_threads(((m + 255) / 256) * 256, [&] { ek_gemm_tf32x3_nt(m, n, k, alpha, A, bp, beta, C, 1); });
}
// two blocks: with m > 512 a block's rings run on into its second 256-row tile
extern "C" void t_gemm_tf32x3_nt_pipe(u64 m, int n, int k, real alpha, const real* A,
    const real* bp, real beta, real* C) {
  grid_threads(2 * 256, [&] { ek_gemm_tf32x3_nt_pipe(m, n, k, alpha, A, bp, beta, C, 0); });
}
// the pair form: A given as two halves (A/2 each, exact) m rows apart, summed as read
extern "C" void t_gemm_tf32x3_nt_pair(u64 m, int n, int k, real alpha, const real* A,
    const real* bp, real beta, real* C) {
  std::vector<real> a2(2 * m * (u64)k);
  for (u64 i = 0; i < m * (u64)k; ++i) a2[i] = a2[i + m * (u64)k] = A[i] * 0.5f;
  const real* p = a2.data();
  grid_threads(2 * 256, [&] { ek_gemm_tf32x3_nt_pipe(m, n, k, alpha, p, bp, beta, C, m); });
}
extern "C" void t_mlp_backward_tc(u64 E, int nb, const real* emb, const float4* bp, real c,
    const real* gl, real* ge, int acc) {
  grid_threads(((E + 15) / 16) * 32, [&] { ek_mlp_backward_tc(E, nb, emb, bp, c, gl, ge, acc, 1); });
}
// two blocks striding over the tiles, as the host launches it (a few per SM)
extern "C" void t_mlp_backward_tc_smem(u64 E, int nb, const real* emb, const float4* bp, real c,
    const real* gl, real* ge, int acc) {
  grid_threads(2 * 256, [&] { ek_mlp_backward_tc_smem(E, nb, emb, bp, c, gl, ge, acc, 1); });
}
extern "C" void t_mlp_forward_tc(u64 E, int nb, const real* emb, const float4* bp, real c,
    real* out, real* cat) {
  grid_threads(((E + 15) / 16) * 32, [&] { ek_mlp_forward_tc(E, nb, emb, bp, c, out, cat); });
}
extern "C" void t_mlp_forward_tc_smem(u64 E, int nb, const real* emb, const float4* bp, real c,
    real* out, real* cat) {
  grid_threads(2 * 256, [&] { ek_mlp_forward_tc_smem(E, nb, emb, bp, c, out, cat); });
}
// ek_linear_tc as the host launches it (a block per item; the emulated grid's 3 blocks stride
// over them)
extern "C" void t_linear_tc(u64 it, u64 N, int njobs, const int* tab, const float4* wp,
    const real* x, u64 ldx, real alpha, int acc, real* y, u64 ldy) {
  grid_threads(it, [&] { ek_linear_tc(N, njobs, tab, wp, x, ldx, alpha, acc, y, ldy); });
}
extern "C" void t_accumulate(u64 n, real* dst, const real* src, int first) {
  grid(n, [&] { ek_accumulate(n, dst, src, first); });
}
extern "C" void t_fill(u64 n, real* p, real v) { grid(n, [&] { ek_fill(n, p, v); }); }
extern "C" void t_split_tf32_rows(u64 rows, int k, const real* a, u64 lda, real* cat, u64 ldc) {
  grid(rows * (u64)k, [&] { ek_split_tf32_rows(rows, k, a, lda, cat, ldc); });
}
extern "C" void t_readout(u64 N, const real* out, const unsigned* types, const double* scale,
    const double* shift, double* atomic, real* seed) {
  grid(N, [&] { ek_readout(N, out, types, scale, shift, atomic, seed); });
}
extern "C" void t_forces(u64 N, const unsigned* recv, const unsigned* send, const double* fe,
    double* forces) {
  grid(N, [&] { ek_forces(N, recv, send, fe, forces); });
}
extern "C" void t_virial(u64 E, u64 P, const double* vec, const double* fe, double* part, double* out) {
  grid(P * 10, [&] { ek_virial_partial(E, P, vec, fe, part); });
  grid(10, [&] { ek_virial_final(P, part, out); });
}
"#;

fn compiler() -> Option<&'static str> {
    ["c++", "g++", "clang++"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn build_lib<T: Scalar>(dir: &Path, lmax: u32, mlp: &MlpKernels) -> Option<libloading::Library> {
    build_lib_full::<T>(dir, lmax, mlp, &RadialConvKernels::none(), "")
}

fn build_lib_full<T: Scalar>(
    dir: &Path,
    lmax: u32,
    mlp: &MlpKernels,
    rcb: &RadialConvKernels,
    tag: &str,
) -> Option<libloading::Library> {
    let cxx = compiler().or_else(|| {
        println!("SKIP: no C++ compiler (c++, g++, clang++)");
        None
    })?;
    let src = format!(
        "{KERNEL_SHIM}{}{GRID_WALKER}{GRID_THREADS}{HARNESS}",
        kernel_source_full::<T>(lmax, mlp, rcb).expect("kernel source")
    );
    let name = format!("ek_model_{}_l{lmax}_smem{}{tag}", T::NAME, mlp.smem);
    let cpp = dir.join(format!("{name}.cpp"));
    let so = dir.join(format!("{name}.so"));
    std::fs::write(&cpp, &src).unwrap();
    let o = Command::new(cxx)
        .args([
            "-std=c++17",
            "-O1",
            "-shared",
            "-fPIC",
            "-pthread",
            "-Wall",
            "-o",
        ])
        .arg(&so)
        .arg(&cpp)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "compiling the kernels as C++ failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // SAFETY: a library we just built; it has no initialisers beyond constant tables.
    Some(unsafe { libloading::Library::new(&so) }.unwrap())
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ek-model-kernels-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Relative L2 error of `a` against `b`, with the largest absolute difference and its index
/// (the first bad element is what a failing kernel needs to be debugged).
fn rel<A: Scalar, B: Scalar>(what: &str, a: &[A], b: &[B], tol: f64) -> f64 {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let (mut num, mut den, mut worst, mut at) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    let mut first_nan = None;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let (x, y) = (x.to_f64(), y.to_f64());
        if !x.is_finite() && first_nan.is_none() {
            first_nan = Some(i);
        }
        num += (x - y) * (x - y);
        den += y * y;
        if (x - y).abs() > worst {
            worst = (x - y).abs();
            at = i;
        }
    }
    let r = if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    };
    println!(
        "  {what:40} n {:6}  rel L2 {r:.2e}  max |d| {worst:.2e} at {at}",
        a.len()
    );
    assert!(
        first_nan.is_none(),
        "{what}: non-finite value at index {}",
        first_nan.unwrap_or(0)
    );
    assert!(
        r <= tol,
        "{what}: rel L2 {r:.3e} > {tol:.1e}; largest |d| {worst:.3e} at index {at}: {} vs {}",
        a[at].to_f64(),
        b[at].to_f64()
    );
    r
}

fn rnd(r: &mut rand_chacha::ChaCha8Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| r.random_range(-1.0..1.0)).collect()
}

fn cast<T: Scalar>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

/// The kernels of one dtype, as C functions.
struct K<'l, T: Scalar> {
    lib: &'l libloading::Library,
    _t: std::marker::PhantomData<T>,
}

macro_rules! sym {
    ($k:expr, $name:literal, $ty:ty) => {{
        // SAFETY: the harness defines the symbol with exactly this signature.
        let s: libloading::Symbol<$ty> = unsafe { $k.lib.get($name) }.unwrap();
        *s
    }};
}

type LinFn<T> = unsafe extern "C" fn(
    u64,
    *const T,
    i32,
    *mut T,
    i32,
    *const T,
    *const i32,
    *const T,
    T,
    *const T,
    i32,
);
type GemmFn<T> = unsafe extern "C" fn(u64, u64, u64, T, *const T, *const T, i32, T, *mut T);
type ActFn<T> = unsafe extern "C" fn(u64, *const T, *mut T, T);
type GeoFn<T> =
    unsafe extern "C" fn(u64, *const f64, *const f64, i32, f64, i32, f64, f64, *mut T, *mut T);
type ForceFn<T> = unsafe extern "C" fn(
    u64,
    *const f64,
    *const f64,
    i32,
    f64,
    i32,
    f64,
    f64,
    *const T,
    *const T,
    *mut f64,
);
type GateFn<T> = unsafe extern "C" fn(u64, *const T, *mut T, i32, i32, *const i32, i32, i32, T);
type GateBwdFn<T> =
    unsafe extern "C" fn(u64, *const T, *const T, *mut T, i32, i32, *const i32, i32, i32, T);

impl<'l, T: Scalar> K<'l, T> {
    fn linear(&self, t: &LinearTable, x: &[T], n: usize, alpha: f64, add: Option<&[T]>) -> Vec<T> {
        let f = sym!(self, b"t_linear", LinFn<T>);
        let mut y = vec![T::from_f64(f64::NAN); n * t.dim_out];
        let (w, c) = (cast::<T>(&t.weight), cast::<T>(&t.coef));
        // SAFETY: buffers sized for n rows of the table's dims.
        unsafe {
            f(
                n as u64,
                x.as_ptr(),
                t.dim_in as i32,
                y.as_mut_ptr(),
                t.dim_out as i32,
                w.as_ptr(),
                t.tab.as_ptr(),
                c.as_ptr(),
                T::from_f64(alpha),
                add.map_or(std::ptr::null(), |a| a.as_ptr()),
                t.cols as i32,
            )
        };
        y
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        (m, n, k): (usize, usize, usize),
        alpha: f64,
        a: &[T],
        b: &[T],
        tb: bool,
        beta: f64,
        c: &mut [T],
    ) {
        assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
        let f = sym!(self, b"t_gemm", GemmFn<T>);
        // SAFETY: sizes asserted above.
        unsafe {
            f(
                m as u64,
                n as u64,
                k as u64,
                T::from_f64(alpha),
                a.as_ptr(),
                b.as_ptr(),
                i32::from(tb),
                T::from_f64(beta),
                c.as_mut_ptr(),
            )
        }
    }

    fn act(&self, pre: &[T], out: &mut [T], c: T, backward: bool) {
        let f = if backward {
            sym!(self, b"t_act_backward", ActFn<T>)
        } else {
            sym!(self, b"t_act", ActFn<T>)
        };
        // SAFETY: equal lengths.
        unsafe { f(pre.len() as u64, pre.as_ptr(), out.as_mut_ptr(), c) }
    }
}

fn tol<T: Scalar>() -> f64 {
    if T::NAME == "f64" {
        1e-12
    } else {
        1e-5
    }
}

/// The model's Linears with their names: embedding, readouts, then each layer's `sc`, `lin1`,
/// `lin2` for the layers `keep` admits.
fn model_linears<T: Scalar>(
    m: &SevenNet<T>,
    keep: impl Fn(usize) -> bool,
) -> Vec<(String, &Linear<T>)> {
    let mut all: Vec<(String, &Linear<T>)> = vec![
        ("embed".into(), &m.embed),
        ("readout_hidden".into(), &m.readout_hidden),
        ("readout_energy".into(), &m.readout_energy),
    ];
    for (t, l) in m.layers.iter().enumerate().filter(|(t, _)| keep(*t)) {
        all.push((format!("{t}.sc"), &l.sc));
        all.push((format!("{t}.lin1"), &l.lin1));
        all.push((format!("{t}.lin2"), &l.lin2));
    }
    all
}

/// Every Linear of the model, forward (with alpha and a residual) and transposed.
fn check_linears<T: Scalar>(k: &K<T>, m: &SevenNet<T>, r: &mut rand_chacha::ChaCha8Rng) {
    for (name, l) in model_linears(m, |_| true) {
        for n in [1usize, 4, 9] {
            let x: Vec<T> = cast(&rnd(r, n * l.dim_in));
            let add: Vec<T> = cast(&rnd(r, n * l.dim_out));
            let fw = LinearTable::forward(l).unwrap();
            let y = k.linear(&fw, &x, n, 0.7, Some(&add));
            let host = l.forward(&x);
            let want: Vec<T> = host
                .iter()
                .zip(&add)
                .map(|(&h, &a)| T::from_f64(0.7) * h + a)
                .collect();
            rel(
                &format!("linear {name} n {n} (alpha, add)"),
                &y,
                &want,
                tol::<T>(),
            );
            let y = k.linear(&fw, &x, n, 1.0, None);
            rel(&format!("linear {name} n {n}"), &y, &host, tol::<T>());
            let gy: Vec<T> = cast(&rnd(r, n * l.dim_out));
            let bw = LinearTable::transpose(l).unwrap();
            let gx = k.linear(&bw, &gy, n, 1.0, None);
            rel(
                &format!("linear {name} n {n} transposed"),
                &gx,
                &l.backward(&gy),
                tol::<T>(),
            );
        }
    }
}

type PathFn<T> =
    unsafe extern "C" fn(u64, u64, i32, i32, i32, *const T, u64, *const T, T, i32, *mut T, u64);

/// `ek_linear_path` on ragged shapes (dims 3, 5, 7; multiplicities off the 4- and 8-wide
/// tiles; 16-byte aligned blocks and blocks one element off, which take the scalar loads
/// and stores), overwriting and accumulating: every element of the path's output block
/// within tolerance of the f64 sum, every other element of the poisoned output untouched.
fn check_linear_paths<T: Scalar>(k: &K<T>, r: &mut rand_chacha::ChaCha8Rng) {
    let f = sym!(k, b"t_linear_path", PathFn<T>);
    let (mut cases, mut worst) = (0, 0.0f64);
    for &dim in &LINEAR_PATH_DIMS {
        for (mi, mo) in [(1, 1), (4, 8), (3, 13), (9, 40), (32, 16), (12, 72)] {
            for nodes in [1usize, 5, 37] {
                for (shift, acc) in [(0usize, false), (1, true), (4, true), (1, false)] {
                    // x: block at `shift` in rows of ldx; y: block at `shift` in rows of ldy
                    let (kx, ky) = (mi * dim, mo * dim);
                    let (ldx, ldy) = (kx + 8, ky + 4 + shift);
                    let x: Vec<T> = cast(&rnd(r, nodes * ldx + shift));
                    let w: Vec<T> = cast(&rnd(r, mi * mo + shift));
                    let y0: Vec<T> = cast(&rnd(r, nodes * ldy + shift));
                    let mut y: Vec<T> = (0..y0.len())
                        .map(|i| {
                            let o = i.wrapping_sub(shift);
                            if i >= shift && o % ldy < ky && acc {
                                y0[i]
                            } else {
                                T::from_f64(f64::NAN)
                            }
                        })
                        .collect();
                    let alpha = 0.8;
                    let it = linear_path_iterations(nodes, mo);
                    // SAFETY: x, w, y hold `nodes` rows of their strides from `shift`.
                    unsafe {
                        f(
                            it,
                            nodes as u64,
                            dim as i32,
                            mi as i32,
                            mo as i32,
                            x[shift..].as_ptr(),
                            ldx as u64,
                            w[shift..].as_ptr(),
                            T::from_f64(alpha),
                            i32::from(acc),
                            y[shift..].as_mut_ptr(),
                            ldy as u64,
                        )
                    };
                    let what = format!(
                        "linear path dim {dim} {mi} -> {mo} nodes {nodes} shift {shift} acc {acc}"
                    );
                    let mut got = vec![];
                    let mut want = vec![];
                    for (i, v) in y.iter().enumerate() {
                        let o = i.wrapping_sub(shift);
                        if i < shift || o % ldy >= ky {
                            assert!(v.to_f64().is_nan(), "{what}: wrote {v:?} at {i}");
                            continue;
                        }
                        let (row, c) = (o / ldy, o % ldy);
                        let (vv, m) = (c / dim, c % dim);
                        let s: f64 = (0..mi)
                            .map(|u| {
                                x[shift + row * ldx + u * dim + m].to_f64()
                                    * w[shift + u * mo + vv].to_f64()
                            })
                            .sum();
                        got.push(*v);
                        want.push(alpha * s + if acc { y0[i].to_f64() } else { 0.0 });
                    }
                    assert_eq!(got.len(), nodes * ky);
                    let (num, den) = got.iter().zip(&want).fold((0.0, 0.0), |(n, d), (g, w)| {
                        let e = g.to_f64() - w;
                        (n + e * e, d + w * w)
                    });
                    let e = (num / den).sqrt();
                    assert!(e <= tol::<T>(), "{what}: rel L2 {e:.3e}");
                    worst = worst.max(e);
                    cases += 1;
                }
            }
        }
    }
    println!("  linear_path: {cases} shapes, worst rel L2 {worst:.2e}, nothing else written");
}

type SplitFn = unsafe extern "C" fn(u64, i32, *const f32, u64, *mut f32, u64);

/// `ek_split_tf32_rows` (f32) on a ragged strided block: rows of `k` values from `a_off`
/// with stride `lda` into `[hi | hi | lo]` from `c_off` with stride `ldc`; every element of
/// the poisoned output outside the written rows stays NaN, every written one is the host's
/// split exactly, and hi + lo is the input to 2^-21.
fn check_split_rows(k: &K<f32>, r: &mut rand_chacha::ChaCha8Rng) {
    let f = sym!(k, b"t_split_tf32_rows", SplitFn);
    for (rows, kk, a_off, lda, c_off, ldc) in [
        (37usize, 13usize, 5usize, 29usize, 7usize, 50usize),
        (1, 4, 0, 4, 0, 12),
        (300, 3, 2, 7, 1, 9),
        (9, 160, 32, 480, 96, 1440),
    ] {
        let a: Vec<f32> = rnd(r, a_off + rows * lda)
            .iter()
            .map(|&v| (v * 37.0) as f32)
            .collect();
        let mut c = vec![f32::NAN; c_off + rows * ldc + 5];
        // SAFETY: `a` holds a_off + rows·lda ≥ the block, `c` c_off + rows·ldc ≥ 3k per row.
        unsafe {
            f(
                rows as u64,
                kk as i32,
                a[a_off..].as_ptr(),
                lda as u64,
                c[c_off..].as_mut_ptr(),
                ldc as u64,
            )
        };
        for (i, &v) in c.iter().enumerate() {
            let (row, col) = (i.wrapping_sub(c_off) / ldc, i.wrapping_sub(c_off) % ldc);
            if i < c_off || row >= rows || col >= 3 * kk {
                assert!(
                    v.is_nan(),
                    "split {rows}x{kk}: wrote {v} at {i} outside the block"
                );
                continue;
            }
            let x = a[a_off + row * lda + col % kk];
            let hi = tf32(x);
            let want = if col < 2 * kk { hi } else { tf32(x - hi) };
            assert_eq!(v, want, "split {rows}x{kk}: row {row} col {col} of {x}");
            if col >= 2 * kk {
                let e = (f64::from(hi) + f64::from(v) - f64::from(x)).abs();
                assert!(
                    e <= f64::from(x.abs()) * 2f64.powi(-21),
                    "hi + lo of {x}: {e:e}"
                );
            }
        }
        println!("  split_tf32_rows {rows}x{kk} lda {lda} ldc {ldc}: exact, nothing else written");
    }
}

/// Every Linear of the model (forward and transposed) as its 3xTF32 products: the input
/// blocks split by `ek_split_tf32_rows` into a poisoned `[n, 3·dim_in]` scratch laid out as
/// the evaluator does (block at 3·in_off, row stride 3·dim_in), times the right factors of
/// `kron_tf32x3_right` (at their offsets), summed per output block with the paths'
/// coefficients: the host Linear within the f32 tolerance.
fn check_linears_tf32x3(k: &K<f32>, m: &SevenNet<f32>, r: &mut rand_chacha::ChaCha8Rng) {
    let f = sym!(k, b"t_split_tf32_rows", SplitFn);
    let mut all: Vec<(String, &Linear<f32>)> = vec![
        ("readout_hidden".into(), &m.readout_hidden),
        ("embed".into(), &m.embed),
    ];
    for (t, l) in m.layers.iter().enumerate() {
        all.push((format!("{t}.sc"), &l.sc));
        all.push((format!("{t}.lin1"), &l.lin1));
        all.push((format!("{t}.lin2"), &l.lin2));
    }
    let mut bytes = 0;
    for (name, l) in all {
        for transpose in [false, true] {
            let t = if transpose {
                LinearTable::transpose(l).unwrap()
            } else {
                LinearTable::forward(l).unwrap()
            };
            let Some((gemms, kron)) = &t.kron else {
                continue;
            };
            let (off, k3) = kron_tf32x3_right(gemms, kron).unwrap();
            assert_eq!(off.len(), gemms.len());
            bytes += 4 * k3.len();
            let narrow: Vec<(usize, usize)> = gemms
                .iter()
                .filter(|g| g.k.min(g.n) < 64)
                .map(|g| (g.k, g.n))
                .collect();
            if !narrow.is_empty() {
                println!("  {name} transposed {transpose}: products (k, n) under 64: {narrow:?}");
            }
            for n in [1usize, 7] {
                let x: Vec<f32> = cast(&rnd(r, n * t.dim_in));
                let ld3 = 3 * t.dim_in;
                let mut cat = vec![f32::NAN; n * ld3];
                let mut done: Vec<usize> = vec![];
                let mut y = vec![f64::NAN; n * t.dim_out];
                for (i, g) in gemms.iter().enumerate() {
                    if !done.contains(&g.in_off) {
                        // SAFETY: the block [in_off, in_off + k) of n rows of dim_in, into
                        // [3·in_off, 3·in_off + 3k) of n rows of 3·dim_in.
                        unsafe {
                            f(
                                n as u64,
                                g.k as i32,
                                x[g.in_off..].as_ptr(),
                                t.dim_in as u64,
                                cat[3 * g.in_off..].as_mut_ptr(),
                                ld3 as u64,
                            )
                        };
                        done.push(g.in_off);
                    }
                    for row in 0..n {
                        for j in 0..g.n {
                            let s: f64 = (0..3 * g.k)
                                .map(|q| {
                                    f64::from(cat[row * ld3 + 3 * g.in_off + q])
                                        * f64::from(k3[off[i] + q * g.n + j])
                                })
                                .sum();
                            let o = &mut y[row * t.dim_out + g.out_off + j];
                            *o = if g.first { 0.0 } else { *o } + g.coef * s;
                        }
                    }
                }
                let host = if transpose {
                    l.backward(&x)
                } else {
                    l.forward(&x)
                };
                let tr = if transpose { " transposed" } else { "" };
                rel(
                    &format!("3xTF32 linear {name}{tr} n {n}"),
                    &y,
                    &host,
                    tol::<f32>(),
                );
            }
        }
    }
    println!("  3xTF32 right factors of the Linears (forward and transposed): {bytes} bytes");
}

type LinearTcFn = unsafe extern "C" fn(
    u64,
    u64,
    i32,
    *const i32,
    *const f32,
    *const f32,
    u64,
    f32,
    i32,
    *mut f32,
    u64,
);

/// Every Linear of the model (forward and transposed; 7net-0's middle layers, copies of
/// layer 1's shapes, with EQUIKERN_EMULATION_FULL=1) by one `ek_linear_tc` launch (the
/// emulated tensor cores, 3xTF32): node counts off the kernel's tiles (37; 1 and 300 for the
/// small models: items beyond the grid's blocks), overwriting a NaN-poisoned output and
/// accumulating onto random values with alpha: every element within the f32 tolerance of
/// the host Linear; and the split must be there: the B pack with its `lo` halves zeroed is
/// ≥ 20× worse. The small models' rows are not 16-byte aligned (the kernel's scalar copies),
/// 7net-0's are (`cp.async`; multiplicities past one 32-channel chunk and one 64-channel
/// column tile, several paths into one output block).
fn check_linears_tc(k: &K<f32>, name: &str, m: &SevenNet<f32>, r: &mut rand_chacha::ChaCha8Rng) {
    let f = sym!(k, b"t_linear_tc", LinearTcFn);
    // 7net-0's layers 2 and 3 repeat layer 1's shapes: with EQUIKERN_EMULATION_FULL=1 only
    // (CI time)
    let full = std::env::var("EQUIKERN_EMULATION_FULL").is_ok_and(|v| v == "1");
    let last = m.layers.len() - 1;
    let all = model_linears(m, |t| name != "7net-0" || full || !(2..last).contains(&t));
    // (7net-0's one-node case costs its 37-node case's emulated stages: the small models
    // cover it)
    let sizes: &[usize] = if name == "7net-0" {
        &[37]
    } else {
        &[1, 37, 300]
    };
    let mut worst = 0.0f64;
    for (lname, l) in all {
        for transpose in [false, true] {
            let t = if transpose {
                LinearTable::transpose(l).unwrap()
            } else {
                LinearTable::forward(l).unwrap()
            };
            let Some((gemms, kron)) = &t.kron else {
                continue;
            };
            let tc = LinearTc::new(gemms, kron)
                .unwrap()
                .expect("dims ≤ 7 have tiles");
            let nolo: Vec<f32> = tc
                .pack
                .iter()
                .enumerate()
                .map(|(i, &v)| if i % 4 >= 2 { 0.0 } else { v })
                .collect();
            for &n in sizes {
                let x: Vec<f32> = cast(&rnd(r, n * t.dim_in));
                let host = if transpose {
                    l.backward(&x)
                } else {
                    l.forward(&x)
                };
                let run = |pack: &[f32], alpha: f32, acc: bool, y0: &[f32]| -> Vec<f32> {
                    let mut y = y0.to_vec();
                    // SAFETY: x [n, dim_in], y [n, dim_out], the table and pack of `tc`.
                    unsafe {
                        f(
                            tc.iterations(n),
                            n as u64,
                            tc.jobs() as i32,
                            tc.tab.as_ptr(),
                            pack.as_ptr(),
                            x.as_ptr(),
                            t.dim_in as u64,
                            alpha,
                            i32::from(acc),
                            y.as_mut_ptr(),
                            t.dim_out as u64,
                        )
                    };
                    y
                };
                let tr = if transpose { " transposed" } else { "" };
                let what = format!("ek_linear_tc {lname}{tr} n {n}");
                let y = run(&tc.pack, 1.0, false, &vec![f32::NAN; n * t.dim_out]);
                let e = rel(&what, &y, &host, tol::<f32>());
                worst = worst.max(e);
                let y0: Vec<f32> = cast(&rnd(r, n * t.dim_out));
                let y = run(&tc.pack, 0.7, true, &y0);
                let want: Vec<f32> = host.iter().zip(&y0).map(|(h, a)| 0.7 * h + a).collect();
                worst = worst.max(rel(&format!("{what} (alpha, +=)"), &y, &want, tol::<f32>()));
                if n == 37 {
                    let y = run(&nolo, 1.0, false, &vec![f32::NAN; n * t.dim_out]);
                    let e2 = rel_l2(&y, &host.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
                    assert!(
                        e2 >= 20.0 * e.max(1e-9),
                        "{what}: the split does not show: 3xTF32 {e:.2e}, without B lo {e2:.2e}"
                    );
                }
            }
        }
    }
    println!("  ek_linear_tc: every Linear forward and transposed, worst rel L2 {worst:.2e}");
}

fn check_gates<T: Scalar>(k: &K<T>, gates: &[&Gate<T>], r: &mut rand_chacha::ChaCha8Rng) {
    let n = 6;
    for (t, g) in gates.iter().enumerate() {
        let gt = GateTable::new(*g).unwrap();
        let x: Vec<T> = cast(
            &rnd(r, n * g.dim_in)
                .iter()
                .map(|v| 3.0 * v)
                .collect::<Vec<_>>(),
        );
        let mut y = vec![T::from_f64(f64::NAN); n * g.dim_out];
        let f = sym!(k, b"t_gate", GateFn<T>);
        // SAFETY: x n·din, y n·dout.
        unsafe {
            f(
                n as u64,
                x.as_ptr(),
                y.as_mut_ptr(),
                gt.ns,
                gt.ng,
                gt.tab.as_ptr(),
                gt.din,
                gt.dout,
                g.act_cst,
            )
        };
        rel(&format!("gate {t}"), &y, &g.forward(&x), tol::<T>());
        let gy: Vec<T> = cast(&rnd(r, n * g.dim_out));
        let mut gx = vec![T::from_f64(f64::NAN); n * g.dim_in];
        let f = sym!(k, b"t_gate_backward", GateBwdFn<T>);
        // SAFETY: x, gx n·din; gy n·dout.
        unsafe {
            f(
                n as u64,
                x.as_ptr(),
                gy.as_ptr(),
                gx.as_mut_ptr(),
                gt.ns,
                gt.ng,
                gt.tab.as_ptr(),
                gt.din,
                gt.dout,
                g.act_cst,
            )
        };
        rel(
            &format!("gate {t} backward"),
            &gx,
            &g.backward(&x, &gy),
            tol::<T>(),
        );
    }
}

/// The radial MLP as the evaluator runs it (gemm + act kernels, same calls and order),
/// forward and input-gradient backward (accumulating into g_emb with beta = 1).
fn check_mlp<T: Scalar>(
    k: &K<T>,
    t: usize,
    net: &FullyConnectedNet<T>,
    r: &mut rand_chacha::ChaCha8Rng,
) {
    let ne = 301;
    let emb: Vec<T> = cast(&rnd(r, ne * net.dim_in()));
    let last = net.layers.len() - 1;
    let c = net.act_cst;
    let mut pre: Vec<Vec<T>> = vec![];
    let mut act: Vec<Vec<T>> = vec![];
    let mut w = vec![T::from_f64(f64::NAN); ne * net.dim_out()];
    for (i, (a, b, wk)) in net.layers.iter().enumerate() {
        let alpha = 1.0 / (*a as f64).sqrt();
        let input = if i == 0 {
            emb.clone()
        } else {
            act[i - 1].clone()
        };
        if i < last {
            let mut p = vec![T::from_f64(f64::NAN); ne * b];
            k.gemm((ne, *b, *a), alpha, &input, wk, false, 0.0, &mut p);
            let mut h = vec![T::from_f64(f64::NAN); ne * b];
            k.act(&p, &mut h, c, false);
            pre.push(p);
            act.push(h);
        } else {
            k.gemm((ne, *b, *a), alpha, &input, wk, false, 0.0, &mut w);
        }
    }
    let (w_host, tape) = net.forward(&emb);
    rel(&format!("radial MLP {t} forward"), &w, &w_host, tol::<T>());
    let gw: Vec<T> = cast(&rnd(r, ne * net.dim_out()));
    let base: Vec<T> = cast(&rnd(r, ne * net.dim_in()));
    let mut g_emb = base.clone();
    for i in (0..=last).rev() {
        let (a, b, wk) = &net.layers[i];
        let alpha = 1.0 / (*a as f64).sqrt();
        let g = if i == last {
            gw.clone()
        } else {
            act[i].clone()
        };
        if i > 0 {
            k.gemm((ne, *a, *b), alpha, &g, wk, true, 0.0, &mut act[i - 1]);
            let p = pre[i - 1].clone();
            k.act(&p, &mut act[i - 1], c, true);
        } else {
            k.gemm((ne, *a, *b), alpha, &g, wk, true, 1.0, &mut g_emb);
        }
    }
    let ge = net.backward(&tape, &gw);
    let want: Vec<T> = base.iter().zip(&ge).map(|(&a, &b)| a + b).collect();
    rel(
        &format!("radial MLP {t} backward (+= g_emb)"),
        &g_emb,
        &want,
        tol::<T>(),
    );
}

type MlpFwdFn<T> = unsafe extern "C" fn(u64, i32, *const T, *const T, i32, T, *mut T, *mut T);
type MlpBwdFn<T> = unsafe extern "C" fn(u64, i32, *const T, *const T, i32, T, *mut T, *mut T, i32);

/// The fused hidden layers (`ek_mlp_hidden[_backward]`) composed with the last product as
/// the evaluator does (that product here on the host in f64), against `FullyConnectedNet`:
/// forward output `w`, and `g_emb` both overwritten (from NaN) and accumulated.
fn check_fused_mlp<T: Scalar>(
    k: &K<T>,
    mk: &MlpKernels,
    what: &str,
    net: &FullyConnectedNet<T>,
    r: &mut rand_chacha::ChaCha8Rng,
) {
    // more edges than the emulated grid's 768 threads: the grid-stride loop wraps
    let ne = 1000;
    let widths = mlp_hidden_shape(net).unwrap();
    let shape = mk.index(&widths).expect("shape compiled") as i32;
    let pack: Vec<T> = cast(&mlp_pack(net, mk.vw));
    assert_eq!(pack.len(), mk.packed_len(shape as usize));
    let (nb, hk) = (widths[0], *widths.last().unwrap());
    let (a, b, wl) = net.layers.last().unwrap();
    assert_eq!(*a, hk);
    let s = 1.0 / (*a as f64).sqrt();
    let emb: Vec<T> = cast(&rnd(r, ne * nb).iter().map(|v| 2.0 * v).collect::<Vec<_>>());
    let c = net.act_cst;
    let mut hl = vec![T::from_f64(f64::NAN); ne * hk];
    let f = sym!(k, b"t_mlp_hidden", MlpFwdFn<T>);
    // SAFETY: emb ne·nb, hl ne·hk (or null), cat ne·3hk (or null), pack the shape's packed
    // length.
    let run = |hl: Option<&mut Vec<T>>, cat: Option<&mut Vec<T>>| unsafe {
        f(
            ne as u64,
            shape,
            emb.as_ptr(),
            pack.as_ptr(),
            pack.len() as i32,
            c,
            hl.map_or(std::ptr::null_mut(), |v| v.as_mut_ptr()),
            cat.map_or(std::ptr::null_mut(), |v| v.as_mut_ptr()),
        )
    };
    run(Some(&mut hl), None);
    // The same launch writing the 3xTF32 split rows [hi | hi | lo] (ek_split_tf32's: f32
    // rounded to TF32, f64 unsplit), alone and beside h: bit for bit the split of h.
    let split = |x: T| -> (T, T) {
        if T::NAME == "f32" {
            let v = x.to_f64() as f32;
            let hi = tf32(v);
            (
                T::from_f64(f64::from(hi)),
                T::from_f64(f64::from(tf32(v - hi))),
            )
        } else {
            (x, T::ZERO)
        }
    };
    let mut want_cat = vec![T::ZERO; ne * 3 * hk];
    for e in 0..ne {
        for i in 0..hk {
            let (hi, lo) = split(hl[e * hk + i]);
            want_cat[e * 3 * hk + i] = hi;
            want_cat[e * 3 * hk + hk + i] = hi;
            want_cat[e * 3 * hk + 2 * hk + i] = lo;
        }
    }
    let bits = |v: &[T]| v.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
    let mut cat = vec![T::from_f64(f64::NAN); ne * 3 * hk];
    run(None, Some(&mut cat));
    assert_eq!(
        bits(&cat),
        bits(&want_cat),
        "{what}: split rows (h not written)"
    );
    let (mut hl2, mut cat2) = (
        vec![T::from_f64(f64::NAN); ne * hk],
        vec![T::from_f64(f64::NAN); ne * 3 * hk],
    );
    run(Some(&mut hl2), Some(&mut cat2));
    assert_eq!(bits(&cat2), bits(&want_cat), "{what}: split rows beside h");
    assert_eq!(bits(&hl2), bits(&hl), "{what}: h beside the split rows");
    let mut w = vec![0.0; ne * b];
    for e in 0..ne {
        for i in 0..*a {
            let h = hl[e * a + i].to_f64();
            for j in 0..*b {
                w[e * b + j] += h * wl[i * b + j].to_f64() * s;
            }
        }
    }
    let (w_host, tape) = net.forward(&emb);
    let tag = format!("{what} {widths:?} smem {}", mk.smem);
    rel(&format!("fused MLP {tag} forward"), &w, &w_host, tol::<T>());
    let gw: Vec<T> = cast(&rnd(r, ne * b));
    let mut gl = vec![T::ZERO; ne * a];
    for e in 0..ne {
        for i in 0..*a {
            let mut acc = 0.0;
            for j in 0..*b {
                acc += gw[e * b + j].to_f64() * wl[i * b + j].to_f64();
            }
            gl[e * a + i] = T::from_f64(acc * s);
        }
    }
    let ge_host = net.backward(&tape, &gw);
    let base: Vec<T> = cast(&rnd(r, ne * nb));
    let kernels = [
        ("", sym!(k, b"t_mlp_hidden_backward", MlpBwdFn<T>)),
        ("2", sym!(k, b"t_mlp_hidden_backward2", MlpBwdFn<T>)),
    ];
    for ((v, f), accumulate) in kernels.iter().flat_map(|k| [(k, false), (k, true)]) {
        // backward2 overwrites its g_last
        let mut gl = gl.clone();
        let mut ge = if accumulate {
            base.clone()
        } else {
            vec![T::from_f64(f64::NAN); ne * nb]
        };
        // SAFETY: as above; gl ne·hk, ge ne·nb.
        unsafe {
            f(
                ne as u64,
                shape,
                emb.as_ptr(),
                pack.as_ptr(),
                pack.len() as i32,
                c,
                gl.as_mut_ptr(),
                ge.as_mut_ptr(),
                i32::from(accumulate),
            )
        };
        let want: Vec<T> = if accumulate {
            base.iter().zip(&ge_host).map(|(&x, &y)| x + y).collect()
        } else {
            ge_host.clone()
        };
        rel(
            &format!("fused MLP {tag} backward{v} (accumulate {accumulate})"),
            &ge,
            &want,
            tol::<T>(),
        );
    }
    type UFn = unsafe extern "C" fn() -> i32;
    let uf = sym!(k, b"t_unsynced_barriers", UFn);
    // SAFETY: no arguments.
    let unsynced = unsafe { uf() };
    assert_eq!(unsynced, 0, "a barrier ran outside grid_threads");
}

/// Random radial MLPs beyond the models': one hidden layer, three hidden layers with widths
/// that are no multiple of the vector width, and the widest supported.
fn extra_mlps<T: Scalar>(r: &mut rand_chacha::ChaCha8Rng, wide: bool) -> Vec<FullyConnectedNet<T>> {
    let mut shapes = vec![vec![8, 16, 24], vec![3, 5, 9, 6, 10]];
    if wide {
        shapes.push(vec![8, MLP_MAX_WIDTH, MLP_MAX_WIDTH, 33]);
    }
    shapes
        .iter()
        .map(|w| {
            let layers = w
                .windows(2)
                .map(|p| (p[0], p[1], cast::<T>(&rnd(r, p[0] * p[1]))))
                .collect();
            FullyConnectedNet::new(layers, T::from_f64(1.679176792398926), "extra").unwrap()
        })
        .collect()
}

/// Edge geometry and edge forces against the host functions, for `lmax` and an envelope.
fn check_geometry<T: Scalar>(
    k: &K<T>,
    lmax: u32,
    bessel: &BesselBasis,
    env: &Cutoff,
    r: &mut rand_chacha::ChaCha8Rng,
) {
    let (kind, r_on, p) = match *env {
        Cutoff::Xplor { r_on, .. } => (0, r_on, 0.0),
        Cutoff::Polynomial { p, .. } => (1, 0.0, p),
    };
    let rc = bessel.cutoff;
    let ne = 333;
    let nb = bessel.coeffs.len();
    let ls: Vec<u32> = (0..=lmax).collect();
    let shd = ((lmax + 1) * (lmax + 1)) as usize;
    let mut vec = vec![];
    for _ in 0..ne {
        let d = [
            r.random_range(-1.0..1.0f64),
            r.random_range(-1.0..1.0),
            r.random_range(-1.0..1.0),
        ];
        let n = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt().max(1e-3);
        let len = r.random_range(0.3..rc * 0.999);
        vec.push(d.map(|x| x / n * len));
    }
    let flat: Vec<f64> = vec.iter().flatten().copied().collect();
    let mut emb = vec![T::from_f64(f64::NAN); ne * nb];
    let mut sh = vec![T::from_f64(f64::NAN); ne * shd];
    let f = sym!(k, b"t_edge_geometry", GeoFn<T>);
    // SAFETY: sized for ne edges.
    unsafe {
        f(
            ne as u64,
            flat.as_ptr(),
            bessel.coeffs.as_ptr(),
            nb as i32,
            rc,
            kind,
            r_on,
            p,
            emb.as_mut_ptr(),
            sh.as_mut_ptr(),
        )
    };
    let g_emb: Vec<T> = cast(&rnd(r, ne * nb));
    let g_sh: Vec<T> = cast(&rnd(r, ne * shd));
    let (mut emb_ref, mut sh_ref, mut fe_ref) = (vec![], vec![], vec![]);
    for (e, v) in vec.iter().enumerate() {
        let re = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        let (b, db) = bessel.eval(re);
        let (fv, dfv) = env.eval(re);
        let mut g_r = 0.0;
        for q in 0..nb {
            emb_ref.push(T::from_f64(b[q] * fv));
            g_r += g_emb[e * nb + q].to_f64() * (db[q] * fv + b[q] * dfv);
        }
        let (y, gy) =
            spherical_harmonics_with_grad(&ls, *v, true, ShNormalization::Component).unwrap();
        sh_ref.extend(y.iter().map(|&x| T::from_f64(x)));
        for d in 0..3 {
            let mut acc = g_r * v[d] / re;
            for c in 0..shd {
                acc += g_sh[e * shd + c].to_f64() * gy[c][d];
            }
            fe_ref.push(acc);
        }
    }
    let what = format!("lmax {lmax} {env:?}");
    rel(
        &format!("edge embedding ({what})"),
        &emb,
        &emb_ref,
        tol::<T>(),
    );
    rel(
        &format!("edge harmonics ({what})"),
        &sh,
        &sh_ref,
        tol::<T>(),
    );
    let mut fe = vec![f64::NAN; 3 * ne];
    let f = sym!(k, b"t_edge_force", ForceFn<T>);
    // SAFETY: sized for ne edges.
    unsafe {
        f(
            ne as u64,
            flat.as_ptr(),
            bessel.coeffs.as_ptr(),
            nb as i32,
            rc,
            kind,
            r_on,
            p,
            g_emb.as_ptr(),
            g_sh.as_ptr(),
            fe.as_mut_ptr(),
        )
    };
    // the edge force is computed in f64 from T gradients: f64-exact in both dtypes
    rel(&format!("edge forces ({what})"), &fe, &fe_ref, 1e-12);
}

/// Forces (merged CSR ranges), virial, readout, one-hot, accumulate on a random graph with
/// self-images, repeated edges and isolated atoms.
fn check_reductions<T: Scalar>(k: &K<T>, r: &mut rand_chacha::ChaCha8Rng) {
    let (n, ne) = (61usize, 1500usize);
    let mut recv = vec![];
    let mut send = vec![];
    for _ in 0..ne {
        let i = r.random_range(0..n - 3) as u32;
        let j = if r.random_range(0..10) == 0 {
            i
        } else {
            r.random_range(0..n - 3) as u32
        };
        recv.push(i);
        send.push(j);
    }
    let csr = Csr::build(n, &recv, &send).unwrap();
    let (pr, ps) = (csr.packed(End::Receiver), csr.packed(End::Sender));
    let fe = rnd(r, 3 * ne);
    let vec = rnd(r, 3 * ne);
    let mut forces = vec![f64::NAN; 3 * n];
    type FFn = unsafe extern "C" fn(u64, *const u32, *const u32, *const f64, *mut f64);
    let f = sym!(k, b"t_forces", FFn);
    // SAFETY: packed views of n nodes / ne edges; fe 3·ne; forces 3·n.
    unsafe {
        f(
            n as u64,
            pr.as_ptr(),
            ps.as_ptr(),
            fe.as_ptr(),
            forces.as_mut_ptr(),
        )
    };
    let mut want = vec![0.0; 3 * n];
    let mut vir = [0.0; 9];
    for e in 0..ne {
        for d in 0..3 {
            want[3 * recv[e] as usize + d] += fe[3 * e + d];
            want[3 * send[e] as usize + d] -= fe[3 * e + d];
            for b in 0..3 {
                vir[3 * d + b] += vec[3 * e + d] * fe[3 * e + b];
            }
        }
    }
    // the merge visits edges in the host's order: equal bit for bit
    assert_eq!(
        forces, want,
        "forces: merged CSR order differs from the host sum"
    );
    println!(
        "  forces (merged CSR ranges)               n {:6}  bit-identical to the host loop",
        3 * n
    );
    let parts = 64;
    let mut part = vec![f64::NAN; parts * 10];
    let mut out = [f64::NAN; 10];
    type VFn = unsafe extern "C" fn(u64, u64, *const f64, *const f64, *mut f64, *mut f64);
    let f = sym!(k, b"t_virial", VFn);
    // SAFETY: vec, fe 3·ne; part parts·10; out 10.
    unsafe {
        f(
            ne as u64,
            parts as u64,
            vec.as_ptr(),
            fe.as_ptr(),
            part.as_mut_ptr(),
            out.as_mut_ptr(),
        )
    };
    rel("virial", &out[..9], &vir, 1e-13);
    // out[9]: the smallest squared edge length (the overlap check), exactly
    let min_r2 = vec
        .chunks_exact(3)
        .map(|v| v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
        .fold(f64::INFINITY, f64::min);
    assert_eq!(out[9], min_r2, "smallest squared edge length");

    // readout and one-hot
    let ns = 5;
    let types: Vec<u32> = (0..n).map(|_| r.random_range(0..ns) as u32).collect();
    let o: Vec<T> = cast(&rnd(r, n));
    let scale: Vec<f64> = rnd(r, ns).iter().map(|x| 1.0 + 0.5 * x).collect();
    let shift = rnd(r, ns);
    let mut atomic = vec![f64::NAN; n];
    let mut seed = vec![T::from_f64(f64::NAN); n];
    type RFn<T> =
        unsafe extern "C" fn(u64, *const T, *const u32, *const f64, *const f64, *mut f64, *mut T);
    let f = sym!(k, b"t_readout", RFn<T>);
    // SAFETY: n atoms, ns species.
    unsafe {
        f(
            n as u64,
            o.as_ptr(),
            types.as_ptr(),
            scale.as_ptr(),
            shift.as_ptr(),
            atomic.as_mut_ptr(),
            seed.as_mut_ptr(),
        )
    };
    let want: Vec<f64> = (0..n)
        .map(|a| o[a].to_f64() * scale[types[a] as usize] + shift[types[a] as usize])
        .collect();
    rel("readout atomic energies", &atomic, &want, 1e-15);
    let want: Vec<T> = types
        .iter()
        .map(|&t| T::from_f64(scale[t as usize]))
        .collect();
    rel("readout seed", &seed, &want, 0.0);
    let mut oh = vec![T::from_f64(f64::NAN); n * ns];
    type OFn<T> = unsafe extern "C" fn(u64, *const u32, i32, *mut T);
    let f = sym!(k, b"t_one_hot", OFn<T>);
    // SAFETY: n·ns.
    unsafe { f(n as u64, types.as_ptr(), ns as i32, oh.as_mut_ptr()) };
    let want: Vec<T> = (0..n * ns)
        .map(|i| T::from_f64(f64::from(u8::from(types[i / ns] as usize == i % ns))))
        .collect();
    rel("one-hot", &oh, &want, 0.0);
    // accumulate: first copies, then adds
    let a: Vec<T> = cast(&rnd(r, 777));
    let b: Vec<T> = cast(&rnd(r, 777));
    let mut d = vec![T::from_f64(f64::NAN); 777];
    type AFn<T> = unsafe extern "C" fn(u64, *mut T, *const T, i32);
    let f = sym!(k, b"t_accumulate", AFn<T>);
    // SAFETY: 777 each.
    unsafe {
        f(777, d.as_mut_ptr(), a.as_ptr(), 1);
        f(777, d.as_mut_ptr(), b.as_ptr(), 0);
    }
    let want: Vec<T> = a.iter().zip(&b).map(|(&x, &y)| x + y).collect();
    rel("accumulate", &d, &want, 0.0);
}

/// Plain products in both layouts against a naive loop (odd sizes).
fn check_gemm<T: Scalar>(k: &K<T>, r: &mut rand_chacha::ChaCha8Rng) {
    let (m, n, kk) = (37, 29, 13);
    let a: Vec<T> = cast(&rnd(r, m * kk));
    let b: Vec<T> = cast(&rnd(r, kk * n));
    let c0: Vec<T> = cast(&rnd(r, m * n));
    for (tb, beta) in [(false, 0.0), (true, 0.0), (false, 0.5), (true, 1.0)] {
        let mut c = c0.clone();
        k.gemm((m, n, kk), 0.3, &a, &b, tb, beta, &mut c);
        let mut want = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for q in 0..kk {
                    let bv = if tb { b[j * kk + q] } else { b[q * n + j] };
                    s += a[i * kk + q].to_f64() * bv.to_f64();
                }
                want[i * n + j] = 0.3 * s + beta * c0[i * n + j].to_f64();
            }
        }
        rel(
            &format!("gemm trans_b {tb} beta {beta}"),
            &c,
            &want,
            tol::<T>(),
        );
    }
}

type RadialLastFn = unsafe extern "C" fn(u64, i32, i32, *const f32, *const f32, f32, *mut f32);

/// `ek_radial_last_tf32x3` (f32; its `mma.sync` emulated lane by lane in the PTX fragment
/// layout) against the f64 product of the same f32 inputs, on SevenNet-0's shapes and ragged
/// ones (rows not a multiple of the 256-row block or the 32-row warp tile, column tiles not
/// a multiple of the 4 walked at once, k below the 64 held), outputs poisoned: 3xTF32 accuracy, ≥ 30× closer than one TF32
/// product would be (so the split is really there), every element written.
fn check_radial_last(k: &K<f32>, r: &mut rand_chacha::ChaCha8Rng) {
    let f = sym!(k, b"t_radial_last", RadialLastFn);
    for (rows, kk, n) in [
        (700, 64, 960),
        (129, 64, 224),
        (256, 64, 384),
        (200, 8, 40),
        (5, 24, 8),
    ] {
        let h: Vec<f32> = rnd(r, rows * kk).iter().map(|&v| v as f32).collect();
        let w: Vec<f32> = rnd(r, kk * n).iter().map(|&v| v as f32).collect();
        let frag = tf32x3_mma_fragments(&w, kk, n);
        let alpha = 0.125f32;
        let mut out = vec![f32::NAN; rows * n];
        // SAFETY: h rows·k, both W parts k·n, out rows·n.
        unsafe {
            f(
                rows as u64,
                kk as i32,
                n as i32,
                h.as_ptr(),
                frag.as_ptr(),
                alpha,
                out.as_mut_ptr(),
            )
        };
        let (mut want, mut one) = (vec![0.0; rows * n], vec![0.0; rows * n]);
        for i in 0..rows {
            for q in 0..kk {
                let (a, a1) = (h[i * kk + q] as f64, tf32(h[i * kk + q]) as f64);
                for j in 0..n {
                    want[i * n + j] += alpha as f64 * a * w[q * n + j] as f64;
                    one[i * n + j] += alpha as f64 * a1 * tf32(w[q * n + j]) as f64;
                }
            }
        }
        let err = |v: &[f64]| {
            let (mut d, mut s) = (0.0, 0.0);
            for (a, b) in v.iter().zip(&want) {
                d += (a - b) * (a - b);
                s += b * b;
            }
            (d / s).sqrt()
        };
        let got: Vec<f64> = out.iter().map(|&v| v as f64).collect();
        assert!(
            got.iter().all(|v| v.is_finite()),
            "radial last {rows}x{kk}x{n}: an output left unwritten"
        );
        let (e3, e1) = (err(&got), err(&one));
        println!("  radial last 3xTF32 {rows}x{kk}x{n}: rel {e3:.2e} (one TF32 product: {e1:.2e})");
        assert!(e3 < 2e-6, "radial last {rows}x{kk}x{n}: rel {e3:.2e}");
        assert!(
            e3 * 30.0 < e1,
            "radial last {rows}x{kk}x{n}: {e3:.2e} vs 1xTF32 {e1:.2e}"
        );
    }
}

fn run_all<T: Scalar>(models: &[(&str, SevenNet<T>)]) {
    let dir = tmpdir(T::NAME);
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(20261206);
    // the fused MLP kernels: the models' shapes and the extra ones, weights staged in shared
    // memory; then with the widest shape too, which moves them to global memory
    let extra = extra_mlps::<T>(&mut r, false);
    let mut nets: Vec<(String, &FullyConnectedNet<T>)> = vec![];
    for (name, m) in models {
        for (t, l) in m.layers.iter().enumerate() {
            nets.push((format!("{name} layer {t}"), &l.weight_nn));
        }
    }
    for (i, n) in extra.iter().enumerate() {
        nets.push((format!("extra {i}"), n));
    }
    let shapes_of = |nets: &[(String, &FullyConnectedNet<T>)]| {
        let mut v: Vec<Vec<usize>> = vec![];
        for (_, n) in nets {
            let w = mlp_hidden_shape(n).unwrap();
            if !v.contains(&w) {
                v.push(w);
            }
        }
        v
    };
    let mk = MlpKernels::new::<T>(shapes_of(&nets));
    assert!(
        mk.smem,
        "the small shapes stage their weights in shared memory"
    );
    for lmax in [2u32, 3] {
        let Some(lib) = build_lib::<T>(&dir, lmax, &mk) else {
            return;
        };
        let k = K::<T> {
            lib: &lib,
            _t: std::marker::PhantomData,
        };
        println!("{} kernels, lmax {lmax}:", T::NAME);
        let bessel = BesselBasis {
            cutoff: 4.0,
            coeffs: (1..=8)
                .map(|q| q as f64 * std::f64::consts::PI / 4.0 * (1.0 + 0.03 * q as f64))
                .collect(),
        };
        for env in [
            Cutoff::Xplor {
                r_on: 3.3,
                r_cut: 4.0,
            },
            Cutoff::Polynomial { r_cut: 4.0, p: 6.0 },
        ] {
            check_geometry(&k, lmax, &bessel, &env, &mut r);
        }
        if lmax != 2 {
            continue;
        }
        check_gemm(&k, &mut r);
        check_linear_paths(&k, &mut r);
        check_reductions(&k, &mut r);
        // the 3xTF32 split and the forward mma kernel (f32 only: the double build never
        // launches them)
        let k32 = (T::NAME == "f32").then_some(K::<f32> {
            lib: &lib,
            _t: std::marker::PhantomData,
        });
        if let Some(k32) = &k32 {
            check_split_rows(k32, &mut r);
            check_radial_last(k32, &mut r);
        }
        for (name, m) in models {
            println!(" model {name}:");
            check_geometry(&k, 2, &m.bessel, &m.envelope, &mut r);
            check_linears(&k, m, &mut r);
            if let Some(k32) = &k32 {
                check_linears_tf32x3(k32, &m.cast::<f32>(), &mut r);
                check_linears_tc(k32, name, &m.cast::<f32>(), &mut r);
            }
            let gates: Vec<&Gate<T>> = m.layers.iter().map(|l| &l.gate).collect();
            check_gates(&k, &gates, &mut r);
            for (t, l) in m.layers.iter().enumerate() {
                check_mlp(&k, t, &l.weight_nn, &mut r);
            }
        }
        for (name, n) in &nets {
            check_fused_mlp(&k, &mk, name, n, &mut r);
        }
    }
    let wide = extra_mlps::<T>(&mut r, true);
    let mut nets_g = nets.clone();
    nets_g.push(("extra wide".into(), &wide[2]));
    let mk_g = MlpKernels::new::<T>(shapes_of(&nets_g));
    assert!(
        !mk_g.smem,
        "the widest shape reads its weights from global memory"
    );
    if let Some(lib) = build_lib::<T>(&dir, 2, &mk_g) {
        let k = K::<T> {
            lib: &lib,
            _t: std::marker::PhantomData,
        };
        println!("{} fused MLP kernels, weights in global memory:", T::NAME);
        for (name, n) in &nets_g {
            check_fused_mlp(&k, &mk_g, name, n, &mut r);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

type TcGemmFn = unsafe extern "C" fn(u64, i32, i32, f32, *const f32, *const f32, f32, *mut f32);
/// The f32 kernels of a built library (the tensor-core kernels' emulation tests).
fn f32_kernels(lib: &libloading::Library) -> K<'_, f32> {
    K {
        lib,
        _t: std::marker::PhantomData,
    }
}

/// Every emulated barrier ran inside `grid_threads` (a kernel that needs its block's threads
/// concurrent was not run one thread at a time).
fn assert_barriers_synced(lib: &libloading::Library) {
    // SAFETY: the harness defines it with this signature.
    let unsynced: libloading::Symbol<unsafe extern "C" fn() -> i32> =
        unsafe { lib.get(b"t_unsynced_barriers") }.unwrap();
    // SAFETY: no arguments.
    assert_eq!(
        unsafe { unsynced() },
        0,
        "a barrier ran outside grid_threads"
    );
}

type MlpTcFn =
    unsafe extern "C" fn(u64, i32, *const f32, *const f32, f32, *const f32, *mut f32, i32);

/// `ek_mlp_backward_tc` (the fused radial MLP's backward as 3xTF32 `mma`, a warp per 16
/// edges) in the CPU emulation — each block's threads concurrent, the `mma` fragments
/// exchanged as the PTX ISA lays them out — against the host net's f64 backward, for hidden
/// widths [8, 64, 64] (SevenNet's) and [5, 64, 64] (emb columns padded in the k step and
/// masked in the output), on 1000 edges (a partial last tile) and 7, overwrite and
/// accumulate; poisoned outputs must be written. ≤ 1e-5 relative: one TF32 pass would be
/// ~1e-3, so the split must be there. The pack is checked for shapes it must refuse. The
/// same for `ek_mlp_backward_tc_smem` (the pack copied into shared memory per block, two
/// blocks striding over the tiles).
#[test]
fn mlp_backward_tc_emulated() {
    use equikern_model::cuda_model::tables::{mlp_tc_iterations, mlp_tc_pack};
    use equikern_model::nn::FullyConnectedNet;
    let dir = tmpdir("mlptc");
    let Some(lib) = build_lib::<f32>(&dir, 2, &MlpKernels::none::<f32>()) else {
        return;
    };
    let k_ = f32_kernels(&lib);
    let kernels = [
        (
            "ek_mlp_backward_tc",
            sym!(k_, b"t_mlp_backward_tc", MlpTcFn),
        ),
        (
            "ek_mlp_backward_tc_smem",
            sym!(k_, b"t_mlp_backward_tc_smem", MlpTcFn),
        ),
    ];
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(19);
    for ((nb, ne), (name, f)) in [(8usize, 1000usize), (5, 1000), (8, 7)]
        .into_iter()
        .flat_map(|s| kernels.map(|kf| (s, kf)))
    {
        let b = 96;
        let mut w = |n: usize| -> Vec<f64> { (0..n).map(|_| r.random_range(-1.7..1.7)).collect() };
        let net = FullyConnectedNet {
            layers: vec![
                (nb, 64, w(nb * 64)),
                (64, 64, w(64 * 64)),
                (64, b, w(64 * b)),
            ],
            act_cst: 1.679_177,
        };
        let pack = mlp_tc_pack(&net).unwrap();
        assert_eq!(pack.len(), 144 * 32 * 4);
        let emb: Vec<f64> = (0..ne * nb).map(|_| r.random_range(-2.0..2.0)).collect();
        let gw: Vec<f64> = (0..ne * b).map(|_| r.random_range(-1.0..1.0)).collect();
        let (_, tape) = net.forward(&emb);
        let want = net.backward(&tape, &gw);
        // g_last = gw · W_lastᵀ / 8 (what the last product's transpose hands the kernel)
        let w3 = &net.layers[2].2;
        let gl: Vec<f32> = (0..ne * 64)
            .map(|i| {
                let (e, a) = (i / 64, i % 64);
                ((0..b).map(|j| gw[e * b + j] * w3[a * b + j]).sum::<f64>() / 8.0) as f32
            })
            .collect();
        let emb32: Vec<f32> = emb.iter().map(|&v| v as f32).collect();
        let base: Vec<f32> = (0..ne * nb)
            .map(|_| r.random_range(-1.0..1.0) as f32)
            .collect();
        for acc in [false, true] {
            let mut ge: Vec<f32> = if acc {
                base.clone()
            } else {
                vec![f32::NAN; ne * nb]
            };
            // SAFETY: emb ne·nb, the pack, gl ne·64, ge ne·nb.
            unsafe {
                f(
                    ne as u64,
                    nb as i32,
                    emb32.as_ptr(),
                    pack.as_ptr(),
                    net.act_cst as f32,
                    gl.as_ptr(),
                    ge.as_mut_ptr(),
                    i32::from(acc),
                )
            };
            let want_acc: Vec<f64> = if acc {
                want.iter()
                    .zip(&base)
                    .map(|(w, b)| w + f64::from(*b))
                    .collect()
            } else {
                want.clone()
            };
            rel(
                &format!(
                    "{name} nb {nb} E {ne} acc {acc} ({} thr)",
                    mlp_tc_iterations(ne)
                ),
                &ge,
                &want_acc,
                1e-5,
            );
        }
    }
    let other = FullyConnectedNet {
        layers: vec![
            (8, 32, vec![0.0; 256]),
            (32, 64, vec![0.0; 2048]),
            (64, 4, vec![0.0; 256]),
        ],
        act_cst: 1.0,
    };
    let e = mlp_tc_pack(&other).unwrap_err().to_string();
    assert!(e.contains("[8, 32, 64]"), "{e}");
    assert_barriers_synced(&lib);
}

type MlpTcFwdFn = unsafe extern "C" fn(u64, i32, *const f32, *const f32, f32, *mut f32, *mut f32);

/// `ek_mlp_forward_tc` (the fused radial MLP's hidden layers as 3xTF32 `mma`, the pack of
/// `ek_mlp_backward_tc`) in the CPU emulation against the f64 hidden activation
/// h2 = c·silu(c·silu(emb · W1 / √nb) · W2 / 8), widths [8, 64, 64] and [5, 64, 64], 1000
/// edges (a partial last tile) and 7: h alone, the split rows alone and both. ≤ 1e-6
/// relative (one TF32 pass would be ~1e-3); the split rows are [tf32(h) | tf32(h) |
/// tf32(h − tf32(h))] of the h written beside them, bit for bit, and the same without h;
/// poisoned rows must all be written, rows past `edges` never. The same for
/// `ek_mlp_forward_tc_smem` (W1, W2 in shared memory per block, two blocks striding).
#[test]
fn mlp_forward_tc_emulated() {
    use equikern_model::cuda_model::tables::mlp_tc_pack;
    use equikern_model::nn::FullyConnectedNet;
    let dir = tmpdir("mlptcf");
    let Some(lib) = build_lib::<f32>(&dir, 2, &MlpKernels::none::<f32>()) else {
        return;
    };
    let k_ = f32_kernels(&lib);
    let kernels = [
        (
            "ek_mlp_forward_tc",
            sym!(k_, b"t_mlp_forward_tc", MlpTcFwdFn),
        ),
        (
            "ek_mlp_forward_tc_smem",
            sym!(k_, b"t_mlp_forward_tc_smem", MlpTcFwdFn),
        ),
    ];
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(23);
    let silu = |x: f64| x / (1.0 + (-x).exp());
    let tf32 = |x: f32| f32::from_bits((x.to_bits().wrapping_add(0x1000)) & 0xffff_e000);
    for ((nb, ne), (name, f)) in [(8usize, 1000usize), (5, 1000), (8, 7)]
        .into_iter()
        .flat_map(|s| kernels.map(|kf| (s, kf)))
    {
        let mut w = |n: usize| -> Vec<f64> { (0..n).map(|_| r.random_range(-1.7..1.7)).collect() };
        let net = FullyConnectedNet {
            layers: vec![
                (nb, 64, w(nb * 64)),
                (64, 64, w(64 * 64)),
                (64, 32, w(64 * 32)),
            ],
            act_cst: 1.679_177,
        };
        let pack = mlp_tc_pack(&net).unwrap();
        let emb: Vec<f64> = (0..ne * nb).map(|_| r.random_range(-2.0..2.0)).collect();
        let c = net.act_cst;
        let (w1, w2) = (&net.layers[0].2, &net.layers[1].2);
        let mut want = vec![0.0f64; ne * 64];
        for e in 0..ne {
            let h1: Vec<f64> = (0..64)
                .map(|j| {
                    let p: f64 = (0..nb).map(|k| emb[e * nb + k] * w1[k * 64 + j]).sum();
                    c * silu(p / (nb as f64).sqrt())
                })
                .collect();
            for j in 0..64 {
                let p: f64 = (0..64).map(|k| h1[k] * w2[k * 64 + j]).sum();
                want[e * 64 + j] = c * silu(p / 8.0);
            }
        }
        let emb32: Vec<f32> = emb.iter().map(|&v| v as f32).collect();
        // one row of slack past `edges` in each output: must stay poisoned
        let run = |h: bool, cat: bool| {
            let mut out = vec![f32::NAN; (ne + 1) * 64];
            let mut cats = vec![f32::NAN; (ne + 1) * 192];
            // SAFETY: emb ne·nb, the pack, out ne·64 and cat ne·192 (+ a row) where not null.
            unsafe {
                f(
                    ne as u64,
                    nb as i32,
                    emb32.as_ptr(),
                    pack.as_ptr(),
                    c as f32,
                    if h {
                        out.as_mut_ptr()
                    } else {
                        std::ptr::null_mut()
                    },
                    if cat {
                        cats.as_mut_ptr()
                    } else {
                        std::ptr::null_mut()
                    },
                )
            };
            assert!(
                out[ne * 64..].iter().all(|v| v.is_nan()),
                "h written past edges"
            );
            assert!(
                cats[ne * 192..].iter().all(|v| v.is_nan()),
                "split written past edges"
            );
            (out, cats)
        };
        let (h_only, _) = run(true, false);
        rel(
            &format!("{name} nb {nb} E {ne} h"),
            &h_only[..ne * 64],
            &want,
            1e-6,
        );
        let (h_both, cat_both) = run(true, true);
        let (_, cat_only) = run(false, true);
        assert_eq!(
            h_both.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            h_only.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "h beside the split rows differs"
        );
        assert_eq!(
            cat_both.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            cat_only.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "split rows without h differ"
        );
        for e in 0..ne {
            for j in 0..64 {
                let h = h_both[e * 64 + j];
                let (hi, lo) = (tf32(h), tf32(h - tf32(h)));
                let row = &cat_both[e * 192..(e + 1) * 192];
                assert_eq!(
                    [
                        row[j].to_bits(),
                        row[64 + j].to_bits(),
                        row[128 + j].to_bits()
                    ],
                    [hi.to_bits(), hi.to_bits(), lo.to_bits()],
                    "edge {e} column {j}: split row"
                );
            }
        }
    }
    assert_barriers_synced(&lib);
}

/// Spill-store bytes in a ptxas report block (`u64::MAX` when it has no such line).
#[cfg(feature = "cuda")]
/// Registers per thread in a ptxas entry block ("Used N registers").
fn registers(block: &[&str]) -> Option<u32> {
    block.iter().find_map(|x| {
        let i = x.find("Used ")?;
        x[i + 5..].split(' ').next()?.parse::<u32>().ok()
    })
}

fn spill_bytes(block: &[&str]) -> u64 {
    block
        .iter()
        .find_map(|x| {
            let i = x.find(" bytes spill stores")?;
            x[..i].rsplit(' ').next()?.parse().ok()
        })
        .unwrap_or(u64::MAX)
}

/// Relative L2 error of `c` against `want`.
fn rel_l2(c: &[f32], want: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in c.iter().zip(want) {
        num += (f64::from(x) - y).powi(2);
        den += y * y;
    }
    (num / den.max(1e-300)).sqrt()
}

/// `ek_gemm_tf32x3_nt` (the radial MLP's backward `gw · Wᵀ` on tensor cores) in the CPU
/// emulation: each block's 256 threads concurrent, the `mma.m16n8k8` TF32 fragments
/// exchanged between the 32 lanes as the PTX ISA lays them out (tests/common's shim), so a
/// wrong lane → (row, column) mapping, k order or B pack shows as a wrong product. Against
/// an f64 product on random data of SevenNet-0's shapes (k = 960, 384, 224 with a = 64) and
/// ragged ones (m not a multiple of the 256-row tile, k an odd multiple of 4 (tail chunk),
/// k not a multiple of 4 (scalar loads), n < 64, more row tiles than blocks): error at 3xTF32 level (≤ 1e-5 relative,
/// float accumulation over k), output poisoned (NaN, beta = 0 must overwrite it) with
/// sentinel rows past m that must stay; and the split must be there: the same product with
/// one TF32 pass (host, f64 sums of the rounded factors) and the kernel with the B pack's
/// `lo` halves zeroed must each be ≥ 20× worse. The same for `ek_gemm_tf32x3_nt_pipe` (its
/// `cp.async` rings of A and B, zero-filled rows past m and columns past k, two blocks so
/// that blocks run several tiles and some warps only zeros; k % 4 == 0 only, as the host
/// launches it).
#[test]
fn tf32x3_nt_gemm_emulated() {
    let dir = tmpdir("tc");
    let Some(lib) = build_lib::<f32>(&dir, 2, &MlpKernels::none::<f32>()) else {
        return;
    };
    let k_ = f32_kernels(&lib);
    let kernels = [
        ("ek_gemm_tf32x3_nt", sym!(k_, b"t_gemm_tf32x3_nt", TcGemmFn)),
        (
            "ek_gemm_tf32x3_nt_pipe",
            sym!(k_, b"t_gemm_tf32x3_nt_pipe", TcGemmFn),
        ),
        (
            "ek_gemm_tf32x3_nt_pipe (pair)",
            sym!(k_, b"t_gemm_tf32x3_nt_pair", TcGemmFn),
        ),
    ];
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    const GUARD: usize = 5;
    for ((m, n, k), (name, f)) in [
        (200, 64, 960),
        (260, 64, 384),
        (513, 64, 224),
        (70, 64, 36),
        // more tiles than the emulated grid's 3 blocks: a CTA's second tile continues the
        // shared buffers' rotation (2 chunks, then 1 chunk per tile)
        (1000, 64, 36),
        (900, 64, 20),
        (33, 13, 22),
        (1, 64, 4),
    ]
    .into_iter()
    .flat_map(|s| kernels.map(|kf| (s, kf)))
    .filter(|((_, _, k), (name, _))| k % 4 == 0 || !name.contains("pipe"))
    {
        let alpha = 0.125f32;
        // A: gradients of mixed scales (as gw is), B: weights ~ N(0, 1)-like
        let a: Vec<f32> = (0..m * k)
            .map(|i| {
                let s = [1.0, 1e-3, 30.0][i % 3];
                (r.random_range(-1.0..1.0) * s) as f32
            })
            .collect();
        let b: Vec<f32> = (0..n * k)
            .map(|_| r.random_range(-1.7..1.7) as f32)
            .collect();
        let run = |pack: &[f32], beta: f32, c0: &[f32]| -> Vec<f32> {
            let mut c = c0.to_vec();
            // SAFETY: A [m, k], the pack of ceil(k/32) chunks, C [m + GUARD, n].
            unsafe {
                f(
                    m as u64,
                    n as i32,
                    k as i32,
                    alpha,
                    a.as_ptr(),
                    pack.as_ptr(),
                    beta,
                    c.as_mut_ptr(),
                )
            };
            assert_eq!(
                &c[m * n..],
                &c0[m * n..],
                "{name} m {m} n {n} k {k}: rows past m written"
            );
            c.truncate(m * n);
            c
        };
        let mut want = vec![0.0f64; m * n];
        let mut one_pass = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut s1) = (0.0f64, 0.0f64);
                for q in 0..k {
                    let (x, y) = (a[i * k + q], b[j * k + q]);
                    s += f64::from(x) * f64::from(y);
                    s1 += f64::from(tf32(x)) * f64::from(tf32(y));
                }
                want[i * n + j] = f64::from(alpha) * s;
                one_pass[i * n + j] = f64::from(alpha) * s1;
            }
        }
        let mut poisoned = vec![f32::NAN; m * n];
        poisoned.extend(std::iter::repeat_n(-7.25f32, GUARD * n));
        let pack = tf32x3_nt_pack(&b, n, k, true).unwrap();
        let c = run(&pack, 0.0, &poisoned);
        let bad = c.iter().position(|x| !x.is_finite());
        assert!(
            bad.is_none(),
            "{name} m {m} n {n} k {k}: element {bad:?} not written"
        );
        let e3 = rel_l2(&c, &want);
        let e1 = rel_l2(
            &one_pass.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            &want,
        );
        let c_nolo = run(&tf32x3_nt_pack(&b, n, k, false).unwrap(), 0.0, &poisoned);
        let e2 = rel_l2(&c_nolo, &want);
        // beta = 1 accumulates onto C (the small cases: the emulated barriers are slow)
        let ea = if k <= 64 {
            let c0: Vec<f32> = (0..(m + GUARD) * n)
                .map(|_| r.random_range(-1.0..1.0) as f32)
                .collect();
            let c_acc = run(&pack, 1.0, &c0);
            let want_acc: Vec<f64> = want
                .iter()
                .zip(&c0)
                .map(|(w, c)| w + f64::from(*c))
                .collect();
            rel_l2(&c_acc, &want_acc)
        } else {
            0.0
        };
        println!(
            "  {name} m {m:4} n {n:2} k {k:4} ({} threads): rel L2 3xTF32 {e3:.2e}, beta 1 {ea:.2e}; one TF32 pass {e1:.2e}, without B lo {e2:.2e}",
            tc_gemm_iterations(m)
        );
        assert!(
            e3 <= 1e-5,
            "{name} m {m} n {n} k {k}: 3xTF32 error {e3:.2e}"
        );
        assert!(
            ea <= 1e-5,
            "{name} m {m} n {n} k {k}: beta = 1 error {ea:.2e}"
        );
        assert!(
            e1 >= 20.0 * e3 && e2 >= 20.0 * e3,
            "{name} m {m} n {n} k {k}: the split does not show: 3xTF32 {e3:.2e}, one pass {e1:.2e}, without B lo {e2:.2e}"
        );
    }
    assert_barriers_synced(&lib);
    let _ = std::fs::remove_dir_all(dir);
}

fn models() -> Vec<(&'static str, SevenNet)> {
    let mut v = vec![
        ("small XPLOR", small_model("XPLOR", 5)),
        ("small poly", small_model("poly", 6)),
    ];
    if let Some(m) = real_model() {
        v.push(("7net-0", m));
    }
    v
}

type RcbFn = unsafe extern "C" fn(
    i32,
    u64,
    u64,
    *const u32,
    *const f32,
    *const f32,
    *const f32,
    *const f32,
    *const f32,
    f32,
    i32,
    *mut f32,
    *mut f32,
    *mut f32,
);

/// `ek_conv_radial_bwd` (the convolution backward with the radial network's last product
/// fused in) against the host on every distinct fused layer of the synthetic model and of
/// 7net-0 (layer 1 only unless EQUIKERN_EMULATION_FULL=1): `w = α·h·W`, the TP
/// backward of the core oracle per edge (f64), `g_x` summed per sender, `g_h = α·g_w·Wᵀ`;
/// random inputs, NaN-poisoned outputs, a graph with a node of no outgoing edge and one of
/// more than 16 (two edge tiles); the group launches in order (the first writes `g_y`,
/// `g_h`, later ones add). f32 ≤ 1e-5 relative.
#[test]
fn conv_radial_bwd_matches_host() {
    let mut models: Vec<(&str, SevenNet<f32>)> = vec![("synthetic", rcb_model().cast())];
    if let Some(m) = real_model() {
        models.push(("7net-0", m.cast()));
    }
    let mut rcb = RadialConvKernels::none();
    for (_, m) in &models {
        for s in RadialConvKernels::of(m).shapes {
            if !rcb.shapes.contains(&s) {
                rcb.shapes.push(s);
            }
        }
    }
    assert!(
        rcb.variants(&models[0].1.layers[1]).is_some(),
        "the synthetic model's layer 1 takes the fused backward"
    );
    let dir = tmpdir("rcb");
    let Some(lib) = build_lib_full::<f32>(&dir, 2, &MlpKernels::none::<f32>(), &rcb, "_rcb") else {
        return;
    };
    let k = K::<f32> {
        lib: &lib,
        _t: std::marker::PhantomData,
    };
    let f = sym!(k, b"t_conv_radial_bwd", RcbFn);
    let full = std::env::var("EQUIKERN_EMULATION_FULL").is_ok_and(|v| v == "1");
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    for (name, m) in &models {
        let mut seen: Vec<Vec<i32>> = vec![];
        for (t, l) in m.layers.iter().enumerate() {
            let Some(vars) = rcb.variants(l) else {
                println!("  {name} layer {t}: not fused");
                continue;
            };
            // (7net-0: layer 1's three groups, the shape of layers 1-3, unless FULL)
            if seen.contains(&vars) || (*name == "7net-0" && !full && t != 1) {
                continue;
            }
            seen.push(vars.clone());
            let tp = &l.product;
            let (a, b, w2) = l.weight_nn.layers.last().unwrap();
            let (a, b) = (*a, *b);
            // 7 nodes: node 0 sends nothing, node 1 sends 21 edges, the others 1..5
            let n = 7usize;
            let mut sender = vec![];
            let mut receiver = vec![];
            for s in 1..n {
                let deg = if s == 1 { 21 } else { r.random_range(1..6) };
                for _ in 0..deg {
                    sender.push(s as u32);
                    receiver.push(r.random_range(0..n as u32));
                }
            }
            // edge ids not grouped by sender
            let e = sender.len();
            for i in (1..e).rev() {
                let j = r.random_range(0..=i);
                sender.swap(i, j);
                receiver.swap(i, j);
            }
            let csr = Csr::build(n, &receiver, &sender).unwrap();
            let packed = csr.packed(End::Sender);
            let (dx, dy, dz) = (tp.dim_in1, tp.dim_in2, tp.dim_out);
            let x = rnd(&mut r, n * dx);
            let y = rnd(&mut r, e * dy);
            let h = rnd(&mut r, e * a);
            let gz = rnd(&mut r, n * dz);
            let w2: Vec<f64> = w2.iter().map(|&v| f64::from(v)).collect();
            let alpha = 1.0 / (a as f64).sqrt();
            // the host: w = α h W, the oracle's backward per edge, g_h = α g_w Wᵀ
            let mut w = vec![0.0f64; e * b];
            for ei in 0..e {
                for q in 0..a {
                    let hq = alpha * h[ei * a + q];
                    for c in 0..b {
                        w[ei * b + c] += hq * w2[q * b + c];
                    }
                }
            }
            let xs: Vec<f64> = (0..e)
                .flat_map(|ei| x[sender[ei] as usize * dx..][..dx].to_vec())
                .collect();
            let gzs: Vec<f64> = (0..e)
                .flat_map(|ei| gz[receiver[ei] as usize * dz..][..dz].to_vec())
                .collect();
            let g = equikern_core::oracle::backward(tp, e, &xs, &y, &w, &gzs).unwrap();
            let mut gx_want = vec![0.0f64; n * dx];
            for (ei, &s) in sender.iter().enumerate() {
                let s = s as usize;
                for i in 0..dx {
                    gx_want[s * dx + i] += g.gx[ei * dx + i];
                }
            }
            let mut gh_want = vec![0.0f64; e * a];
            for ei in 0..e {
                for q in 0..a {
                    let mut acc = 0.0;
                    for c in 0..b {
                        acc += g.gw[ei * b + c] * w2[q * b + c];
                    }
                    gh_want[ei * a + q] = alpha * acc;
                }
            }
            let f32s = |v: &[f64]| -> Vec<f32> { cast(v) };
            let (x32, y32, h32, gz32, w32) = (f32s(&x), f32s(&y), f32s(&h), f32s(&gz), f32s(&w2));
            let mut gx = vec![f32::NAN; n * dx];
            let mut gy = vec![f32::NAN; e * dy];
            let mut gh = vec![f32::NAN; e * a];
            for (i, &v) in vars.iter().enumerate() {
                // SAFETY: the packed sender view of `n` nodes and `e` edges; every array has
                // the layer's dims.
                unsafe {
                    f(
                        v,
                        n as u64,
                        e as u64,
                        packed.as_ptr(),
                        x32.as_ptr(),
                        y32.as_ptr(),
                        h32.as_ptr(),
                        w32.as_ptr(),
                        gz32.as_ptr(),
                        alpha as f32,
                        i32::from(i == 0),
                        gx.as_mut_ptr(),
                        gy.as_mut_ptr(),
                        gh.as_mut_ptr(),
                    )
                };
            }
            let what = format!(
                "ek_conv_radial_bwd {name} layer {t} ({} groups)",
                vars.len()
            );
            rel(&format!("{what} g_x"), &gx, &gx_want, 1e-5);
            rel(&format!("{what} g_y"), &gy, &g.gy, 1e-5);
            rel(&format!("{what} g_h"), &gh, &gh_want, 1e-5);
        }
        assert!(!seen.is_empty(), "{name}: no fused layer");
    }
}

#[test]
fn kernels_match_host_f64() {
    run_all::<f64>(&models());
}

#[test]
fn kernels_match_host_f32() {
    let m: Vec<(&str, SevenNet<f32>)> = models().iter().map(|(n, m)| (*n, m.cast())).collect();
    run_all::<f32>(&m);
}

#[test]
fn mlp_shapes_checked() {
    let m = small_model("XPLOR", 5);
    let w = mlp_hidden_shape(&m.layers[0].weight_nn).unwrap();
    assert_eq!(w, vec![8, 5, 7]);
    let wide = FullyConnectedNet::new(
        vec![(8, 129, vec![0.0; 8 * 129]), (129, 4, vec![0.0; 129 * 4])],
        1.0,
        "t",
    )
    .unwrap();
    let e = mlp_hidden_shape(&wide).unwrap_err();
    assert!(e.contains("hidden layer 1 width 129"), "{e}");
    let flat = FullyConnectedNet::new(vec![(8, 4, vec![0.0; 32])], 1.0, "t").unwrap();
    assert!(mlp_hidden_shape(&flat)
        .unwrap_err()
        .contains("hidden layer"));
    let e =
        kernel_source_with::<f32>(2, &MlpKernels::new::<f32>(vec![vec![8, 200, 4]])).unwrap_err();
    assert!(e.to_string().contains("[8, 200, 4]"), "{e}");
    let e = kernel_source_with::<f64>(2, &MlpKernels::new::<f32>(vec![vec![8, 4, 4]])).unwrap_err();
    assert!(e.to_string().contains("vector width"), "{e}");
}

#[test]
fn source_rejects_too_large_lmax() {
    let e = kernel_source::<f64>(equikern_model::cuda_model::tables::MAX_SH_L + 1).unwrap_err();
    assert!(e.to_string().contains("spherical harmonics"), "{e}");
}

/// The fused radial-MLP kernels for SevenNet-0's shape (8 → 64 → 64) through NVRTC to sm_90
/// machine code with ptxas' report: printed (registers, spills: what the GPU run would show),
/// and f32 must not spill more than a few bytes (the kernels' register design). Skips without
/// libnvrtc.
#[cfg(feature = "cuda")]
#[test]
fn mlp_kernels_registers_sm90() {
    use cudarc::nvrtc::result as nv;
    // SAFETY: only tries to dlopen libnvrtc by its names.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        println!("SKIP: libnvrtc not found");
        return;
    }
    // with the fused convolution backward's variants of the synthetic model and 7net-0
    let mut rcb = RadialConvKernels::of(&rcb_model().cast::<f32>());
    if let Some(m) = real_model() {
        rcb.shapes
            .extend(RadialConvKernels::of(&m.cast::<f32>()).shapes);
    }
    for (name, src) in [
        (
            "f32",
            kernel_source_full::<f32>(2, &MlpKernels::new::<f32>(vec![vec![8, 64, 64]]), &rcb)
                .unwrap(),
        ),
        (
            "f64",
            kernel_source_full::<f64>(2, &MlpKernels::new::<f64>(vec![vec![8, 64, 64]]), &rcb)
                .unwrap(),
        ),
    ] {
        if let Some(d) = std::env::var_os("EK_DUMP_MLP_SOURCE") {
            std::fs::write(std::path::Path::new(&d).join(format!("{name}.cu")), &src).unwrap();
        }
        let c = std::ffi::CString::new(src).unwrap();
        let prog = nv::create_program(&c, None).unwrap();
        let opts = [
            "--gpu-architecture=sm_90",
            "--std=c++17",
            "--ptxas-options=-v",
        ];
        // SAFETY: a program just created; options are plain strings.
        let r = unsafe { nv::compile_program(prog, &opts) };
        // SAFETY: as above.
        let log = unsafe { nv::get_program_log(prog) }.unwrap();
        let log: String = log
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8 as char)
            .collect();
        // SAFETY: the program is not used after this.
        unsafe { nv::destroy_program(prog) }.unwrap();
        assert!(r.is_ok(), "NVRTC rejected the {name} source:\n{log}");
        // ptxas: "Compiling entry function 'X'" then "Used N registers, ..." and spill lines
        let lines: Vec<&str> = log.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.contains("Compiling entry function 'ek_linear_path") && name == "f32" {
                // up to 7·8 accumulators and 4·7 inputs per thread: no spill
                let block: Vec<&str> = lines[i..].iter().take(5).copied().collect();
                println!("{name}: {}", block.join("\n    "));
                assert!(
                    block.iter().any(|x| x.contains(" 0 bytes spill stores")),
                    "ek_linear_path spills: {}",
                    block.join(" | ")
                );
            }
            if l.contains("Compiling entry function 'ek_conv_radial_bwd") && name == "f32" {
                // per lane: the g_h tile (32), a slice's w fragments (≤ 16), g_x partials
                // (≤ 16), two rows' g_y (2 × 9) within the 128 registers of two blocks per SM;
                // sm_90: 128 registers; 72 bytes of spill with 7net-0's variants alone, 164
                // with the synthetic model's in the same kernel, 232 once each 3xTF32 product
                // went into a fresh partial (session 15). Kilobytes would mean the
                // accumulators went to memory.
                let block: Vec<&str> = lines[i..].iter().take(5).copied().collect();
                println!("{name}: {}", block.join("\n    "));
                let spill = spill_bytes(&block);
                assert!(
                    spill <= 256,
                    "{l}: {spill} bytes spilled: {}",
                    block.join(" | ")
                );
                let regs = registers(&block);
                assert!(regs.is_some_and(|r| r <= 128), "{l}: registers {regs:?}");
            }
            if (l.contains("Compiling entry function 'ek_mlp_backward_tc")
                || l.contains("Compiling entry function 'ek_mlp_forward_tc"))
                && name == "f32"
            {
                // one product's accumulators and its partials (2 × 32) + fragments within
                // 128 registers (two blocks per SM: the H100 ran the backward at 225 registers,
                // one block, 0.84 ms per call, latency-bound): no more than a few bytes spilled
                let block: Vec<&str> = lines[i..].iter().take(5).copied().collect();
                println!("{name}: {}", block.join("\n    "));
                let spill = spill_bytes(&block);
                assert!(
                    spill <= 16,
                    "{l}: {spill} bytes spilled: {}",
                    block.join(" | ")
                );
                let regs = registers(&block);
                assert!(regs.is_some_and(|r| r <= 128), "{l}: registers {regs:?}");
            }
            if l.contains("Compiling entry function 'ek_linear_tc") && name == "f32" {
                // 32 accumulators + 32 partials + fragments per lane within the 128 registers
                // of its two blocks per SM (`__launch_bounds__(EK_BLOCK, 2)`): sm_90 122 registers,
                // no spill (its k steps unrolled spilled 96 bytes); kilobytes would mean the
                // accumulators went to memory
                let block: Vec<&str> = lines[i..].iter().take(5).copied().collect();
                println!("{name}: {}", block.join("\n    "));
                let spill = spill_bytes(&block);
                assert!(
                    spill <= 64,
                    "{l}: {spill} bytes spilled: {}",
                    block.join(" | ")
                );
            }
            if l.contains("Compiling entry function 'ek_gemm_tf32x3_nt") {
                let block: Vec<&str> = lines[i..].iter().take(5).copied().collect();
                println!("{name}: {}", block.join("\n    "));
                if name == "f32" {
                    // 64 accumulators + two chunks of A (64) per lane by design, + 64 per-chunk
                    // partials since the accuracy fix (session 9): sm_90 f32 255 registers and
                    // 24 bytes of spill (to L1; the kernel is opt-in); more would be a change
                    let spill = spill_bytes(&block);
                    assert!(
                        spill <= 32,
                        "ek_gemm_tf32x3_nt spills {spill} bytes: {}",
                        block.join(" | ")
                    );
                }
            }
            if l.contains("Compiling entry function 'ek_mlp_hidden") {
                let block: Vec<&str> = lines[i..]
                    .iter()
                    .take(6)
                    .take_while(|x| !x.contains("Compiling entry") || x == &l)
                    .copied()
                    .collect();
                println!("{name}: {}", block.join("\n    "));
                // a few bytes of spill are ptxas' choice at 255 registers; hoisted weights
                // (the failure this guards against) spill kilobytes
                let spill: u64 = block
                    .iter()
                    .find_map(|x| {
                        let i = x.find(" bytes spill stores")?;
                        x[..i].rsplit(' ').next()?.parse().ok()
                    })
                    .unwrap_or(u64::MAX);
                if name == "f32" {
                    assert!(
                        spill <= 128,
                        "{name}: the fused MLP kernel spills {spill} bytes: {}",
                        block.join(" | ")
                    );
                }
            }
        }
    }
}

/// The same text through NVRTC (CPU-only: no GPU needed) for sm_90, both dtypes and lmax 2
/// and 3, with equikern-cuda's options: catches what g++ accepts and CUDA does not. Skips
/// where libnvrtc is not loadable (CI; here: the pip wheel `nvidia-cuda-nvrtc`, its
/// `nvidia/cu13/lib` on `LD_LIBRARY_PATH`).
#[cfg(feature = "cuda")]
#[test]
fn kernels_compile_with_nvrtc() {
    // SAFETY: only tries to dlopen libnvrtc by its names.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        println!("SKIP: libnvrtc not found");
        return;
    }
    // the fused MLP kernels: none, SevenNet-0's and odd shapes with the weights in shared
    // memory, then in global memory (what the widest shapes get)
    let shapes = vec![
        vec![8, 64, 64],
        vec![8, 5, 7],
        vec![3, 5, 9, 6, 10],
        vec![8, 16, 24],
    ];
    let mut cases = vec![];
    for lmax in [2u32, 3] {
        cases.push((lmax, "f32", kernel_source::<f32>(lmax).unwrap()));
        cases.push((lmax, "f64", kernel_source::<f64>(lmax).unwrap()));
    }
    for smem in [true, false] {
        let a = MlpKernels {
            smem,
            ..MlpKernels::new::<f32>(shapes.clone())
        };
        let b = MlpKernels {
            smem,
            ..MlpKernels::new::<f64>(shapes.clone())
        };
        cases.push((
            2,
            "f32 + MLP shapes",
            kernel_source_with::<f32>(2, &a).unwrap(),
        ));
        cases.push((
            2,
            "f64 + MLP shapes",
            kernel_source_with::<f64>(2, &b).unwrap(),
        ));
    }
    // before sm_80 (no TF32 mma): `ek_gemm_tf32x3_nt` compiles empty (the host never
    // launches it there)
    let old_arch = kernel_source::<f32>(2).unwrap();
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(l, n, s)| (l, n, s, "sm_90"))
        .chain([(2, "f32", old_arch, "sm_75")])
        .collect();
    for (lmax, name, src, arch) in cases {
        {
            let opts = cudarc::nvrtc::CompileOptions {
                arch: Some(arch),
                options: vec!["--std=c++17".into()],
                ..Default::default()
            };
            match cudarc::nvrtc::compile_ptx_with_opts(&src, opts) {
                Ok(ptx) => {
                    let text = ptx.to_src();
                    let entries = text.matches(".entry").count();
                    println!(
                        "nvrtc {name} lmax {lmax} {arch}: {} bytes of PTX, {entries} kernels",
                        text.len()
                    );
                    assert_eq!(
                        text.contains("mma.sync.aligned.m16n8k8"),
                        arch == "sm_90" && name.starts_with("f32"),
                        "{name} {arch}: the TF32 mma where (only where) f32 on sm_80+"
                    );
                    assert_eq!(
                        entries,
                        equikern_model::cuda_model::exec::Kern::ALL.len(),
                        "every kernel of kernels.cu"
                    );
                }
                Err(e) => panic!("NVRTC rejected the {name} lmax {lmax} {arch} source: {e:?}"),
            }
        }
    }
}
