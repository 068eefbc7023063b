//! The checks run for every (case, backend, precision).
//!
//! | check | compares | tolerance |
//! |---|---|---|
//! | `oracle.{forward,backward,double_backward}` | backend vs the f64 oracle, rel. L2 per output tensor (worst) | [`Tolerances`] |
//! | `cross.{…}` | backend vs the first backend run in the same precision, same inputs | 2 × tolerance |
//! | `fd.backward` | `⟨gz, F(x+d) − F(x)⟩` vs `⟨gx, d⟩`, same for y and w (the backend's own forward) | backward tol. |
//! | `fd.double_backward` | `S(s+d) − S(s)` vs `⟨D_s, d⟩`, `S = ⟨gx,hx⟩+⟨gy,hy⟩+⟨gw,hw⟩` of the backend's own backward, for s = x, y, w, gz | double-backward tol. |
//! | `equiv.{rotation,reflection}.{…}` | `F(D x, D y, w)` vs `D F(x, y, w)` (and the gradients' transformation laws) | per direction |
//! | `zeros` | values of output blocks no instruction writes, gradients of input blocks none reads | exactly 0 |
//! | `determinism` | a second run of all three passes | bit-identical |
//!
//! The product is linear in each of x, y, w (and the backward in gz) separately, so a
//! one-sided difference along one slot at a time is exact for any step: the finite-difference
//! checks are as tight as the rounding of the backend's own arithmetic. The scalar errors are
//! normalised by the Cauchy–Schwarz bound of the terms involved.

use std::collections::BTreeMap;
use std::sync::Arc;

use equikern_core::oracle::{DoubleGrads, Grads, Oracle};
use equikern_core::so3::uniform_rotation;
use equikern_core::TensorProduct;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::backends::{BoundOp, ConformanceBackend};
use crate::corpus::Case;
use crate::data::{
    compare, dot, max_abs_in, nan_max, norm, random_vec, BlockD, Inputs, Metric, ZeroMasks,
};
use crate::{Error, Prec, Result};

/// Relative-L2 tolerances (see `docs/conformance.md` for the derivation).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tolerances {
    /// f32 forward and backward.
    pub f32_fb: f64,
    /// f32 double backward.
    pub f32_db: f64,
    /// f64, every pass.
    pub f64: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances {
            f32_fb: 1e-5,
            f32_db: 1e-4,
            f64: 1e-12,
        }
    }
}

/// The three passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    Backward,
    DoubleBackward,
}

impl Pass {
    pub const ALL: [Pass; 3] = [Pass::Forward, Pass::Backward, Pass::DoubleBackward];

    pub fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::Backward => "backward",
            Pass::DoubleBackward => "double_backward",
        }
    }
}

impl Tolerances {
    pub fn get(&self, prec: Prec, pass: Pass) -> f64 {
        match (prec, pass) {
            (Prec::F64, _) => self.f64,
            (Prec::F32, Pass::DoubleBackward) => self.f32_db,
            (Prec::F32, _) => self.f32_fb,
        }
    }
}

/// One check of one case on one backend in one precision.
#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub backend: String,
    pub prec: Prec,
    pub check: String,
    pub max_abs: f64,
    pub rel_l2: f64,
    pub tol: f64,
    pub pass: bool,
    /// Worst tensor, reference backend, error message, …
    pub note: String,
}

/// Results of the three passes on one set of inputs.
#[derive(Clone, Debug)]
pub struct Outs {
    pub z: Vec<f64>,
    pub g: Grads<f64>,
    pub d: DoubleGrads<f64>,
}

impl Outs {
    fn pass(&self, p: Pass) -> Vec<(&'static str, &[f64])> {
        match p {
            Pass::Forward => vec![("z", &self.z)],
            Pass::Backward => vec![("gx", &self.g.gx), ("gy", &self.g.gy), ("gw", &self.g.gw)],
            Pass::DoubleBackward => vec![
                ("dx", &self.d.dx),
                ("dy", &self.d.dy),
                ("dw", &self.d.dw),
                ("dgz", &self.d.dgz),
            ],
        }
    }

    fn all(&self) -> Vec<&[f64]> {
        Pass::ALL
            .iter()
            .flat_map(|&p| self.pass(p).into_iter().map(|(_, v)| v))
            .collect()
    }
}

fn run_all(op: &dyn BoundOp, i: &Inputs) -> Result<Outs> {
    Ok(Outs {
        z: op.forward(i.batch, &i.x, &i.y, &i.w)?,
        g: op.backward(i.batch, &i.x, &i.y, &i.w, &i.gz)?,
        d: op.double_backward(i.batch, i.db_args())?,
    })
}

/// Per-tensor comparison of one pass; the worst tensor names the note.
fn compare_pass(got: &Outs, want: &Outs, p: Pass) -> (Metric, String) {
    let mut m = Metric::default();
    let mut worst = String::new();
    for ((name, g), (_, w)) in got.pass(p).into_iter().zip(want.pass(p)) {
        let e = compare(g, w);
        if worst.is_empty() || e.rel_l2 > m.rel_l2 || e.rel_l2.is_nan() {
            worst = name.to_string();
        }
        m = m.worst(e);
    }
    (m, format!("worst: {worst}"))
}

/// Everything a case needs besides the backends: the built product, inputs, the oracle's
/// answers, the transformations.
pub struct CaseData {
    pub tp: Arc<TensorProduct>,
    pub inputs: Inputs,
    pub oracle: Outs,
    pub transforms: Vec<(&'static str, [BlockD; 3])>,
    pub masks: ZeroMasks,
    pub seed: u64,
}

impl CaseData {
    pub fn new(case: &Case) -> Result<CaseData> {
        let tp = Arc::new(
            case.spec
                .build()
                .map_err(|e| Error::Corpus(format!("{}: {e}", case.name)))?,
        );
        let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
        let inputs = Inputs::random(&tp, case.batch, &mut rng);
        let oracle = Oracle::<f64>::new(&tp).map_err(|e| Error::Corpus(e.to_string()))?;
        let i = &inputs;
        let oerr = |e: equikern_core::OracleError| Error::Corpus(format!("oracle: {e}"));
        let oracle = Outs {
            z: oracle.forward(i.batch, &i.x, &i.y, &i.w).map_err(oerr)?,
            g: oracle
                .backward(i.batch, &i.x, &i.y, &i.w, &i.gz)
                .map_err(oerr)?,
            d: oracle
                .double_backward(i.batch, &i.x, &i.y, &i.w, &i.gz, &i.hx, &i.hy, &i.hw)
                .map_err(oerr)?,
        };
        let r = uniform_rotation(rng.random(), rng.random(), rng.random());
        let refl = r.map(|row| row.map(|v| -v));
        let s = &tp.spec;
        let mut transforms = Vec::new();
        for (name, m) in [("rotation", r), ("reflection", refl)] {
            let d = |irreps| BlockD::new(irreps, &m).map_err(Error::Corpus);
            transforms.push((
                name,
                [d(&s.irreps_in1)?, d(&s.irreps_in2)?, d(&s.irreps_out)?],
            ));
        }
        Ok(CaseData {
            masks: ZeroMasks::of(&tp),
            tp,
            inputs,
            oracle,
            transforms,
            seed: case.seed,
        })
    }
}

/// Run every check of `case` on every backend and precision. `tick` is called after each
/// (backend, precision).
pub fn run_case(
    case: &Case,
    backends: &[Box<dyn ConformanceBackend>],
    tol: &Tolerances,
    tick: &mut dyn FnMut(&str),
) -> Vec<CheckResult> {
    let data = match CaseData::new(case) {
        Ok(d) => d,
        Err(e) => {
            return vec![CheckResult {
                backend: "-".into(),
                prec: Prec::F64,
                check: "case".into(),
                max_abs: f64::INFINITY,
                rel_l2: f64::INFINITY,
                tol: 0.0,
                pass: false,
                note: e.to_string(),
            }]
        }
    };
    let mut rows = Vec::new();
    let mut refs: BTreeMap<Prec, (String, Outs)> = BTreeMap::new();
    for b in backends {
        for prec in b.precisions() {
            let mut ctx = Ctx {
                backend: b.name().to_string(),
                prec,
                tol,
                rows: Vec::new(),
            };
            let reference = refs.get(&prec);
            // A panicking backend is a failed case, not the end of the run.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut sub = Ctx {
                    backend: ctx.backend.clone(),
                    prec,
                    tol,
                    rows: Vec::new(),
                };
                let r = check_backend(&mut sub, b.as_ref(), case, &data, reference);
                (r, sub.rows)
            }));
            match result {
                Ok((Ok(outs), mut r)) => {
                    ctx.rows.append(&mut r);
                    refs.entry(prec)
                        .or_insert_with(|| (b.name().to_string(), outs));
                }
                Ok((Err(e), mut r)) => {
                    ctx.rows.append(&mut r);
                    ctx.push("run", Metric::inf(), 0.0, false, e.to_string());
                }
                Err(p) => {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    ctx.push("run", Metric::inf(), 0.0, false, format!("panicked: {msg}"));
                }
            }
            rows.append(&mut ctx.rows);
            tick(b.name());
        }
    }
    rows
}

impl Metric {
    fn inf() -> Metric {
        Metric {
            max_abs: f64::INFINITY,
            rel_l2: f64::INFINITY,
        }
    }
}

struct Ctx<'a> {
    backend: String,
    prec: Prec,
    tol: &'a Tolerances,
    rows: Vec<CheckResult>,
}

impl Ctx<'_> {
    fn push(&mut self, check: &str, m: Metric, tol: f64, pass: bool, note: String) {
        self.rows.push(CheckResult {
            backend: self.backend.clone(),
            prec: self.prec,
            check: check.to_string(),
            max_abs: m.max_abs,
            rel_l2: m.rel_l2,
            tol,
            pass,
            note,
        });
    }

    fn push_tol(&mut self, check: &str, m: Metric, tol: f64, note: String) {
        let pass = m.rel_l2 <= tol;
        self.push(check, m, tol, pass, note);
    }
}

fn check_backend(
    ctx: &mut Ctx<'_>,
    b: &dyn ConformanceBackend,
    case: &Case,
    data: &CaseData,
    reference: Option<&(String, Outs)>,
) -> Result<Outs> {
    let op = b.bind(&data.tp, ctx.prec, case.split)?;
    let op = op.as_ref();
    let outs = run_all(op, &data.inputs)?;
    let split_note = match case.split {
        Some(n) if b.splits(ctx.prec) => format!("; ≤{n} samples/dispatch"),
        Some(_) => "; (no dispatches to split)".into(),
        None => String::new(),
    };
    for p in Pass::ALL {
        let (m, note) = compare_pass(&outs, &data.oracle, p);
        let t = ctx.tol.get(ctx.prec, p);
        ctx.push_tol(&format!("oracle.{}", p.name()), m, t, note + &split_note);
    }
    if let Some((rname, r)) = reference {
        for p in Pass::ALL {
            let (m, note) = compare_pass(&outs, r, p);
            let t = 2.0 * ctx.tol.get(ctx.prec, p);
            ctx.push_tol(
                &format!("cross.{}", p.name()),
                m,
                t,
                format!("vs {rname}; {note}"),
            );
        }
    }
    fd_backward(ctx, op, data, &outs)?;
    fd_double_backward(ctx, op, data, &outs)?;
    equivariance(ctx, op, data, &outs)?;
    zeros(ctx, data, &outs);
    if b.deterministic() {
        let again = run_all(op, &data.inputs)?;
        let mut same = true;
        let mut max_abs: f64 = 0.0;
        for (a, c) in outs.all().into_iter().zip(again.all()) {
            same &= a.len() == c.len() && a.iter().zip(c).all(|(u, v)| u.to_bits() == v.to_bits());
            for (u, v) in a.iter().zip(c) {
                max_abs = nan_max(max_abs, (u - v).abs());
            }
        }
        let m = Metric {
            max_abs,
            rel_l2: if same { 0.0 } else { f64::INFINITY },
        };
        ctx.push("determinism", m, 0.0, same, "second run, bitwise".into());
    }
    Ok(outs)
}

/// Perturb one slot: `v + d` rounded to f32 (so the f32 backends see it exactly), and the
/// perturbation actually applied.
fn perturb(v: &[f64], rng: &mut ChaCha8Rng) -> (Vec<f64>, Vec<f64>) {
    let d = random_vec(rng, v.len());
    let p: Vec<f64> = v
        .iter()
        .zip(&d)
        .map(|(a, b)| (a + b) as f32 as f64)
        .collect();
    let eff = p.iter().zip(v).map(|(a, b)| a - b).collect();
    (p, eff)
}

/// `|a − b| / scale`, 0 when both vanish.
fn scalar_err(a: f64, b: f64, scale: f64) -> Metric {
    let diff = (a - b).abs();
    let rel = if diff == 0.0 {
        0.0
    } else if scale == 0.0 || !diff.is_finite() {
        f64::INFINITY
    } else {
        diff / scale
    };
    Metric {
        max_abs: diff,
        rel_l2: rel,
    }
}

fn fd_backward(ctx: &mut Ctx<'_>, op: &dyn BoundOp, data: &CaseData, o: &Outs) -> Result<()> {
    let i = &data.inputs;
    let mut rng = ChaCha8Rng::seed_from_u64(data.seed ^ 0x0fd1);
    let mut m = Metric::default();
    let mut worst = String::from("-");
    let slots: [(&str, &[f64], &[f64]); 3] = [
        ("x", &i.x, &o.g.gx),
        ("y", &i.y, &o.g.gy),
        ("w", &i.w, &o.g.gw),
    ];
    for (k, (name, v, g)) in slots.into_iter().enumerate() {
        if v.is_empty() {
            continue;
        }
        let (p, d) = perturb(v, &mut rng);
        let zp = match k {
            0 => op.forward(i.batch, &p, &i.y, &i.w)?,
            1 => op.forward(i.batch, &i.x, &p, &i.w)?,
            _ => op.forward(i.batch, &i.x, &i.y, &p)?,
        };
        if zp.len() != o.z.len() {
            m = Metric::inf();
            worst = format!("{name}: forward length {}", zp.len());
            continue;
        }
        let dz: Vec<f64> = zp.iter().zip(&o.z).map(|(a, b)| a - b).collect();
        let a = dot(&i.gz, &dz);
        let b = if g.len() == d.len() {
            dot(g, &d)
        } else {
            f64::NAN
        };
        let scale = norm(&i.gz) * (norm(&zp) + norm(&o.z)) + norm(g) * norm(&d);
        let e = scalar_err(a, b, scale);
        if e.rel_l2 > m.rel_l2 || !e.rel_l2.is_finite() {
            worst = name.to_string();
        }
        m = m.worst(e);
    }
    let t = ctx.tol.get(ctx.prec, Pass::Backward);
    ctx.push_tol("fd.backward", m, t, format!("worst slot: {worst}"));
    Ok(())
}

/// `S = ⟨gx,hx⟩ + ⟨gy,hy⟩ + ⟨gw,hw⟩` and its Cauchy–Schwarz scale.
fn s_of(g: &Grads<f64>, i: &Inputs) -> (f64, f64) {
    let pairs = [(&g.gx, &i.hx), (&g.gy, &i.hy), (&g.gw, &i.hw)];
    let mut s = 0.0;
    let mut scale = 0.0;
    for (a, h) in pairs {
        if a.len() != h.len() {
            return (f64::NAN, 0.0);
        }
        s += dot(a, h);
        scale += norm(a) * norm(h);
    }
    (s, scale)
}

fn fd_double_backward(
    ctx: &mut Ctx<'_>,
    op: &dyn BoundOp,
    data: &CaseData,
    o: &Outs,
) -> Result<()> {
    let i = &data.inputs;
    let mut rng = ChaCha8Rng::seed_from_u64(data.seed ^ 0x0fd2);
    let (s0, sc0) = s_of(&o.g, i);
    let mut m = Metric::default();
    let mut worst = String::from("-");
    let slots: [(&str, &[f64], &[f64]); 4] = [
        ("x", &i.x, &o.d.dx),
        ("y", &i.y, &o.d.dy),
        ("w", &i.w, &o.d.dw),
        ("gz", &i.gz, &o.d.dgz),
    ];
    for (k, (name, v, dv)) in slots.into_iter().enumerate() {
        if v.is_empty() {
            continue;
        }
        let (p, d) = perturb(v, &mut rng);
        let g = match k {
            0 => op.backward(i.batch, &p, &i.y, &i.w, &i.gz)?,
            1 => op.backward(i.batch, &i.x, &p, &i.w, &i.gz)?,
            2 => op.backward(i.batch, &i.x, &i.y, &p, &i.gz)?,
            _ => op.backward(i.batch, &i.x, &i.y, &i.w, &p)?,
        };
        let (s1, sc1) = s_of(&g, i);
        let b = if dv.len() == d.len() {
            dot(dv, &d)
        } else {
            f64::NAN
        };
        let e = scalar_err(s1 - s0, b, sc0 + sc1 + norm(dv) * norm(&d));
        if e.rel_l2 > m.rel_l2 || !e.rel_l2.is_finite() {
            worst = name.to_string();
        }
        m = m.worst(e);
    }
    let t = ctx.tol.get(ctx.prec, Pass::DoubleBackward);
    ctx.push_tol("fd.double_backward", m, t, format!("worst slot: {worst}"));
    Ok(())
}

fn equivariance(ctx: &mut Ctx<'_>, op: &dyn BoundOp, data: &CaseData, o: &Outs) -> Result<()> {
    let i = &data.inputs;
    for (name, [d1, d2, dout]) in &data.transforms {
        let ri = Inputs {
            batch: i.batch,
            x: d1.apply(&i.x),
            y: d2.apply(&i.y),
            w: i.w.clone(),
            gz: dout.apply(&i.gz),
            hx: d1.apply(&i.hx),
            hy: d2.apply(&i.hy),
            hw: i.hw.clone(),
        };
        // f32 backends round the transformed inputs on the way in (error ~2^-24, relative).
        let got = run_all(op, &ri)?;
        // The transformation laws: z, gz, dgz like the output; gx, dx, hx like x; gy, dy like
        // y; weights and their gradients invariant.
        let want = Outs {
            z: dout.apply(&o.z),
            g: Grads {
                gx: d1.apply(&o.g.gx),
                gy: d2.apply(&o.g.gy),
                gw: o.g.gw.clone(),
            },
            d: DoubleGrads {
                dx: d1.apply(&o.d.dx),
                dy: d2.apply(&o.d.dy),
                dw: o.d.dw.clone(),
                dgz: dout.apply(&o.d.dgz),
            },
        };
        for p in Pass::ALL {
            let (m, note) = compare_pass(&got, &want, p);
            let t = ctx.tol.get(ctx.prec, p);
            ctx.push_tol(&format!("equiv.{name}.{}", p.name()), m, t, note);
        }
    }
    Ok(())
}

fn zeros(ctx: &mut Ctx<'_>, data: &CaseData, o: &Outs) {
    let mk = &data.masks;
    if mk.is_empty() {
        return;
    }
    let tp = &data.tp;
    let parts = [
        ("z", &o.z, tp.dim_out, &mk.out),
        ("dgz", &o.d.dgz, tp.dim_out, &mk.out),
        ("gx", &o.g.gx, tp.dim_in1, &mk.in1),
        ("dx", &o.d.dx, tp.dim_in1, &mk.in1),
        ("gy", &o.g.gy, tp.dim_in2, &mk.in2),
        ("dy", &o.d.dy, tp.dim_in2, &mk.in2),
    ];
    let mut worst: f64 = 0.0;
    let mut which = String::from("-");
    for (name, v, dim, r) in parts {
        let m = max_abs_in(v, dim, r);
        if m > worst || m.is_nan() {
            which = name.to_string();
        }
        worst = nan_max(worst, m);
    }
    let m = Metric {
        max_abs: worst,
        rel_l2: worst,
    };
    ctx.push(
        "zeros",
        m,
        0.0,
        worst == 0.0,
        format!("unwritten/unread blocks exactly 0; worst: {which}"),
    );
}
