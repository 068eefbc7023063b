//! Weight-staged kernels for `uvw` products with per-sample weights (DiffDock and other
//! fully connected products): one workgroup per sample.
//!
//! Such a product moves almost nothing but weights: DiffDock-L=1 has 6 928 weights per
//! sample against 356 elements of `x`, `y` and `z` together. The row kernels read a weight
//! row per output row (`2l+1` wide, strided across threads) and write one weight gradient
//! per row, so neither the loads nor the stores are coalesced. Here a workgroup copies the
//! sample's whole weight row into workgroup memory with consecutive threads on consecutive
//! elements, computes from there, and (backward) writes the weight gradient back the same
//! way, so the weight bytes move once, coalesced.
//!
//! Every path `p` (`x` block of multiplicity `U`, `y` block `V`, output block `W`) has
//! `U·V` tasks `(u, v)`. With `A[u,v,k] = Σ_terms c·x[u,i]·y[v,j]`:
//! ```text
//! forward:   z[w,k]    = Σ_p Σ_(u,v) w_p[u,v,w] · A[u,v,k]         (A staged per task first)
//! backward:  gw_p[u,v,w] = Σ_k A[u,v,k] · gz[w,k]
//!            T[u,v,k]  = Σ_w w_p[u,v,w] · gz[w,k]
//!            gx[u,i]  += Σ_terms c · y[v,j] · T[u,v,k]               (partials, summed per x row)
//!            gy[v,j]  += Σ_terms c · x[u,i] · T[u,v,k]               (partials, summed over u)
//! ```
//! double backward (from `hx`, `hy`, `hw`; `Ah = Σ_terms c·(hx_i·y_j + x_i·hy_j)`):
//! ```text
//!            dgz[w,k]  = Σ_p Σ_(u,v) w_p[u,v,w]·Ah[u,v,k] + hw_p[u,v,w]·A[u,v,k]
//!            dw_p[u,v,w] = Σ_k Ah[u,v,k] · gz[w,k]
//!            dx[u,i]  += Σ_terms c · (hy_j · T[u,v,k] + y_j · Th[u,v,k])   (Th: T of hw)
//!            dy[v,j]  += Σ_terms c · (hx_i · T[u,v,k] + x_i · Th[u,v,k])
//! ```
//! Workgroup memory holds one weight row at a time: stage `w` → tasks (A, Ah, T) → the `w`
//! half of `dgz` → stage `hw` over it → the `hw` half of `dgz` (stored) → tasks (Th, `dw` in
//! place) → `dw`, `dx`, `dy` out.
//!
//! The backward's task `(u, v)` loops over `w`, reading and overwriting its own weight row
//! in place (the gradient replaces the weight it came from). Its staged rows are padded to
//! an odd stride so the threads of a warp, one row each, hit distinct banks. All sums run in
//! a fixed order (paths, then `u`, `v`, `w` ascending): results are bit-reproducible.

use equikern_core::{ConnectionMode, TensorProduct};
use serde::{Deserialize, Serialize};

use crate::channel::ChannelTerm;
use crate::{Capabilities, Dtype, Tensor};

/// Which pass a weight-staged kernel computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StagedPass {
    Forward,
    /// `gx`, `gy` and `gw` in one kernel.
    Backward,
    /// `dx`, `dy`, `dw` and `dgz` in one kernel (see [`StagedWork`] for its phases).
    DoubleBackward,
}

impl StagedPass {
    /// `(inputs, outputs)` of the kernel.
    pub fn bindings(self) -> (Vec<Tensor>, Vec<Tensor>) {
        use Tensor::*;
        match self {
            StagedPass::Forward => (vec![X, Y, W], vec![Z]),
            StagedPass::Backward => (vec![X, Y, W, GZ], vec![GX, GY, GW]),
            StagedPass::DoubleBackward => (vec![X, Y, W, GZ, HX, HY, HW], vec![DX, DY, DW, DGZ]),
        }
    }
}

/// One `uvw` instruction as a weight-staged kernel reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StagedPath {
    /// Index of the instruction in the spec.
    pub path: u32,
    pub x_offset: u32,
    /// `2l+1` of the `x` block.
    pub x_len: u32,
    /// `U`.
    pub x_mul: u32,
    pub y_offset: u32,
    pub y_len: u32,
    /// `V`.
    pub y_mul: u32,
    pub z_offset: u32,
    pub z_len: u32,
    /// `W`.
    pub z_mul: u32,
    /// Offset of the path's `[U, V, W]` weights in a sample's weight row.
    pub w_offset: u32,
    /// Offset of the staged weights in workgroup memory.
    pub s_offset: u32,
    /// Elements between consecutive `(u, v)` rows of the staged weights (`≥ W`).
    pub s_stride: u32,
    /// This path's tasks are `first_task .. first_task + U·V` (task `first_task + u·V + v`).
    pub first_task: u32,
    /// Forward: offset of `A[u,v,·]` (`z_len` per task) in workgroup memory.
    /// Backward: offset of the `gx` partials (`x_len` per task).
    pub part_x: u32,
    /// Backward: offset of the `gy` partials (`y_len` per task); unused by the forward.
    pub part_y: u32,
    /// Double backward: offsets of `A = Σ c·x·y` and `Ah = Σ c·(hx·y + x·hy)` per task
    /// (`z_len` each).
    #[serde(default)]
    pub part_a: u32,
    #[serde(default)]
    pub part_ah: u32,
    pub terms: Vec<ChannelTerm>,
}

impl StagedPath {
    pub fn tasks(&self) -> u32 {
        self.x_mul * self.y_mul
    }
    /// Weights of the path (`U·V·W`).
    pub fn weights(&self) -> u32 {
        self.tasks() * self.z_mul
    }
}

/// A weight-staged kernel's work (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StagedWork {
    pub pass: StagedPass,
    pub paths: Vec<StagedPath>,
    /// `Σ_p U·V`.
    pub tasks: u32,
    /// Where `x`, `y` and (backward) `gz` of the sample sit in workgroup memory.
    pub x_stage: u32,
    pub y_stage: u32,
    pub gz_stage: u32,
    /// Double backward: `hx`, `hy`, and the `dgz` accumulated over the `w` phase.
    #[serde(default)]
    pub hx_stage: u32,
    #[serde(default)]
    pub hy_stage: u32,
    #[serde(default)]
    pub dgz_stage: u32,
    /// Elements of workgroup memory the kernel uses.
    pub shared_len: u32,
}

impl StagedWork {
    /// The distinct output blocks the paths write, in order of first appearance (a block's
    /// paths all share its offset, length and multiplicity).
    pub fn z_blocks(&self) -> Vec<&StagedPath> {
        let mut out: Vec<&StagedPath> = vec![];
        for p in &self.paths {
            if !out.iter().any(|q| q.z_offset == p.z_offset) {
                out.push(p);
            }
        }
        out
    }
}

/// Fewer weights per sample than this: the row kernels keep more samples per SM busy.
const MIN_WEIGHTS: usize = 256;
/// Static workgroup memory (CUDA's limit without the dynamic opt-in).
const MAX_SHARED_BYTES: u64 = 48 << 10;

/// The weight-staged kernel of `tp`, if it qualifies on these capabilities: every
/// instruction `uvw` and weighted, per-sample weights, and the sample's staged operands fit
/// workgroup memory.
pub(crate) fn staged_work(
    tp: &TensorProduct,
    pass: StagedPass,
    dtype: Dtype,
    caps: &Capabilities,
) -> Option<StagedWork> {
    if tp.spec.shared_weights || tp.weight_numel < MIN_WEIGHTS || tp.paths.is_empty() {
        return None;
    }
    let mut paths = vec![];
    let (mut stage, mut tasks) = (0u64, 0u64);
    for (n, p) in tp.paths.iter().enumerate() {
        let ins = &p.instruction;
        if ins.mode != ConnectionMode::Uvw || !ins.has_weight {
            return None;
        }
        let w_offset = p.weight_offset? as u32;
        if p.m1 == 0 || p.m2 == 0 || p.mo == 0 {
            continue;
        }
        let z_mul = p.mo as u32;
        // Odd row stride for the backward (one row per thread): conflict-free banks.
        let s_stride = match pass {
            StagedPass::Forward => z_mul,
            StagedPass::Backward | StagedPass::DoubleBackward => z_mul | 1,
        };
        let terms: Vec<ChannelTerm> =
            p.cg.iter()
                .map(|&(i, j, k, c)| ChannelTerm {
                    i,
                    j,
                    k,
                    coeff: c * p.coefficient,
                })
                .filter(|t| t.coeff != 0.0)
                .collect();
        let path = StagedPath {
            path: n as u32,
            x_offset: p.in1_offset as u32,
            x_len: 2 * p.l1 + 1,
            x_mul: p.m1 as u32,
            y_offset: p.in2_offset as u32,
            y_len: 2 * p.l2 + 1,
            y_mul: p.m2 as u32,
            z_offset: p.out_offset as u32,
            z_len: 2 * p.lo + 1,
            z_mul,
            w_offset,
            s_offset: stage as u32,
            s_stride,
            first_task: tasks as u32,
            part_x: 0,
            part_y: 0,
            part_a: 0,
            part_ah: 0,
            terms,
        };
        stage += path.tasks() as u64 * s_stride as u64;
        tasks += path.tasks() as u64;
        if stage > u32::MAX as u64 {
            return None;
        }
        paths.push(path);
    }
    if paths.is_empty() {
        return None;
    }
    // Workgroup memory: staged weights, x, y, (gz), then the per-task partials.
    let mut at = stage;
    let x_stage = at;
    at += tp.dim_in1 as u64;
    let y_stage = at;
    at += tp.dim_in2 as u64;
    let gz_stage = at;
    let bwd = pass != StagedPass::Forward;
    let dbl = pass == StagedPass::DoubleBackward;
    if bwd {
        at += tp.dim_out as u64;
    }
    let (mut hx_stage, mut hy_stage, mut dgz_stage) = (0, 0, 0);
    if dbl {
        hx_stage = at;
        at += tp.dim_in1 as u64;
        hy_stage = at;
        at += tp.dim_in2 as u64;
        dgz_stage = at;
        at += tp.dim_out as u64;
    }
    for p in &mut paths {
        let per_task = match pass {
            StagedPass::Forward => p.z_len,
            StagedPass::Backward | StagedPass::DoubleBackward => p.x_len,
        };
        p.part_x = at as u32;
        at += p.tasks() as u64 * per_task as u64;
    }
    if bwd {
        for p in &mut paths {
            p.part_y = at as u32;
            at += p.tasks() as u64 * p.y_len as u64;
        }
    }
    if dbl {
        for p in &mut paths {
            p.part_a = at as u32;
            at += p.tasks() as u64 * p.z_len as u64;
            p.part_ah = at as u32;
            at += p.tasks() as u64 * p.z_len as u64;
        }
    }
    let es = match dtype {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
    };
    if at * es > (caps.workgroup_memory_bytes as u64).min(MAX_SHARED_BYTES) {
        return None;
    }
    let (ins, outs) = pass.bindings();
    if (ins.len() + outs.len()) as u32 > caps.max_storage_buffers_per_stage {
        return None;
    }
    Some(StagedWork {
        pass,
        paths,
        tasks: tasks as u32,
        x_stage: x_stage as u32,
        y_stage: y_stage as u32,
        gz_stage: gz_stage as u32,
        hx_stage: hx_stage as u32,
        hy_stage: hy_stage as u32,
        dgz_stage: dgz_stage as u32,
        shared_len: at as u32,
    })
}

/// Invocations per workgroup (one workgroup per sample): enough for the widest phase, a
/// whole number of subgroups, at most 256 and the target's limits.
pub(crate) fn workgroup_size(tp: &TensorProduct, w: &StagedWork, caps: &Capabilities) -> u32 {
    let widest = (w.tasks as usize).max(tp.dim_out).max(tp.dim_in1) as u32;
    let cap = 256
        .min(caps.max_invocations_per_workgroup)
        .min(caps.max_workgroup_size_x);
    let mut wg = widest.next_power_of_two().clamp(32, 256).min(cap);
    if caps.subgroup_size > 0 && wg > caps.subgroup_size {
        wg -= wg % caps.subgroup_size;
    }
    wg.max(1)
}

type Bufs = std::collections::BTreeMap<Tensor, Vec<f64>>;

/// Runs sample `s` of a weight-staged kernel on the CPU in the GPU's order (see the module
/// docs). Outputs must be unwritten (NaN) before.
pub(crate) fn interpret_sample(
    plan: &crate::KernelPlan,
    w: &StagedWork,
    s: u64,
    bufs: &mut Bufs,
) -> Result<(), String> {
    use Tensor::*;
    let d = &plan.dims;
    let row = |t: Tensor, b: &Bufs| crate::channel::sample_row(plan, t, s, b);
    let get = |v: &[f64], i: u32| -> Result<f64, String> {
        v.get(i as usize)
            .copied()
            .ok_or_else(|| format!("index {i} out of bounds"))
    };
    let (x, y, wt) = (row(X, bufs)?, row(Y, bufs)?, row(W, bufs)?);
    // A[u,v,k] of a path, in task order.
    let a_of = |p: &StagedPath| -> Result<Vec<Vec<f64>>, String> {
        let mut out = vec![];
        for u in 0..p.x_mul {
            for v in 0..p.y_mul {
                let mut a = vec![0.0; p.z_len as usize];
                for t in &p.terms {
                    a[t.k as usize] += t.coeff
                        * get(&x, p.x_offset + u * p.x_len + t.i)?
                        * get(&y, p.y_offset + v * p.y_len + t.j)?;
                }
                out.push(a);
            }
        }
        Ok(out)
    };
    match w.pass {
        StagedPass::Forward => {
            // One chain per output element: the paths into its block in order, their tasks
            // in order (elements no path reaches are zero).
            let mut z = vec![0.0; d.dim_out as usize];
            let a: Vec<Vec<Vec<f64>>> = w.paths.iter().map(a_of).collect::<Result<_, _>>()?;
            for block in w.z_blocks() {
                let (off, len, mul) = (block.z_offset, block.z_len, block.z_mul);
                for e in 0..mul * len {
                    let (wi, k) = (e / len, e % len);
                    let mut acc = 0.0;
                    for (p, ap) in w.paths.iter().zip(&a).filter(|(p, _)| p.z_offset == off) {
                        for (task, at) in ap.iter().enumerate() {
                            acc +=
                                get(&wt, p.w_offset + task as u32 * p.z_mul + wi)? * at[k as usize];
                        }
                    }
                    *z.get_mut((off + e) as usize)
                        .ok_or("z index out of range")? = acc;
                }
            }
            crate::channel::put_row(plan, Z, s, &z, bufs)
        }
        StagedPass::DoubleBackward => {
            let (gz, hx, hy, hw) = (
                row(GZ, bufs)?,
                row(HX, bufs)?,
                row(HY, bufs)?,
                row(HW, bufs)?,
            );
            let mut dgz = vec![0.0; d.dim_out as usize];
            let mut dw = vec![f64::NAN; d.weight_numel as usize];
            let mut dx = vec![0.0; d.dim_in1 as usize];
            let mut dy = vec![0.0; d.dim_in2 as usize];
            for p in &w.paths {
                for u in 0..p.x_mul {
                    for v in 0..p.y_mul {
                        let task = u * p.y_mul + v;
                        let (xb, yb) = (p.x_offset + u * p.x_len, p.y_offset + v * p.y_len);
                        let (mut a, mut ah) =
                            (vec![0.0; p.z_len as usize], vec![0.0; p.z_len as usize]);
                        for t in &p.terms {
                            let (xi, yj) = (get(&x, xb + t.i)?, get(&y, yb + t.j)?);
                            let (hxi, hyj) = (get(&hx, xb + t.i)?, get(&hy, yb + t.j)?);
                            a[t.k as usize] += t.coeff * xi * yj;
                            ah[t.k as usize] += t.coeff * (hxi * yj + xi * hyj);
                        }
                        let (mut tk, mut th) =
                            (vec![0.0; p.z_len as usize], vec![0.0; p.z_len as usize]);
                        for wi in 0..p.z_mul {
                            let widx = p.w_offset + task * p.z_mul + wi;
                            let (wv, hwv) = (get(&wt, widx)?, get(&hw, widx)?);
                            let mut g = 0.0;
                            for k in 0..p.z_len {
                                let e = p.z_offset + wi * p.z_len + k;
                                let gzk = get(&gz, e)?;
                                tk[k as usize] += wv * gzk;
                                th[k as usize] += hwv * gzk;
                                g += ah[k as usize] * gzk;
                                dgz[e as usize] += wv * ah[k as usize] + hwv * a[k as usize];
                            }
                            let slot = dw.get_mut(widx as usize).ok_or("dw out of range")?;
                            if !slot.is_nan() {
                                return Err(format!("DW[{widx}] written twice"));
                            }
                            *slot = g;
                        }
                        for t in &p.terms {
                            let (xi, yj) = (get(&x, xb + t.i)?, get(&y, yb + t.j)?);
                            let (hxi, hyj) = (get(&hx, xb + t.i)?, get(&hy, yb + t.j)?);
                            let (tk, th) = (tk[t.k as usize], th[t.k as usize]);
                            dx[(xb + t.i) as usize] += t.coeff * (hyj * tk + yj * th);
                            dy[(yb + t.j) as usize] += t.coeff * (hxi * tk + xi * th);
                        }
                    }
                }
            }
            crate::channel::put_row(plan, DX, s, &dx, bufs)?;
            crate::channel::put_row(plan, DY, s, &dy, bufs)?;
            crate::channel::put_row(plan, DW, s, &dw, bufs)?;
            crate::channel::put_row(plan, DGZ, s, &dgz, bufs)
        }
        StagedPass::Backward => {
            let gz = row(GZ, bufs)?;
            let mut gw = vec![f64::NAN; d.weight_numel as usize];
            let mut gx = vec![0.0; d.dim_in1 as usize];
            let mut gy = vec![0.0; d.dim_in2 as usize];
            for p in &w.paths {
                let a = a_of(p)?;
                for u in 0..p.x_mul {
                    for v in 0..p.y_mul {
                        let task = u * p.y_mul + v;
                        let at = &a[task as usize];
                        let mut tk = vec![0.0; p.z_len as usize];
                        for wi in 0..p.z_mul {
                            let widx = p.w_offset + task * p.z_mul + wi;
                            let wv = get(&wt, widx)?;
                            let mut g = 0.0;
                            for k in 0..p.z_len {
                                let gzk = get(&gz, p.z_offset + wi * p.z_len + k)?;
                                g += at[k as usize] * gzk;
                                tk[k as usize] += wv * gzk;
                            }
                            let slot = gw.get_mut(widx as usize).ok_or("gw out of range")?;
                            if !slot.is_nan() {
                                return Err(format!("GW[{widx}] written twice"));
                            }
                            *slot = g;
                        }
                        for t in &p.terms {
                            let yj = get(&y, p.y_offset + v * p.y_len + t.j)?;
                            let xi = get(&x, p.x_offset + u * p.x_len + t.i)?;
                            gx[(p.x_offset + u * p.x_len + t.i) as usize] +=
                                t.coeff * yj * tk[t.k as usize];
                            gy[(p.y_offset + v * p.y_len + t.j) as usize] +=
                                t.coeff * xi * tk[t.k as usize];
                        }
                    }
                }
            }
            crate::channel::put_row(plan, GX, s, &gx, bufs)?;
            crate::channel::put_row(plan, GY, s, &gy, bufs)?;
            crate::channel::put_row(plan, GW, s, &gw, bufs)
        }
    }
}
