//! Hand-built kernel plans (no lowering needed) and a direct CPU evaluation of the plan
//! semantics, for testing writers and runtimes independently of the lowering.
#![allow(dead_code)]

use equikern_plan::{
    Addressing, Capabilities, Contribution, Dims, Direction, Dtype, Ix, Kernel, KernelPlan,
    Operand, SampleMode, Segment, Tensor, Term, Work,
};

/// One uvu-like path: x block (mul1, l1) · y block (mul2, l2) -> z block (mul1, lo).
#[derive(Clone, Copy)]
pub struct ToyPath {
    pub mul1: u32,
    pub l1: u32,
    pub mul2: u32,
    pub l2: u32,
    pub lo: u32,
}

fn bx(a: Ix, b: Ix) -> (Box<Ix>, Box<Ix>) {
    (Box::new(a), Box::new(b))
}
fn add(a: Ix, b: Ix) -> Ix {
    let (a, b) = bx(a, b);
    Ix::Add(a, b)
}
fn mul(a: Ix, b: Ix) -> Ix {
    let (a, b) = bx(a, b);
    Ix::Mul(a, b)
}
fn div(a: Ix, b: Ix) -> Ix {
    let (a, b) = bx(a, b);
    Ix::Div(a, b)
}
fn rem(a: Ix, b: Ix) -> Ix {
    let (a, b) = bx(a, b);
    Ix::Mod(a, b)
}

/// Deterministic pseudo-CG terms (not real CG values: the writer does not care).
fn fake_terms(d1: u32, d2: u32, dout: u32, seed: u32) -> Vec<(u32, u32, u32, f64)> {
    let mut v = Vec::new();
    for i in 0..d1 {
        for j in 0..d2 {
            for k in 0..dout {
                let h = (i * 7 + j * 13 + k * 5 + seed * 3) % 5;
                if h < 2 {
                    let c = ((i + 2 * j + 3 * k + seed) as f64 * 0.37).sin() * 0.8 - 0.1;
                    v.push((i, j, k, c));
                }
            }
        }
    }
    v
}

pub struct Toy {
    pub paths: Vec<ToyPath>,
    pub dims: Dims,
    x_off: Vec<u32>,
    y_off: Vec<u32>,
    z_off: Vec<u32>,
    w_off: Vec<u32>,
}

impl Toy {
    pub fn new(paths: Vec<ToyPath>, shared_weights: bool) -> Toy {
        let (mut x, mut y, mut z, mut w) = (0, 0, 0, 0);
        let (mut xo, mut yo, mut zo, mut wo) = (vec![], vec![], vec![], vec![]);
        for p in &paths {
            xo.push(x);
            yo.push(y);
            zo.push(z);
            wo.push(w);
            x += p.mul1 * (2 * p.l1 + 1);
            y += p.mul2 * (2 * p.l2 + 1);
            z += p.mul1 * (2 * p.lo + 1);
            w += p.mul1 * p.mul2;
        }
        Toy {
            paths,
            dims: Dims {
                dim_in1: x,
                dim_in2: y,
                dim_out: z,
                weight_numel: w,
                shared_weights,
                scratch: 0,
            },
            x_off: xo,
            y_off: yo,
            z_off: zo,
            w_off: wo,
        }
    }

    fn w_addr(&self) -> Addressing {
        if self.dims.shared_weights {
            Addressing::Shared
        } else {
            Addressing::PerSample
        }
    }

    /// Forward: z[u, k] += Σ_v w[u, v] Σ c x[u, i] y[v, j]; y rows go through table 0 (identity).
    pub fn forward(&self, caps: Capabilities) -> KernelPlan {
        let mut segs = vec![];
        let mut row = 0;
        let mut tables = vec![];
        for (pi, p) in self.paths.iter().enumerate() {
            let (d1, d2, dout) = (2 * p.l1 + 1, 2 * p.l2 + 1, 2 * p.lo + 1);
            let terms = fake_terms(d1, d2, dout, pi as u32)
                .into_iter()
                .map(|(i, j, k, c)| Term {
                    out: k,
                    comps: vec![i, j, 0],
                    coeff: c,
                })
                .collect();
            let table_id = tables.len() as u32;
            tables.push((0..p.mul2).collect::<Vec<u32>>());
            segs.push(Segment {
                out: Tensor::Z,
                out_offset: self.z_off[pi],
                first_row: row,
                rows: p.mul1,
                row_len: dout,
                contributions: vec![Contribution {
                    path: pi as u32,
                    count: Ix::C(p.mul2),
                    operands: vec![
                        Operand {
                            tensor: Tensor::X,
                            addressing: Addressing::PerSample,
                            offset: self.x_off[pi],
                            row_len: d1,
                            row: Ix::R,
                        },
                        Operand {
                            tensor: Tensor::Y,
                            addressing: Addressing::PerSample,
                            offset: self.y_off[pi],
                            row_len: d2,
                            row: Ix::Table(table_id, Box::new(Ix::T)),
                        },
                        Operand {
                            tensor: Tensor::W,
                            addressing: self.w_addr(),
                            offset: self.w_off[pi],
                            row_len: 1,
                            row: add(mul(Ix::R, Ix::C(p.mul2)), Ix::T),
                        },
                    ],
                    scalar_factor: Some(2),
                    terms,
                }],
            });
            row += p.mul1;
        }
        KernelPlan {
            conv: None,
            direction: Direction::Forward,
            dtype: Dtype::F32,
            dims: self.dims,
            caps,
            tables,
            kernels: vec![Kernel {
                name: "toy_forward".into(),
                inputs: vec![Tensor::X, Tensor::Y, Tensor::W],
                outputs: vec![Tensor::Z],
                workgroup_size: 64,
                work: Work::Rows {
                    sample_mode: SampleMode::PerSample,
                    rows_per_sample: row,
                    segments: segs,
                },
            }],
            max_samples_per_dispatch: 1 << 20,
        }
    }

    /// Weight gradient only (`GW` from x, y, gz): per-sample rows, or for shared weights a
    /// Chunk kernel into `WPartial` followed by ReduceChunks.
    pub fn weight_grad(&self, caps: Capabilities, samples_per_chunk: u32) -> KernelPlan {
        let shared = self.dims.shared_weights;
        let out = if shared { Tensor::WPartial } else { Tensor::GW };
        let mut segs = vec![];
        for (pi, p) in self.paths.iter().enumerate() {
            let (d1, d2, dout) = (2 * p.l1 + 1, 2 * p.l2 + 1, 2 * p.lo + 1);
            let terms = fake_terms(d1, d2, dout, pi as u32)
                .into_iter()
                .map(|(i, j, k, c)| Term {
                    out: 0,
                    comps: vec![k, i, j],
                    coeff: c,
                })
                .collect();
            let m2 = Ix::C(p.mul2);
            segs.push(Segment {
                out,
                out_offset: self.w_off[pi],
                first_row: self.w_off[pi],
                rows: p.mul1 * p.mul2,
                row_len: 1,
                contributions: vec![Contribution {
                    path: pi as u32,
                    count: Ix::C(1),
                    operands: vec![
                        Operand {
                            tensor: Tensor::GZ,
                            addressing: Addressing::PerSample,
                            offset: self.z_off[pi],
                            row_len: dout,
                            row: div(Ix::R, m2.clone()),
                        },
                        Operand {
                            tensor: Tensor::X,
                            addressing: Addressing::PerSample,
                            offset: self.x_off[pi],
                            row_len: d1,
                            row: div(Ix::R, m2.clone()),
                        },
                        Operand {
                            tensor: Tensor::Y,
                            addressing: Addressing::PerSample,
                            offset: self.y_off[pi],
                            row_len: d2,
                            row: rem(Ix::R, m2),
                        },
                    ],
                    scalar_factor: None,
                    terms,
                }],
            });
        }
        let wn = self.dims.weight_numel;
        let mut kernels = vec![Kernel {
            name: "toy_grad_w".into(),
            inputs: vec![Tensor::X, Tensor::Y, Tensor::GZ],
            outputs: vec![out],
            workgroup_size: 32,
            work: Work::Rows {
                sample_mode: if shared {
                    SampleMode::Chunk { samples_per_chunk }
                } else {
                    SampleMode::PerSample
                },
                rows_per_sample: wn,
                segments: segs,
            },
        }];
        if shared {
            kernels.push(Kernel {
                name: "toy_reduce_w".into(),
                inputs: vec![Tensor::WPartial],
                outputs: vec![Tensor::GW],
                workgroup_size: 64,
                work: Work::ReduceChunks {
                    input: Tensor::WPartial,
                    output: Tensor::GW,
                    len: wn,
                },
            });
        }
        KernelPlan {
            conv: None,
            direction: Direction::Backward,
            dtype: Dtype::F32,
            dims: self.dims,
            caps,
            tables: vec![],
            kernels,
            max_samples_per_dispatch: 1 << 20,
        }
    }
}

/// Direct f64 evaluation of a plan's semantics: `get(tensor)` gives each input's whole flat
/// buffer; returns each output tensor's flat buffer (`batch` samples).
pub fn eval_plan(
    plan: &KernelPlan,
    batch: u32,
    samples_per_chunk_hint: u32,
    inputs: &std::collections::BTreeMap<Tensor, Vec<f64>>,
) -> std::collections::BTreeMap<Tensor, Vec<f64>> {
    let mut bufs = inputs.clone();
    let d = plan.dims;
    for k in &plan.kernels {
        match &k.work {
            Work::Channels(_) | Work::Staged(_) => unreachable!("toy plans use row kernels"),
            Work::Rows {
                sample_mode,
                segments,
                ..
            } => {
                let (groups, spc): (u32, u32) = match sample_mode {
                    SampleMode::PerSample => (batch, 1),
                    SampleMode::Chunk { samples_per_chunk } => {
                        (batch.div_ceil(*samples_per_chunk), *samples_per_chunk)
                    }
                    _ => unreachable!("toy plans are tensor products"),
                };
                let _ = samples_per_chunk_hint;
                for seg in segments {
                    let len = match sample_mode {
                        SampleMode::PerSample => d.per_sample_len(seg.out),
                        SampleMode::Chunk { .. } => d.weight_numel,
                        _ => unreachable!("toy plans are tensor products"),
                    };
                    let need = (groups * len) as usize;
                    let out = bufs.entry(seg.out).or_insert_with(|| vec![0.0; need]);
                    if out.len() < need {
                        out.resize(need, 0.0);
                    }
                    let mut results = vec![];
                    for gi in 0..groups {
                        for r in 0..seg.rows {
                            let mut acc = vec![0.0f64; seg.row_len as usize];
                            let s_range = gi * spc..((gi + 1) * spc).min(batch);
                            for s in s_range {
                                for c in &seg.contributions {
                                    for t in 0..c.count.eval(r, t_dummy(), &plan.tables) {
                                        let idx: Vec<usize> = c
                                            .operands
                                            .iter()
                                            .map(|op| {
                                                let base = match op.addressing {
                                                    Addressing::PerSample => {
                                                        s * d.per_sample_len(op.tensor)
                                                    }
                                                    Addressing::Shared => 0,
                                                    Addressing::Gather { .. } => {
                                                        unreachable!(
                                                            "toy plans are tensor products"
                                                        )
                                                    }
                                                };
                                                (base
                                                    + op.offset
                                                    + op.row.eval(r, t, &plan.tables) * op.row_len)
                                                    as usize
                                            })
                                            .collect();
                                        for term in &c.terms {
                                            let mut p = term.coeff;
                                            for (k, comp) in term.comps.iter().enumerate() {
                                                p *= bufs[&c.operands[k].tensor]
                                                    [idx[k] + *comp as usize];
                                            }
                                            acc[term.out as usize] += p;
                                        }
                                    }
                                }
                            }
                            let o = gi * len + seg.out_offset + r * seg.row_len;
                            results.push((o, acc));
                        }
                    }
                    let out = bufs.get_mut(&seg.out).unwrap();
                    for (o, acc) in results {
                        for (i, a) in acc.into_iter().enumerate() {
                            out[o as usize + i] = a;
                        }
                    }
                }
            }
            Work::ReducePieces { .. } => unreachable!("toy plans are tensor products"),
            Work::ReduceChunks { input, output, len } => {
                let inp = bufs[input].clone();
                let n = inp.len() / *len as usize;
                let mut out = vec![0.0; *len as usize];
                for c in 0..n {
                    for r in 0..*len as usize {
                        out[r] += inp[c * *len as usize + r];
                    }
                }
                bufs.insert(*output, out);
            }
        }
    }
    for t in inputs.keys() {
        bufs.remove(t);
    }
    bufs
}

fn t_dummy() -> u32 {
    0
}

pub fn h100_caps() -> Capabilities {
    Capabilities {
        subgroup_size: 32,
        subgroups: true,
        max_invocations_per_workgroup: 1024,
        max_workgroup_size_x: 1024,
        workgroup_memory_bytes: 49152,
        max_storage_binding_bytes: 2147483644,
        max_workgroups_per_dim: 65535,
        max_storage_buffers_per_stage: 16,
        f64: true,
        float_atomics: true,
        warp_shuffles: false,
    }
}
