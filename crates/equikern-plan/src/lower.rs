//! Lowering: a validated [`TensorProduct`] plus [`Capabilities`] → [`KernelPlan`].
//!
//! Every instruction is a set of index tuples `(x_row, y_row, z_row, w_idx)` (see the crate
//! docs). A row kernel writing slot `S` gathers, for each row of `S`, the tuples with that row;
//! [`gather`] gives their closed forms (count and the other slots' rows as [`Ix`] of `r`, `t`).

use crate::{
    Addressing, Capabilities, Contribution, Dims, Direction, Dtype, Ix, Kernel, KernelPlan,
    Operand, PlanError, SampleMode, Segment, Tensor, Term, Work,
};
use equikern_core::{ConnectionMode, Path, TensorProduct};

/// The four slots of the trilinear form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    X,
    Y,
    Z,
    W,
}

/// Which tensor fills each slot for one contribution (the output slot names the output).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Binding {
    pub x: Tensor,
    pub y: Tensor,
    pub z: Tensor,
    pub w: Tensor,
}

impl Binding {
    fn get(&self, s: Slot) -> Tensor {
        match s {
            Slot::X => self.x,
            Slot::Y => self.y,
            Slot::Z => self.z,
            Slot::W => self.w,
        }
    }
}

/// Closed-form gather of one path for one output slot.
#[derive(Clone, Debug)]
pub(crate) struct Gather {
    pub count: Ix,
    /// Row (or weight index) of each slot other than the output slot.
    pub x: Ix,
    pub y: Ix,
    pub z: Ix,
    pub w: Ix,
}

/// Dedup store for `Ix::Table` contents.
#[derive(Default)]
pub(crate) struct Tables(pub Vec<Vec<u32>>);

impl Tables {
    fn id(&mut self, t: Vec<u32>) -> u32 {
        if let Some(i) = self.0.iter().position(|e| *e == t) {
            return i as u32;
        }
        self.0.push(t);
        (self.0.len() - 1) as u32
    }
    /// Tables of `u_q`, `v_q` for the pairs `u < v < m` in row-major order.
    fn triu(&mut self, m: u32) -> (u32, u32) {
        let (mut us, mut vs) = (vec![], vec![]);
        for u in 0..m {
            for v in u + 1..m {
                us.push(u);
                vs.push(v);
            }
        }
        (self.id(us), self.id(vs))
    }
}

use Ix::{C, R, T};
fn add(a: Ix, b: Ix) -> Ix {
    Ix::add(a, b)
}
fn sub(a: Ix, b: Ix) -> Ix {
    Ix::sub(a, b)
}
fn mul(a: Ix, b: Ix) -> Ix {
    Ix::mul(a, b)
}
fn div(a: Ix, b: Ix) -> Ix {
    Ix::div(a, b)
}
fn rem(a: Ix, b: Ix) -> Ix {
    Ix::rem(a, b)
}
/// Index of the pair `(u, v)`, `u < v < m`, in triu(m, offset 1) row-major:
/// `u*m - u(u+1)/2 + v - u - 1`, ordered so unsigned evaluation never underflows.
fn triu_q(u: Ix, v: Ix, m: u32) -> Ix {
    let base = sub(
        mul(u.clone(), C(m)),
        div(mul(u.clone(), add(u.clone(), C(1))), C(2)),
    );
    sub(add(base, v), add(u, C(1)))
}

/// Number of tuples of a path (= ∏ path_shape for every mode).
pub(crate) fn num_tuples(p: &Path) -> u64 {
    p.path_shape.iter().map(|&d| d as u64).product()
}

/// Rows of slot `s` for path `p` (weight slot: the instruction's weight count).
pub(crate) fn slot_rows(p: &Path, s: Slot) -> u32 {
    match s {
        Slot::X => p.m1 as u32,
        Slot::Y => p.m2 as u32,
        Slot::Z => p.mo as u32,
        Slot::W => num_tuples(p) as u32,
    }
}

/// The gather of path `p`'s tuples onto rows of slot `out` (entries for `out` itself are `R`).
pub(crate) fn gather(p: &Path, out: Slot, tables: &mut Tables) -> Gather {
    let (m1, m2, mo) = (p.m1 as u32, p.m2 as u32, p.mo as u32);
    let g = |count: Ix, x: Ix, y: Ix, z: Ix, w: Ix| Gather { count, x, y, z, w };
    use ConnectionMode::*;
    use Slot as S;
    match (p.instruction.mode, out) {
        // (u, v, w, (u*m2+v)*mo+w)
        (Uvw, S::Z) => g(
            C(m1 * m2),
            div(T, C(m2)),
            rem(T, C(m2)),
            R,
            add(mul(T, C(mo)), R),
        ),
        (Uvw, S::X) => g(
            C(m2 * mo),
            R,
            div(T, C(mo)),
            rem(T, C(mo)),
            add(mul(R, C(m2 * mo)), T),
        ),
        (Uvw, S::Y) => g(
            C(m1 * mo),
            div(T, C(mo)),
            R,
            rem(T, C(mo)),
            add(
                add(mul(div(T, C(mo)), C(m2 * mo)), mul(R, C(mo))),
                rem(T, C(mo)),
            ),
        ),
        (Uvw, S::W) => g(
            C(1),
            div(R, C(m2 * mo)),
            rem(div(R, C(mo)), C(m2)),
            rem(R, C(mo)),
            R,
        ),
        // (u, v, u, u*m2+v)
        (Uvu, S::Z) => g(C(m2), R, T, R, add(mul(R, C(m2)), T)),
        (Uvu, S::X) => g(C(m2), R, T, R, add(mul(R, C(m2)), T)),
        (Uvu, S::Y) => g(C(m1), T, R, T, add(mul(T, C(m2)), R)),
        (Uvu, S::W) => g(C(1), div(R, C(m2)), rem(R, C(m2)), div(R, C(m2)), R),
        // (u, v, v, u*m2+v)
        (Uvv, S::Z) => g(C(m1), T, R, R, add(mul(T, C(m2)), R)),
        (Uvv, S::X) => g(C(m2), R, T, T, add(mul(R, C(m2)), T)),
        (Uvv, S::Y) => g(C(m1), T, R, R, add(mul(T, C(m2)), R)),
        (Uvv, S::W) => g(C(1), div(R, C(m2)), rem(R, C(m2)), rem(R, C(m2)), R),
        // (u, u, w, u*mo+w)
        (Uuw, S::Z) => g(C(m1), T, T, R, add(mul(T, C(mo)), R)),
        (Uuw, S::X) => g(C(mo), R, R, T, add(mul(R, C(mo)), T)),
        (Uuw, S::Y) => g(C(mo), R, R, T, add(mul(R, C(mo)), T)),
        (Uuw, S::W) => g(C(1), div(R, C(mo)), div(R, C(mo)), rem(R, C(mo)), R),
        // (u, u, u, u)
        (Uuu, _) => g(C(1), R, R, R, R),
        // (u, v, u*m2+v, u*m2+v)
        (Uvuv, S::Z) | (Uvuv, S::W) => g(C(1), div(R, C(m2)), rem(R, C(m2)), R, R),
        (Uvuv, S::X) => {
            let q = add(mul(R, C(m2)), T);
            g(C(m2), R, T, q.clone(), q)
        }
        (Uvuv, S::Y) => {
            let q = add(mul(T, C(m2)), R);
            g(C(m1), T, R, q.clone(), q)
        }
        // q-th pair (u_q < v_q): (u_q, v_q, q, q)
        (UvuLtV, S::Z) | (UvuLtV, S::W) => {
            let (tu, tv) = tables.triu(m1);
            g(
                C(1),
                Ix::Table(tu, Box::new(R)),
                Ix::Table(tv, Box::new(R)),
                R,
                R,
            )
        }
        (UvuLtV, S::X) => {
            // row u: v = u+1+t for t < m-1-u; q(u, u+1+t) = u*m - u(u+1)/2 + t
            let q = add(sub(mul(R, C(m1)), div(mul(R, add(R, C(1))), C(2))), T);
            g(
                sub(C(m1.saturating_sub(1)), R),
                R,
                add(add(R, C(1)), T),
                q.clone(),
                q,
            )
        }
        (UvuLtV, S::Y) => {
            // row v: u = t for t < v
            let q = triu_q(T, R, m1);
            g(R, T, R, q.clone(), q)
        }
        // (u_q, v_q, w, q*mo+w)
        (ULtVw, S::Z) => {
            let (tu, tv) = tables.triu(m1);
            let np = (m1 as u64 * m1.saturating_sub(1) as u64 / 2) as u32;
            g(
                C(np),
                Ix::Table(tu, Box::new(T)),
                Ix::Table(tv, Box::new(T)),
                R,
                add(mul(T, C(mo)), R),
            )
        }
        (ULtVw, S::X) => {
            // t = a*mo + w, v = u+1+a
            let a = div(T, C(mo));
            let q = add(
                sub(mul(R, C(m1)), div(mul(R, add(R, C(1))), C(2))),
                a.clone(),
            );
            g(
                mul(sub(C(m1.saturating_sub(1)), R), C(mo)),
                R,
                add(add(R, C(1)), a),
                rem(T, C(mo)),
                add(mul(q, C(mo)), rem(T, C(mo))),
            )
        }
        (ULtVw, S::Y) => {
            // t = u*mo + w, u < v
            let u = div(T, C(mo));
            g(
                mul(R, C(mo)),
                u.clone(),
                R,
                rem(T, C(mo)),
                add(mul(triu_q(u, R, m1), C(mo)), rem(T, C(mo))),
            )
        }
        (ULtVw, S::W) => {
            let (tu, tv) = tables.triu(m1);
            let q = div(R, C(mo));
            g(
                C(1),
                Ix::Table(tu, Box::new(q.clone())),
                Ix::Table(tv, Box::new(q)),
                rem(R, C(mo)),
                R,
            )
        }
    }
}

fn row_len(p: &Path, s: Slot) -> u32 {
    match s {
        Slot::X => 2 * p.l1 + 1,
        Slot::Y => 2 * p.l2 + 1,
        Slot::Z => 2 * p.lo + 1,
        Slot::W => 1,
    }
}

fn slot_offset(p: &Path, s: Slot) -> u32 {
    match s {
        Slot::X => p.in1_offset as u32,
        Slot::Y => p.in2_offset as u32,
        Slot::Z => p.out_offset as u32,
        Slot::W => p.weight_offset.unwrap_or(0) as u32,
    }
}

/// Operand slots, in contribution order, for a given output slot.
fn operand_slots(out: Slot) -> [Slot; 3] {
    match out {
        Slot::Z => [Slot::X, Slot::Y, Slot::W],
        Slot::X => [Slot::Z, Slot::Y, Slot::W],
        Slot::Y => [Slot::X, Slot::Z, Slot::W],
        Slot::W => [Slot::X, Slot::Y, Slot::Z],
    }
}

fn addressing(t: Tensor, dims: &Dims) -> Addressing {
    if dims.per_sample_len(t) == 0 {
        Addressing::Shared
    } else {
        Addressing::PerSample
    }
}

/// One contribution of path `n` to rows of slot `out`; `None` if it has no tuples or no
/// nonzero term.
fn contribution(
    n: usize,
    p: &Path,
    out: Slot,
    b: &Binding,
    dims: &Dims,
    tables: &mut Tables,
) -> Option<Contribution> {
    let weighted = p.weight_offset.is_some();
    if num_tuples(p) == 0 || (out == Slot::W && !weighted) {
        return None;
    }
    let gth = gather(p, out, tables);
    let rmax = slot_rows(p, out).checked_sub(1)? as u64;
    let count_max = (0..=rmax as u32)
        .map(|r| gth.count.eval(r, 0, &tables.0))
        .max()
        .unwrap_or(0);
    if count_max == 0 {
        return None;
    }
    let tmax = count_max as u64 - 1;
    let t_subst = (count_max == 1).then_some(0);
    let count = gth.count.simplify(rmax, tmax, None, &tables.0);
    let mut operands = vec![];
    let mut slots = vec![];
    for s in operand_slots(out) {
        if s == Slot::W && !weighted {
            continue;
        }
        let row = match s {
            Slot::X => &gth.x,
            Slot::Y => &gth.y,
            Slot::Z => &gth.z,
            Slot::W => &gth.w,
        };
        let tensor = b.get(s);
        operands.push(Operand {
            tensor,
            addressing: addressing(tensor, dims),
            offset: slot_offset(p, s),
            row_len: row_len(p, s),
            row: row.simplify(rmax, tmax, t_subst, &tables.0),
        });
        slots.push(s);
    }
    let comp = |s: Slot, (i, j, k): (u32, u32, u32)| match s {
        Slot::X => i,
        Slot::Y => j,
        Slot::Z => k,
        Slot::W => 0,
    };
    let terms: Vec<Term> =
        p.cg.iter()
            .map(|&(i, j, k, c)| Term {
                out: comp(out, (i, j, k)),
                comps: slots.iter().map(|&s| comp(s, (i, j, k))).collect(),
                coeff: c * p.coefficient,
            })
            .filter(|t| t.coeff != 0.0)
            .collect();
    if terms.is_empty() {
        return None;
    }
    let scalar_factor = slots.iter().position(|&s| s == Slot::W).map(|i| i as u32);
    Some(Contribution {
        path: n as u32,
        count,
        operands,
        scalar_factor,
        terms,
    })
}

/// One output tensor of a kernel: the slot it is, and the operand sets summed into it.
#[derive(Clone, Debug)]
pub(crate) struct OutGroup {
    pub slot: Slot,
    pub tensor: Tensor,
    pub bindings: Vec<Binding>,
}

/// Segments of one output group, starting at row `first_row`.
fn segments(
    tp: &TensorProduct,
    g: &OutGroup,
    first_row: &mut u32,
    dims: &Dims,
    tables: &mut Tables,
) -> Result<Vec<Segment>, PlanError> {
    let mut segs = vec![];
    let mut push = |segs: &mut Vec<Segment>, out_offset: usize, rows: usize, row_len: u32| {
        let seg = Segment {
            out: g.tensor,
            out_offset: out_offset as u32,
            first_row: *first_row,
            rows: rows as u32,
            row_len,
            contributions: vec![],
        };
        *first_row = first_row
            .checked_add(rows as u32)
            .ok_or(PlanError::TooLarge("rows per sample exceed u32"))?;
        segs.push(seg);
        Ok::<usize, PlanError>(segs.len() - 1)
    };
    let add_contribs = |seg: &mut Segment, n: usize, p: &Path, tables: &mut Tables| {
        for b in &g.bindings {
            // A weight tangent only reaches weighted paths.
            if matches!(b.w, Tensor::HW) && p.weight_offset.is_none() && g.slot != Slot::W {
                continue;
            }
            if let Some(c) = contribution(n, p, g.slot, b, dims, tables) {
                seg.contributions.push(c);
            }
        }
    };
    match g.slot {
        Slot::X | Slot::Y | Slot::Z => {
            let irreps = match g.slot {
                Slot::X => &tp.spec.irreps_in1,
                Slot::Y => &tp.spec.irreps_in2,
                _ => &tp.spec.irreps_out,
            };
            for (bi, (mi, range)) in irreps.0.iter().zip(irreps.slices()).enumerate() {
                if mi.mul == 0 {
                    continue;
                }
                let si = push(&mut segs, range.start, mi.mul, mi.ir.dim() as u32)?;
                for (n, p) in tp.paths.iter().enumerate() {
                    let i = p.instruction;
                    let blk = match g.slot {
                        Slot::X => i.i_in1,
                        Slot::Y => i.i_in2,
                        _ => i.i_out,
                    };
                    if blk == bi {
                        add_contribs(&mut segs[si], n, p, tables);
                    }
                }
            }
        }
        Slot::W => {
            for (n, p) in tp.paths.iter().enumerate() {
                let (Some(off), nt) = (p.weight_offset, num_tuples(p)) else {
                    continue;
                };
                if nt == 0 {
                    continue;
                }
                let si = push(&mut segs, off, nt as usize, 1)?;
                add_contribs(&mut segs[si], n, p, tables);
            }
        }
    }
    Ok(segs)
}

pub(crate) fn elem_size(d: Dtype) -> u64 {
    match d {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
    }
}

/// Workgroup size: at most 128, within the device limits, a multiple of the subgroup width
/// when one is known and fits.
pub(crate) fn workgroup_size(caps: &Capabilities) -> Result<u32, PlanError> {
    let mut wg = 128
        .min(caps.max_invocations_per_workgroup)
        .min(caps.max_workgroup_size_x);
    if caps.subgroup_size > 0 && wg >= caps.subgroup_size {
        wg -= wg % caps.subgroup_size;
    }
    if wg == 0 {
        return Err(PlanError::Caps("workgroup size limits are zero".into()));
    }
    Ok(wg)
}

/// Samples per chunk for shared-weight gradients: bigger weight vectors give more rows per
/// chunk, so chunks can be longer (fewer partial sums) while keeping ~10^5 invocations at
/// batch 5·10^4. Power of two in [16, 256].
pub(crate) fn chunk_size(weight_numel: u32) -> u32 {
    (weight_numel.max(1).next_power_of_two() / 4).clamp(16, 256)
}

pub(crate) struct KSpec {
    pub name: String,
    pub mode: SampleMode,
    pub groups: Vec<OutGroup>,
}

/// Adjusts a freshly built kernel (the convolution re-addresses operands and adds index
/// bindings); the identity for tensor products.
pub(crate) type Fixup<'a> = &'a dyn Fn(&mut Kernel);

fn build_kernel(
    tp: &TensorProduct,
    ks: &KSpec,
    dims: &Dims,
    wg: u32,
    tables: &mut Tables,
    fix: Fixup,
) -> Result<Kernel, PlanError> {
    let mut first_row = 0;
    let mut segs = vec![];
    for g in &ks.groups {
        segs.extend(segments(tp, g, &mut first_row, dims, tables)?);
    }
    // A kernel binds exactly the tensors its contributions read, in `Tensor` order.
    let mut inputs: Vec<Tensor> = segs
        .iter()
        .flat_map(|s| s.contributions.iter())
        .flat_map(|c| c.operands.iter().map(|o| o.tensor))
        .collect();
    inputs.sort();
    inputs.dedup();
    let mut k = Kernel {
        name: ks.name.clone(),
        inputs,
        outputs: ks.groups.iter().map(|g| g.tensor).collect(),
        workgroup_size: wg,
        work: Work::Rows {
            sample_mode: ks.mode,
            rows_per_sample: first_row,
            segments: segs,
        },
    };
    fix(&mut k);
    Ok(k)
}

/// Builds the kernels of `specs`; a kernel binding more than the target allows has its output
/// tensors packed, in order, greedily into kernels that fit; errors if one output alone is
/// still too many.
pub(crate) fn pack_kernels(
    tp: &TensorProduct,
    specs: Vec<KSpec>,
    dims: &Dims,
    wg: u32,
    caps: &Capabilities,
    tables: &mut Tables,
    fix: Fixup,
) -> Result<Vec<Kernel>, PlanError> {
    let mut kernels = vec![];
    for spec in specs {
        let k = build_kernel(tp, &spec, dims, wg, tables, fix)?;
        let bound = (k.inputs.len() + k.outputs.len()) as u32;
        if bound <= caps.max_storage_buffers_per_stage || spec.groups.len() == 1 {
            kernels.push(k);
            continue;
        }
        // Too many bindings: pack output tensors, in order, greedily into kernels that fit.
        let named = |groups: Vec<OutGroup>| {
            let tag: String = groups
                .iter()
                .map(|g| format!("{:?}", g.tensor).to_lowercase())
                .collect();
            KSpec {
                name: format!("{}_{tag}", spec.name),
                mode: spec.mode,
                groups,
            }
        };
        let mut cur: Vec<OutGroup> = vec![];
        for g in spec.groups {
            let mut trial = cur.clone();
            trial.push(g.clone());
            let k = build_kernel(tp, &named(trial.clone()), dims, wg, tables, fix)?;
            if cur.is_empty()
                || (k.inputs.len() + k.outputs.len()) as u32 <= caps.max_storage_buffers_per_stage
            {
                cur = trial;
            } else {
                kernels.push(build_kernel(tp, &named(cur), dims, wg, tables, fix)?);
                cur = vec![g];
            }
        }
        kernels.push(build_kernel(tp, &named(cur), dims, wg, tables, fix)?);
    }
    for k in &kernels {
        let bound = (k.inputs.len() + k.outputs.len()) as u32;
        if bound > caps.max_storage_buffers_per_stage {
            return Err(PlanError::TooManyBindings {
                kernel: k.name.clone(),
                needed: bound,
                max: caps.max_storage_buffers_per_stage,
            });
        }
    }
    Ok(kernels)
}

/// Lower one direction of `tp` for a target with capabilities `caps`.
/// Lowering choices that are not target capabilities (benchmarks compare both sides).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LowerOptions {
    /// Use the fused kernel shapes where the product qualifies: channel-fused
    /// ([`crate::channel`]) and weight-staged ([`crate::staged`]); off = row kernels only.
    pub channel_fusion: bool,
    /// Convolution forward only: the register budget of one invocation's output
    /// accumulators, which groups the output blocks ([`crate::ChannelConv::groups`]);
    /// `None`: [`crate::channel::CONV_FORWARD_REGS`]. `Some(u32::MAX)`: one group.
    pub conv_forward_regs: Option<u32>,
    /// Convolution backward with `x` blocks of different multiplicities: lanes as
    /// balanced `(x block, row, slice of its paths)` groups ([`crate::ChannelConv::lanes`]);
    /// off (the default): one lane per channel `u < M`. Off because the H100 measured the
    /// groups slower on SevenNet-0's convolution (917,504 edges: 10.90 ms against 6.41 ms;
    /// 114,688: 1.40 against 0.85) although the cost model (instruction counts, no
    /// barriers or workgroup-memory traffic) estimated 2.1× faster: every edge's `gy` goes
    /// through workgroup memory from 384 lanes with 3 barriers instead of 2.
    pub conv_backward_lanes: bool,
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions {
            channel_fusion: true,
            conv_forward_regs: None,
            conv_backward_lanes: false,
        }
    }
}

pub fn lower(
    tp: &TensorProduct,
    direction: Direction,
    dtype: Dtype,
    caps: &Capabilities,
) -> Result<KernelPlan, PlanError> {
    lower_with(tp, direction, dtype, caps, LowerOptions::default())
}

pub fn lower_with(
    tp: &TensorProduct,
    direction: Direction,
    dtype: Dtype,
    caps: &Capabilities,
    opts: LowerOptions,
) -> Result<KernelPlan, PlanError> {
    use Tensor::*;
    if dtype == Dtype::F64 && !caps.f64 {
        return Err(PlanError::Caps(
            "f64 requested but the target lacks f64".into(),
        ));
    }
    for (what, v) in [
        ("dim_in1", tp.dim_in1),
        ("dim_in2", tp.dim_in2),
        ("dim_out", tp.dim_out),
        ("weight_numel", tp.weight_numel),
    ] {
        if v > u32::MAX as usize {
            return Err(PlanError::TooLarge(what));
        }
    }
    let dims = Dims::of(tp);
    let wg = workgroup_size(caps)?;
    let weighted = tp.weight_numel > 0;
    let shared = tp.spec.shared_weights;
    let b = |x, y, z, w| Binding { x, y, z, w };
    let grp = |slot, tensor, bindings: Vec<Binding>| OutGroup {
        slot,
        tensor,
        bindings,
    };
    let spc = chunk_size(dims.weight_numel);
    let channel = if opts.channel_fusion {
        use crate::channel::ChannelPass as P;
        let pass = match direction {
            Direction::Forward => P::Forward,
            Direction::Backward => P::Backward,
            Direction::DoubleBackward => P::DoubleBackward,
        };
        crate::channel::channel_work(tp, pass, dtype, caps, wg)
    } else {
        None
    };
    // Per-sample-weight `uvw` products: the weight row staged through workgroup memory.
    let staged = match (opts.channel_fusion && channel.is_none(), direction) {
        (true, Direction::Forward) => {
            crate::staged::staged_work(tp, crate::StagedPass::Forward, dtype, caps)
        }
        (true, Direction::Backward) => {
            crate::staged::staged_work(tp, crate::StagedPass::Backward, dtype, caps)
        }
        (true, Direction::DoubleBackward) => {
            crate::staged::staged_work(tp, crate::StagedPass::DoubleBackward, dtype, caps)
        }
        _ => None,
    };
    let chunk = SampleMode::Chunk {
        samples_per_chunk: spc,
    };
    let ks = |name: &str, mode, groups| KSpec {
        name: name.into(),
        mode,
        groups,
    };
    // (row kernels, whether a reduction of WPartial into the given tensor follows)
    let (specs, reduce): (Vec<KSpec>, Option<Tensor>) = match direction {
        Direction::Forward if channel.is_some() || staged.is_some() => (vec![], None),
        Direction::Backward | Direction::DoubleBackward if staged.is_some() => (vec![], None),
        Direction::Forward => (
            vec![ks(
                "forward",
                SampleMode::PerSample,
                vec![grp(Slot::Z, Z, vec![b(X, Y, Z, W)])],
            )],
            None,
        ),
        // One kernel per output tensor: rows of different outputs loop over very different
        // channel counts (a GY row of a mul-1 `y` block sums over every `u` of every path
        // while GX/GW rows loop once), and a warp holding both waits for the longest lane.
        Direction::Backward if channel.is_some() => {
            let mut v = vec![];
            let mut red = None;
            if weighted && shared {
                let gw = grp(Slot::W, WPartial, vec![b(X, Y, GZ, W)]);
                v.push(ks("backward_gw_chunks", chunk, vec![gw]));
                red = Some(GW);
            }
            (v, red)
        }
        Direction::Backward => {
            let gx = grp(Slot::X, GX, vec![b(X, Y, GZ, W)]);
            let gy = grp(Slot::Y, GY, vec![b(X, Y, GZ, W)]);
            let mut v = vec![
                ks("backward_gx", SampleMode::PerSample, vec![gx]),
                ks("backward_gy", SampleMode::PerSample, vec![gy]),
            ];
            let mut red = None;
            if weighted && !shared {
                let gw = grp(Slot::W, GW, vec![b(X, Y, GZ, W)]);
                v.push(ks("backward_gw", SampleMode::PerSample, vec![gw]));
            } else if weighted {
                let gw = grp(Slot::W, WPartial, vec![b(X, Y, GZ, W)]);
                v.push(ks("backward_gw_chunks", chunk, vec![gw]));
                red = Some(GW);
            }
            (v, red)
        }
        Direction::DoubleBackward if channel.is_some() => {
            let mut v = vec![];
            let mut red = None;
            if weighted && shared {
                let dw = vec![b(HX, Y, GZ, DW), b(X, HY, GZ, DW)];
                v.push(ks(
                    "double_backward_dw_chunks",
                    chunk,
                    vec![grp(Slot::W, WPartial, dw)],
                ));
                red = Some(DW);
            }
            (v, red)
        }
        Direction::DoubleBackward => {
            let mut dgz = vec![b(HX, Y, DGZ, W), b(X, HY, DGZ, W)];
            let mut dx = vec![b(DX, HY, GZ, W)];
            let mut dy = vec![b(HX, DY, GZ, W)];
            if weighted {
                dgz.push(b(X, Y, DGZ, HW));
                dx.push(b(DX, Y, GZ, HW));
                dy.push(b(X, DY, GZ, HW));
            }
            let dw = vec![b(HX, Y, GZ, DW), b(X, HY, GZ, DW)];
            let pm = SampleMode::PerSample;
            let mut v = vec![
                ks("double_backward_dgz", pm, vec![grp(Slot::Z, DGZ, dgz)]),
                ks("double_backward_dx", pm, vec![grp(Slot::X, DX, dx)]),
                ks("double_backward_dy", pm, vec![grp(Slot::Y, DY, dy)]),
            ];
            let mut red = None;
            if weighted && !shared {
                v.push(ks("double_backward_dw", pm, vec![grp(Slot::W, DW, dw)]));
            } else if weighted {
                v.push(ks(
                    "double_backward_dw_chunks",
                    chunk,
                    vec![grp(Slot::W, WPartial, dw)],
                ));
                red = Some(DW);
            }
            (v, red)
        }
    };

    let mut tables = Tables::default();
    let mut kernels = vec![];
    if let Some(c) = channel {
        use crate::channel::ChannelPass as P;
        let (inputs, outputs) = c.pass.bindings(weighted, c.write_gw);
        kernels.push(Kernel {
            name: match c.pass {
                P::Forward => "forward_fused",
                P::Backward => "backward_fused",
                P::DoubleBackward => "double_backward_fused",
            }
            .into(),
            inputs,
            outputs,
            workgroup_size: c.samples_per_group * c.channels,
            work: Work::Channels(c),
        });
    }
    if let Some(w) = staged {
        let (inputs, outputs) = w.pass.bindings();
        kernels.push(Kernel {
            name: match w.pass {
                crate::StagedPass::Forward => "forward_staged",
                crate::StagedPass::Backward => "backward_staged",
                crate::StagedPass::DoubleBackward => "double_backward_staged",
            }
            .into(),
            inputs,
            outputs,
            workgroup_size: crate::staged::workgroup_size(tp, &w, caps),
            work: Work::Staged(w),
        });
    }
    for spec in specs {
        kernels.push(build_kernel(tp, &spec, &dims, wg, &mut tables, &|_| {})?);
    }
    let mut dims = dims;
    if direction != Direction::Forward {
        // The typical row: the forward's median row (the forward runs near bandwidth).
        let mut ft = Tables(tables.0.clone());
        let fwd = ks(
            "forward",
            SampleMode::PerSample,
            vec![grp(Slot::Z, Z, vec![b(X, Y, Z, W)])],
        );
        let fk = build_kernel(tp, &fwd, &dims, wg, &mut ft, &|_| {})?;
        let mut works = vec![];
        if let Work::Rows { segments, .. } = &fk.work {
            for seg in segments {
                works.extend((0..seg.rows).map(|r| row_work(seg, r, &ft.0)));
            }
        }
        works.sort_unstable();
        let typical = works.get(works.len() / 2).copied().unwrap_or(0).max(1);
        kernels = split_long_gathers(kernels, caps, &tables.0, typical, &mut dims)?;
    }
    for k in &kernels {
        let bound = (k.inputs.len() + k.outputs.len()) as u32;
        if bound > caps.max_storage_buffers_per_stage {
            return Err(PlanError::TooManyBindings {
                kernel: k.name.clone(),
                needed: bound,
                max: caps.max_storage_buffers_per_stage,
            });
        }
    }
    if let Some(out) = reduce {
        kernels.push(reduce_kernel(out, &dims, wg, caps)?);
    }
    let plan = KernelPlan {
        direction,
        dtype,
        dims,
        caps: *caps,
        tables: tables.0,
        kernels,
        max_samples_per_dispatch: 0,
        conv: None,
    };
    finish(plan, spc, max_samples)
}

/// The ordered reduction `out[r] = Σ_c WPartial[c, r]`.
pub(crate) fn reduce_kernel(
    out: Tensor,
    dims: &Dims,
    wg: u32,
    caps: &Capabilities,
) -> Result<Kernel, PlanError> {
    if caps.max_storage_buffers_per_stage < 2 {
        return Err(PlanError::TooManyBindings {
            kernel: "reduce".into(),
            needed: 2,
            max: caps.max_storage_buffers_per_stage,
        });
    }
    Ok(Kernel {
        name: format!("reduce_{}", format!("{out:?}").to_lowercase()),
        inputs: vec![Tensor::WPartial],
        outputs: vec![out],
        workgroup_size: wg,
        work: Work::ReduceChunks {
            input: Tensor::WPartial,
            output: out,
            len: dims.weight_numel,
        },
    })
}

/// Sets `max_samples_per_dispatch` from `limit`, shrinking the chunk until one chunk fits a
/// dispatch (only tiny limits need this).
pub(crate) fn finish(
    mut plan: KernelPlan,
    mut spc: u32,
    limit: fn(&KernelPlan) -> Result<u32, PlanError>,
) -> Result<KernelPlan, PlanError> {
    loop {
        match limit(&plan) {
            Ok(n) => {
                plan.max_samples_per_dispatch = n;
                return Ok(plan);
            }
            Err(PlanError::TooLarge(CHUNK_TOO_BIG)) if spc > 1 => {
                spc /= 2;
                for k in &mut plan.kernels {
                    if let Work::Rows {
                        sample_mode: m @ SampleMode::Chunk { .. },
                        ..
                    } = &mut k.work
                    {
                        *m = SampleMode::Chunk {
                            samples_per_chunk: spc,
                        };
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// A row whose loop work exceeds `SPLIT_RATIO` times the plan's median row is split.
const SPLIT_RATIO: u64 = 4;
/// Parts are sized to about `PART_RATIO` median rows of work.
const PART_RATIO: u64 = 2;

/// Loop work of row `r` of `seg`: per iteration of each contribution, its operand loads
/// (`row_len` each) plus its terms.
fn row_work(seg: &Segment, r: u32, tables: &[Vec<u32>]) -> u64 {
    seg.contributions
        .iter()
        .map(|c| {
            let n = c.count.try_eval(r, 0, tables).unwrap_or(0) as u64;
            let per =
                c.terms.len() as u64 + c.operands.iter().map(|o| o.row_len as u64).sum::<u64>();
            n * per
        })
        .sum()
}

fn largest_pow2_at_most(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        1 << (63 - n.leading_zeros())
    }
}

/// Split long gathers across invocations (deterministic, no atomics).
///
/// Rows of one kernel run side by side in a warp/subgroup, and one plan's rows differ in loop
/// length by up to two orders of magnitude (a GY row of a mul-1 `y` block sums over every `u`
/// of every path into it). The *typical* row (`median`) is the forward's median row work (see
/// [`row_work`]): the forward runs near bandwidth, so a row no longer than a few forward rows
/// is fine (double backward's DGZ rows, 2–3 forward rows, stay whole). A segment whose longest
/// row exceeds
/// `SPLIT_RATIO`× that is split into `S` parts, `S` a power of two:
/// `S = next_pow2(ceil(max_work / (PART_RATIO · median)))`, at most the subgroup width (32
/// when unknown; at most 64) and at most the segment's longest loop count. The parts of one
/// row are `S` consecutive invocations (`r' = r·S + s`) and part `s` runs the iterations
/// `t = s + S·t'` of every contribution (`t' < (count + S − 1 − s) / S`): neighbouring lanes
/// read neighbouring operand rows (coalesced), and the scratch traffic is `S` partial rows
/// per split row (bounded by the subgroup cap). Part rows are written to per-sample
/// [`Tensor::Scratch`] by a kernel `<name>_parts` placed before the kernel; in the kernel the
/// split segment's row becomes one contribution that sums its `S` partial rows in ascending
/// `s` (coefficient-1 terms). Forward plans have uniform rows and never split.
fn split_long_gathers(
    kernels: Vec<Kernel>,
    caps: &Capabilities,
    tables: &[Vec<u32>],
    median: u64,
    dims: &mut Dims,
) -> Result<Vec<Kernel>, PlanError> {
    use Tensor::*;
    // Scratch per sample stays within the largest per-sample tensor: its traffic is at most
    // one more tensor's, and it never lowers the binding-size bound on samples per dispatch.
    let scratch_cap = [X, Y, Z, W]
        .into_iter()
        .map(|t| dims.per_sample_len(t))
        .max()
        .unwrap_or(0);
    let s_max = match caps.subgroup_size {
        0 => 32,
        n => (n as u64).clamp(2, 64),
    };
    let mut out = vec![];
    for k0 in kernels {
        let scratch_before = dims.scratch;
        let mut k = k0.clone();
        let Work::Rows {
            sample_mode: SampleMode::PerSample,
            segments,
            ..
        } = &mut k.work
        else {
            out.push(k);
            continue;
        };
        let mut parts: Vec<Segment> = vec![];
        let mut part_rows = 0u32;
        for seg in segments.iter_mut() {
            let max_work = (0..seg.rows)
                .map(|r| row_work(seg, r, tables))
                .max()
                .unwrap_or(0);
            if max_work <= SPLIT_RATIO * median {
                continue;
            }
            let max_count = seg
                .contributions
                .iter()
                .flat_map(|c| (0..seg.rows).map(|r| c.count.try_eval(r, 0, tables).unwrap_or(0)))
                .max()
                .unwrap_or(0) as u64;
            let want = max_work.div_ceil(PART_RATIO * median).next_power_of_two();
            let sp = want.min(s_max).min(largest_pow2_at_most(max_count));
            if sp < 2 {
                continue;
            }
            let sp = sp as u32;
            let rows = seg
                .rows
                .checked_mul(sp)
                .ok_or(PlanError::TooLarge("split rows exceed u32"))?;
            let offset = dims.scratch;
            let end = rows
                .checked_mul(seg.row_len)
                .and_then(|n| n.checked_add(offset))
                .ok_or(PlanError::TooLarge("scratch per sample exceeds u32"))?;
            if end > scratch_cap {
                continue;
            }
            dims.scratch = end;
            // Part s of row r: r' = r·S + s, iterations t = s + S·t'.
            let r_of = Ix::div(R, C(sp));
            let s_of = Ix::rem(R, C(sp));
            let t_of = Ix::add(s_of.clone(), Ix::mul(C(sp), T));
            let contributions = seg
                .contributions
                .iter()
                .map(|c| Contribution {
                    path: c.path,
                    count: Ix::div(
                        Ix::sub(
                            Ix::add(c.count.subst(&r_of, &C(0)), C(sp - 1)),
                            s_of.clone(),
                        ),
                        C(sp),
                    ),
                    operands: c
                        .operands
                        .iter()
                        .map(|o| Operand {
                            row: o.row.subst(&r_of, &t_of),
                            ..o.clone()
                        })
                        .collect(),
                    scalar_factor: c.scalar_factor,
                    terms: c.terms.clone(),
                })
                .collect();
            parts.push(Segment {
                out: Tensor::Scratch,
                out_offset: offset,
                first_row: part_rows,
                rows,
                row_len: seg.row_len,
                contributions,
            });
            part_rows = part_rows
                .checked_add(rows)
                .ok_or(PlanError::TooLarge("rows per sample exceed u32"))?;
            seg.contributions = vec![Contribution {
                path: u32::MAX,
                count: C(sp),
                operands: vec![Operand {
                    tensor: Tensor::Scratch,
                    addressing: Addressing::PerSample,
                    offset,
                    row_len: seg.row_len,
                    row: Ix::add(Ix::mul(R, C(sp)), T),
                }],
                scalar_factor: None,
                terms: (0..seg.row_len)
                    .map(|i| Term {
                        out: i,
                        comps: vec![i],
                        coeff: 1.0,
                    })
                    .collect(),
            }];
        }
        if parts.is_empty() {
            out.push(k);
            continue;
        }
        let reads = |segs: &[Segment]| {
            let mut v: Vec<Tensor> = segs
                .iter()
                .flat_map(|s| s.contributions.iter())
                .flat_map(|c| c.operands.iter().map(|o| o.tensor))
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let part_inputs = reads(&parts);
        let inputs = reads(segments);
        let max_b = caps.max_storage_buffers_per_stage as usize;
        if part_inputs.len() + 1 > max_b || inputs.len() + k.outputs.len() > max_b {
            // The sum's extra binding does not fit: keep the kernel whole.
            dims.scratch = scratch_before;
            out.push(k0);
            continue;
        }
        out.push(Kernel {
            name: format!("{}_parts", k.name),
            inputs: part_inputs,
            outputs: vec![Tensor::Scratch],
            workgroup_size: k.workgroup_size,
            work: Work::Rows {
                sample_mode: SampleMode::PerSample,
                rows_per_sample: part_rows,
                segments: parts,
            },
        });
        k.inputs = inputs;
        out.push(k);
    }
    Ok(out)
}

/// Elements kept free below `u32::MAX` for runtimes' binding base offsets (alignment rest).
pub(crate) const INDEX_MARGIN: u64 = 1 << 16;

pub(crate) const CHUNK_TOO_BIG: &str = "not even one chunk of samples fits one dispatch";

/// Largest per-dispatch sample count that every kernel's bindings, grid and u32 indices allow
/// (a multiple of the chunk size if a chunked kernel exists).
fn max_samples(plan: &KernelPlan) -> Result<u32, PlanError> {
    let caps = &plan.caps;
    let es = elem_size(plan.dtype);
    let mut n_max: u64 = u32::MAX as u64;
    let mut spc_all = 1u64;
    let grid_cap = caps.max_workgroups_per_dim as u64 * caps.max_workgroups_per_dim as u64;
    for k in &plan.kernels {
        let Some((rows, spc)) = k.sample_rows() else {
            continue;
        };
        let rows_per_sample = &rows;
        let spc = spc as u64;
        spc_all = spc_all.max(spc);
        for &t in k.inputs.iter().chain(&k.outputs) {
            let len = plan.dims.per_sample_len(t) as u64;
            if len == 0 {
                continue;
            }
            let bytes = len * es;
            if bytes > caps.max_storage_binding_bytes {
                return Err(PlanError::BindingTooSmall {
                    tensor: t,
                    bytes_per_sample: bytes,
                    max_binding_bytes: caps.max_storage_binding_bytes,
                });
            }
            n_max = n_max
                .min(caps.max_storage_binding_bytes / bytes)
                .min((u32::MAX as u64 - INDEX_MARGIN) / len);
        }
        if *rows_per_sample == 0 {
            continue;
        }
        let wg = k.workgroup_size as u64;
        // Invocations (padded to whole workgroups, plus one partial grid row) fit in u32 and
        // workgroups fit the 2-D grid.
        let max_groups =
            grid_cap.min((u32::MAX as u64 / wg).saturating_sub(caps.max_workgroups_per_dim as u64));
        let max_items = max_groups * wg;
        let units = max_items / *rows_per_sample as u64; // samples or chunks
        if units == 0 {
            return Err(PlanError::TooLarge(
                "one sample's rows exceed the largest dispatch grid",
            ));
        }
        n_max = n_max.min(units.saturating_mul(spc));
        if spc > 1 {
            // WPartial rows of one dispatch.
            let bytes = plan.dims.weight_numel as u64 * es;
            if bytes > caps.max_storage_binding_bytes {
                return Err(PlanError::BindingTooSmall {
                    tensor: Tensor::WPartial,
                    bytes_per_sample: bytes,
                    max_binding_bytes: caps.max_storage_binding_bytes,
                });
            }
            n_max = n_max.min(caps.max_storage_binding_bytes / bytes * spc);
        }
    }
    let n = n_max / spc_all * spc_all;
    if n == 0 {
        return Err(PlanError::TooLarge(CHUNK_TOO_BIG));
    }
    Ok(n.min(u32::MAX as u64) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use equikern_core::Instruction;

    fn path(mode: ConnectionMode, m1: usize, m2: usize, mo: usize) -> Path {
        Path {
            instruction: Instruction::new(0, 0, 0, mode, true),
            l1: 0,
            l2: 0,
            lo: 0,
            m1,
            m2,
            mo,
            in1_offset: 0,
            in2_offset: 0,
            out_offset: 0,
            path_shape: mode.path_shape(m1, m2, mo),
            coefficient: 1.0,
            weight_offset: Some(0),
            cg: vec![(0, 0, 0, 1.0)],
        }
    }

    /// The tuples straight from the modes table.
    fn tuples(p: &Path) -> Vec<[u32; 4]> {
        use ConnectionMode::*;
        let (m1, m2, mo) = (p.m1 as u32, p.m2 as u32, p.mo as u32);
        let pairs: Vec<(u32, u32)> = (0..m1)
            .flat_map(|u| (u + 1..m1).map(move |v| (u, v)))
            .collect();
        let mut out = vec![];
        for u in 0..m1 {
            for v in 0..m2 {
                for w in 0..mo {
                    match p.instruction.mode {
                        Uvw => out.push([u, v, w, (u * m2 + v) * mo + w]),
                        Uvu if w == 0 => out.push([u, v, u, u * m2 + v]),
                        Uvv if w == 0 => out.push([u, v, v, u * m2 + v]),
                        Uuw if v == 0 => out.push([u, u, w, u * mo + w]),
                        Uuu if v == 0 && w == 0 => out.push([u, u, u, u]),
                        Uvuv if w == 0 => out.push([u, v, u * m2 + v, u * m2 + v]),
                        _ => {}
                    }
                }
            }
        }
        for (q, &(u, v)) in pairs.iter().enumerate() {
            let q = q as u32;
            match p.instruction.mode {
                UvuLtV => out.push([u, v, q, q]),
                ULtVw => (0..mo).for_each(|w| out.push([u, v, w, q * mo + w])),
                _ => {}
            }
        }
        out.sort();
        out
    }

    /// Gathering over every row of every slot visits each tuple exactly once.
    #[test]
    fn gathers_enumerate_the_tuples() {
        use ConnectionMode::*;
        let mut cases = vec![];
        for m1 in 1..5 {
            for m2 in 1..4 {
                for mo in 1..4 {
                    cases.push((Uvw, m1, m2, mo));
                    cases.push((Uvu, m1, m2, m1));
                    cases.push((Uvv, m1, m2, m2));
                    cases.push((Uuw, m1, m1, mo));
                    cases.push((Uuu, m1, m1, m1));
                    cases.push((Uvuv, m1, m2, m1 * m2));
                    cases.push((ULtVw, m1, m1, mo));
                }
            }
            if m1 > 1 {
                cases.push((UvuLtV, m1, m1, m1 * (m1 - 1) / 2));
            }
        }
        for (mode, m1, m2, mo) in cases {
            let p = path(mode, m1, m2, mo);
            let want = tuples(&p);
            for (si, slot) in [Slot::X, Slot::Y, Slot::Z, Slot::W].into_iter().enumerate() {
                let mut tables = Tables::default();
                let g = gather(&p, slot, &mut tables);
                let tb = &tables.0;
                let mut got = vec![];
                for r in 0..slot_rows(&p, slot) {
                    for t in 0..g.count.eval(r, 0, tb) {
                        let ev = |e: &Ix| e.try_eval(r, t, tb).expect("in range");
                        let mut tup = [ev(&g.x), ev(&g.y), ev(&g.z), ev(&g.w)];
                        tup[si] = r;
                        got.push(tup);
                    }
                }
                got.sort();
                assert_eq!(got, want, "{mode:?} m=({m1},{m2},{mo}) slot {slot:?}");
            }
        }
    }

    #[test]
    fn ix_simplify_and_print() {
        let e = Ix::add(
            Ix::mul(Ix::div(Ix::T, Ix::C(1)), Ix::C(3)),
            Ix::rem(Ix::R, Ix::C(1)),
        );
        assert_eq!(e.to_string(), "t * 3");
        let e = Ix::Div(Box::new(Ix::T), Box::new(Ix::C(4)));
        assert_eq!(e.simplify(9, 3, None, &[]), Ix::C(0));
        let e = Ix::Sub(
            Box::new(Ix::R),
            Box::new(Ix::Add(Box::new(Ix::T), Box::new(Ix::C(1)))),
        );
        assert_eq!(e.to_string(), "r - (t + 1)");
        assert_eq!(e.try_eval(0, 0, &[]), None);
    }
}
