//! SevenNet-0 (NequIP-style, 5 interaction layers) from its checkpoint: energy, forces and
//! stress in f64 or f32 (`SevenNet<T>`, weights cast once by [`SevenNet::cast`]), on any
//! [`Backend`] (the convolutions on a GPU through [`crate::backend::DeviceBackend`]).
//!
//! Per structure: radius graph → edge embedding (trained Bessel basis × cutoff envelope, SH
//! `0e+1e+2e` normalised, component) → one-hot species → `Linear` → 5 × interaction block →
//! `Linear(128x0e→64x0e)` → `Linear(64x0e→1x0e)` → per-species scale/shift → Σ.
//!
//! Interaction block t (state-dict prefix `t_`):
//! `sc = self_connection_intro(x)`; `h = self_interaction_1(x)`;
//! `m_e = TP(h[j_e], Y_e, w_e)` with `w_e = weight_nn(emb_e)` (uvu, per-edge weights);
//! `a_i = Σ_{e: i_e = i} m_e / denominator`; `y = self_interaction_2(a) + sc`; `x = Gate(y)`.
//!
//! Forces and stress come from `f_e = ∂E/∂r_e` (edge vectors `r_e = pos_j − pos_i + S·cell`),
//! computed by a hand-written reverse pass: `F_i = Σ_{e: i_e=i} f_e − Σ_{e: j_e=i} f_e`;
//! stress (ASE convention, eV/Å³, Voigt `xx yy zz yz xz xy`) `σ_ab = Σ_e r_a f_b / V`
//! (= sevenn's `−PRED_STRESS`, reordered as its calculator does).

use crate::backend::{Backend, CpuBackend};
use crate::checkpoint::{Checkpoint, Value};
use crate::error::{ModelError, Result};
use crate::graph::{Graph, Structure};
use crate::nn::{normalize2mom_torch, silu, BesselBasis, Cutoff, FullyConnectedNet, Gate, Linear};
use crate::scalar::Scalar;
use equikern_core::so3::{spherical_harmonics_with_grad, ShNormalization};
use equikern_core::spec::builders::channelwise;
use equikern_core::{Irrep, Irreps, MulIr, Oracle, Parity, TensorProduct};
use std::cell::Cell;
use std::collections::HashMap;
use std::time::Instant;

/// Where one step's wall-clock time went (seconds, host clock). The device phases are
/// synchronous: each convolution waits for the device before its results are read back.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepProfile {
    /// Radius graph on the host (0 for [`SevenNet::evaluate_graph_on`]).
    pub neighbour_list_s: f64,
    /// The backend's graph (edge lists, CSR views; index tables go to the device with the
    /// first convolution and count there).
    pub graph_s: f64,
    /// Edge geometry (lengths, radial basis, spherical harmonics and their derivatives) and
    /// the assembly of forces and stress from `∂E/∂r_e`, on the host in f64.
    pub edge_geometry_s: f64,
    /// Dense layers (`Linear`, radial MLP, `Gate`, forward and backward): on the host unless
    /// the backend runs them itself.
    pub dense_s: f64,
    /// Convolutions (forward and backward) on the backend, without their transfers.
    pub conv_s: f64,
    /// Host ↔ device transfers ([`crate::backend::DeviceCounters::transfer_s`]).
    pub transfer_s: f64,
    /// The whole step.
    pub total_s: f64,
    pub atoms: usize,
    pub edges: usize,
}

impl StepProfile {
    /// What the named phases leave over (one-hot, residual sums, scaling, bookkeeping).
    pub fn other_s(&self) -> f64 {
        (self.total_s
            - self.neighbour_list_s
            - self.graph_s
            - self.edge_geometry_s
            - self.dense_s
            - self.conv_s
            - self.transfer_s)
            .max(0.0)
    }
}

/// Phase timers of one step.
#[derive(Default)]
struct Clock {
    graph: Cell<f64>,
    edge_geometry: Cell<f64>,
    dense: Cell<f64>,
    conv: Cell<f64>,
    transfer: Cell<f64>,
}

impl Clock {
    fn add(&self, c: &Cell<f64>, since: Instant) {
        c.set(c.get() + since.elapsed().as_secs_f64());
    }
    fn time<R>(&self, c: &Cell<f64>, f: impl FnOnce() -> R) -> R {
        let t = Instant::now();
        let r = f();
        self.add(c, t);
        r
    }
    /// A backend call that may move data: its transfers (the backend's counter) are split off.
    fn conv<T: Scalar, B: Backend<T>, R>(&self, be: &B, f: impl FnOnce() -> R) -> R {
        let before = be.counters().transfer_s;
        let t = Instant::now();
        let r = f();
        let all = t.elapsed().as_secs_f64();
        let moved = be.counters().transfer_s - before;
        self.transfer.set(self.transfer.get() + moved);
        self.conv.set(self.conv.get() + (all - moved).max(0.0));
        r
    }
    fn profile(&self, total_s: f64, atoms: usize, edges: usize) -> StepProfile {
        StepProfile {
            neighbour_list_s: 0.0,
            graph_s: self.graph.get(),
            edge_geometry_s: self.edge_geometry.get(),
            dense_s: self.dense.get(),
            conv_s: self.conv.get(),
            transfer_s: self.transfer.get(),
            total_s,
            atoms,
            edges,
        }
    }
}

/// One NequIP interaction block, computing in `T`.
#[derive(Clone, Debug)]
pub struct Interaction<T = f64> {
    pub irreps_x: Irreps,
    pub irreps_mid: Irreps,
    pub sc: Linear<T>,
    pub lin1: Linear<T>,
    pub weight_nn: FullyConnectedNet<T>,
    /// The convolution's tensor product (uvu, per-edge weights): what device backends
    /// compile.
    pub product: TensorProduct,
    /// Its CPU oracle in `T` (what [`CpuBackend`] runs).
    pub tp: Oracle<T>,
    /// `(dim_in1, dim_in2, dim_out, weight_numel)` of the product.
    pub tp_dims: (usize, usize, usize, usize),
    pub denominator: f64,
    pub lin2: Linear<T>,
    pub gate: Gate<T>,
}

impl<T: Scalar> Interaction<T> {
    /// The same block computing in `U`.
    pub fn cast<U: Scalar>(&self) -> Interaction<U> {
        Interaction {
            irreps_x: self.irreps_x.clone(),
            irreps_mid: self.irreps_mid.clone(),
            sc: self.sc.cast(),
            lin1: self.lin1.cast(),
            weight_nn: self.weight_nn.cast(),
            tp: Oracle::new(&self.product).expect("the product built an oracle once already"),
            product: self.product.clone(),
            tp_dims: self.tp_dims,
            denominator: self.denominator,
            lin2: self.lin2.cast(),
            gate: self.gate.cast(),
        }
    }
}

/// Distance (Å) below which two atoms count as overlapping: [`SevenNet::evaluate`] refuses
/// such structures (the model was never trained there; forces would be meaningless).
pub const MIN_DISTANCE: f64 = 0.1;

pub(crate) fn check_overlap(g: &Graph) -> Result<()> {
    let m2 = MIN_DISTANCE * MIN_DISTANCE;
    for e in 0..g.len() {
        let v = g.vec[e];
        let d2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
        if d2 < m2 {
            let (i, j) = (g.src[e], g.dst[e]);
            let what = if i == j {
                format!("atom {i} and its periodic image {:?}", g.shift[e])
            } else if g.shift[e] == [0, 0, 0] {
                format!("atoms {i} and {j}")
            } else {
                format!("atom {i} and a periodic image {:?} of atom {j}", g.shift[e])
            };
            return Err(ModelError::input(
                "positions",
                format!(
                    "overlapping atoms: {what} are {:.3e} Å apart (< {MIN_DISTANCE} Å)",
                    d2.sqrt()
                ),
            ));
        }
    }
    Ok(())
}

/// Options that are not in the checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The normalize2mom constant of silu; default: e3nn's own value (Monte Carlo, seed 0,
    /// re-created by [`normalize2mom_torch`]).
    pub silu_cst: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            silu_cst: normalize2mom_torch(silu),
        }
    }
}

/// The model, computing in `T` (the checkpoint loads as `SevenNet<f64>`; `cast::<f32>()` gives
/// the f32 model). The edge geometry (lengths, radial basis, cutoff, spherical harmonics and
/// their derivatives) is computed in f64 and rounded to `T`; per-atom energies, forces and
/// stress are accumulated in f64.
#[derive(Clone, Debug)]
pub struct SevenNet<T = f64> {
    pub cutoff: f64,
    /// atomic number → one-hot index.
    pub type_map: HashMap<u32, usize>,
    pub num_species: usize,
    pub bessel: BesselBasis,
    pub envelope: Cutoff,
    pub sh_ls: Vec<u32>,
    pub embed: Linear<T>,
    pub layers: Vec<Interaction<T>>,
    pub readout_hidden: Linear<T>,
    pub readout_energy: Linear<T>,
    pub shift: Vec<f64>,
    pub scale: Vec<f64>,
    pub options: Options,
}

/// Energy (eV), per-atom energies, forces (eV/Å), stress (ASE: eV/Å³, Voigt xx yy zz yz xz xy;
/// `None` unless fully periodic), and the number of edges.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub energy: f64,
    pub atomic_energies: Vec<f64>,
    pub forces: Vec<[f64; 3]>,
    pub stress: Option<[f64; 6]>,
    pub num_edges: usize,
}

impl Prediction {
    /// The prediction from per-atom energies, forces and the virial `Σ_e r_e ⊗ f_e`
    /// (`virial[a][b] = Σ r_a f_b`): energy = Σ atomic, stress (ASE, Voigt xx yy zz yz xz
    /// xy) = virial / V when all three directions are periodic (else `None`).
    pub fn assemble(
        s: &Structure,
        atomic: Vec<f64>,
        forces: Vec<[f64; 3]>,
        virial: [[f64; 3]; 3],
        num_edges: usize,
    ) -> Prediction {
        let vol = s.volume();
        let stress = (s.pbc.iter().all(|&p| p) && vol > 1e-3).then(|| {
            [
                virial[0][0] / vol,
                virial[1][1] / vol,
                virial[2][2] / vol,
                virial[1][2] / vol,
                virial[2][0] / vol,
                virial[0][1] / vol,
            ]
        });
        Prediction {
            energy: atomic.iter().sum(),
            atomic_energies: atomic,
            forces,
            stress,
            num_edges,
        }
    }
}

fn cfg<'a>(c: &'a Value, field: &str) -> Result<&'a Value> {
    c.get(field)
        .ok_or_else(|| ModelError::config(field, "missing from the checkpoint config"))
}
fn cfg_f64(c: &Value, field: &str) -> Result<f64> {
    cfg(c, field)?
        .as_f64()
        .ok_or_else(|| ModelError::config(field, "expected a number"))
}
fn cfg_i64(c: &Value, field: &str) -> Result<i64> {
    cfg(c, field)?
        .as_i64()
        .ok_or_else(|| ModelError::config(field, "expected an integer"))
}
fn require(c: &Value, field: &str, ok: impl Fn(&Value) -> bool, what: &str) -> Result<()> {
    match c.get(field) {
        Some(v) if ok(v) => Ok(()),
        None => Ok(()),
        Some(v) => Err(ModelError::config(
            field,
            format!("unsupported value {} (supported: {what})", v.to_json()),
        )),
    }
}
fn parse_irreps(s: &str, field: &str) -> Result<Irreps> {
    s.parse::<Irreps>()
        .map_err(|e| ModelError::config(field, e.to_string()))
}

/// sevenn ≥ 0.11 sorts the convolution's instructions by output (for cuEquivariance) and
/// fixes 3j signs; checkpoints written before (`version` < 0.11.0, or 0.11.0.dev0 — 7net-0
/// is 0.9.1) store the radial MLP's last layer in the unsorted (NequIP) instruction order and
/// relative to their own saved `_w3j_*` tables. This reports whether that applies.
fn version_before_sorted_conv(v: &str) -> Option<bool> {
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() < 3 {
        return None;
    }
    let num: Vec<u64> = parts[..3]
        .iter()
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let t = (num[0], num[1], num[2]);
    Some(t < (0, 11, 0) || (t == (0, 11, 0) && parts.get(3) == Some(&"dev0")))
}

/// Re-orders the last radial-MLP layer `w [h, numel]` from the old (unsorted) instruction
/// order to the sorted one, negating the columns of a path whose saved 3j table
/// (`{t}_convolution.convolution._compiled_main_left_right._w3j_l1_l2_l3`, only for l1, l2,
/// l3 > 0) is the negative of e3nn ≥ 0.5's (= equikern's) table, as sevenn does on load.
fn sort_old_convolution_weights(
    t: usize,
    old: &equikern_core::TpSpec,
    sorted: &equikern_core::TpSpec,
    irreps_mid: &Irreps,
    w: &[f64],
    get: &mut Getter<'_>,
) -> std::result::Result<Vec<f64>, String> {
    let numel: usize = sorted
        .instructions
        .iter()
        .map(|i| sorted.irreps_in1.0[i.i_in1].mul)
        .sum();
    if w.len().checked_rem(numel) != Some(0) {
        return Err(format!(
            "{} weights do not split into columns of {numel}",
            w.len()
        ));
    }
    let h = w.len() / numel;
    let mut offs = Vec::new();
    let mut o = 0;
    for ins in &sorted.instructions {
        offs.push(o);
        o += sorted.irreps_in1.0[ins.i_in1].mul;
    }
    let mut out = vec![0.0; w.len()];
    let mut src = 0;
    for ins in &old.instructions {
        let j = sorted
            .instructions
            .iter()
            .position(|s| (s.i_in1, s.i_in2, s.i_out) == (ins.i_in1, ins.i_in2, ins.i_out))
            .ok_or("old instruction missing from the sorted list")?;
        let mul = old.irreps_in1.0[ins.i_in1].mul;
        let (l1, l2, l3) = (
            old.irreps_in1.0[ins.i_in1].ir.l,
            old.irreps_in2.0[ins.i_in2].ir.l,
            irreps_mid.0[ins.i_out].ir.l,
        );
        let mut sign = 1.0;
        if l1 > 0 && l2 > 0 && l3 > 0 {
            let key = format!(
                "{t}_convolution.convolution._compiled_main_left_right._w3j_{l1}_{l2}_{l3}"
            );
            let dims = [
                2 * l1 as usize + 1,
                2 * l2 as usize + 1,
                2 * l3 as usize + 1,
            ];
            let saved = get(&key, &dims).map_err(|e| e.to_string())?;
            let ours = equikern_core::so3::wigner_3j(l1, l2, l3).map_err(|e| e.to_string())?;
            let close = |s: f64| {
                saved.iter().enumerate().all(|(n, &v)| {
                    let (a, b, c) = (
                        n / (dims[1] * dims[2]),
                        (n / dims[2]) % dims[1],
                        n % dims[2],
                    );
                    let r = s * ours.get(a, b, c);
                    (v - r).abs() <= 1e-8 + 1e-5 * r.abs()
                })
            };
            if close(1.0) {
            } else if close(-1.0) {
                sign = -1.0;
            } else {
                return Err(format!(
                    "{key} matches neither sign of wigner_3j({l1},{l2},{l3})"
                ));
            }
        }
        for r in 0..h {
            for k in 0..mul {
                out[r * numel + offs[j] + k] = sign * w[r * numel + src + k];
            }
        }
        src += mul;
    }
    Ok(out)
}

type Getter<'a> = dyn FnMut(&str, &[usize]) -> Result<Vec<f64>> + 'a;

/// e3nn `Linear(i → o)` with weight `<name>.linear.weight`.
fn lin(get: &mut Getter<'_>, name: &str, i: &Irreps, o: &Irreps) -> Result<Linear<f64>> {
    let key = format!("{name}.linear.weight");
    let n = Linear::weight_numel(i, o);
    Linear::new(i.clone(), o.clone(), get(&key, &[n])?, &key)
}

/// The irreps of `irreps_x ⊗ filter` kept by sevenn's `infer_irreps_out` (as a set):
/// `l ≤ lmax`, and even parity only when `even_only`.
fn tp_target(irreps_x: &Irreps, filter: &Irreps, lmax: u32, even_only: bool) -> Irreps {
    let mut out: Vec<MulIr> = Vec::new();
    for a in irreps_x.iter() {
        for b in filter.iter() {
            for ir in a.ir.product(b.ir) {
                if ir.l <= lmax
                    && !(even_only && ir.p == Parity::Odd)
                    && !out.iter().any(|m| m.ir == ir)
                {
                    out.push(MulIr::new(1, ir));
                }
            }
        }
    }
    Irreps(out)
}

impl SevenNet<f64> {
    /// Builds the model from a loaded checkpoint, validating every shape against the config.
    pub fn from_checkpoint(ck: &Checkpoint, options: Options) -> Result<Self> {
        Self::build(&ck.config, options, &mut |key, shape| {
            ck.tensor_f64(key, shape)
        })
    }

    /// A model of the architecture `config` describes with pseudo-random weights in
    /// [−1, 1) (denominators in [2, 4), scales in [0.5, 1.5)): for tests and benchmarks
    /// that must run without the real checkpoint.
    pub fn random(config: &Value, options: Options, seed: u64) -> Result<Self> {
        let mut state = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 11) as f64) / ((1u64 << 53) as f64) * 2.0 - 1.0
        };
        Self::build(config, options, &mut |key, shape| {
            let n: usize = shape.iter().product();
            Ok((0..n)
                .map(|_| {
                    let u = next();
                    if key.ends_with("denominator") {
                        3.0 + u
                    } else if key.ends_with(".scale") {
                        1.0 + 0.5 * u
                    } else if key.ends_with("coeffs") {
                        0.0
                    } else {
                        u
                    }
                })
                .collect())
        })
        .map(|mut m| {
            // Bessel frequencies near their initial values nπ/r_c.
            let rc = m.cutoff;
            for (n, c) in m.bessel.coeffs.iter_mut().enumerate() {
                *c = (n + 1) as f64 * std::f64::consts::PI / rc * (1.0 + 0.05 * next());
            }
            m
        })
    }

    /// Builds from a config and a source of named tensors (`get(key, shape)`).
    pub fn build(config: &Value, options: Options, get: &mut Getter<'_>) -> Result<Self> {
        let c = config;
        // Refuse what this implementation does not cover, naming the field.
        require(
            c,
            "interaction_type",
            |v| v.as_str() == Some("nequip"),
            "\"nequip\"",
        )?;
        require(
            c,
            "self_connection_type",
            |v| v.as_str() == Some("linear"),
            "\"linear\"",
        )?;
        require(
            c,
            "use_bias_in_linear",
            |v| v.as_bool() == Some(false),
            "false",
        )?;
        require(c, "readout_as_fcn", |v| v.as_bool() == Some(false), "false")?;
        require(c, "_normalize_sph", |v| v.as_bool() == Some(true), "true")?;
        require(c, "is_parity", |v| v.as_bool() == Some(false), "false")?;
        require(c, "act_radial", |v| v.as_str() == Some("silu"), "\"silu\"")?;
        require(c, "use_modality", |v| v.as_bool() == Some(false), "false")?;
        for f in ["act_scalar", "act_gate"] {
            require(
                c,
                f,
                |v| v.get("e").and_then(Value::as_str) == Some("silu"),
                "{\"e\": \"silu\"}",
            )?;
        }
        let cutoff = cfg_f64(c, "cutoff")?;
        let old_conv_layout = match c.get("version").and_then(Value::as_str) {
            Some(v) => version_before_sorted_conv(v)
                .ok_or_else(|| ModelError::config("version", format!("unparsable {v:?}")))?,
            None => false,
        };
        let num_species = usize::try_from(cfg_i64(c, "_number_of_species")?)
            .map_err(|_| ModelError::config("_number_of_species", "negative"))?;
        let mut type_map = HashMap::new();
        match cfg(c, "_type_map")? {
            Value::Dict(items) => {
                for (k, v) in items {
                    let z = k.as_i64().and_then(|z| u32::try_from(z).ok());
                    let i = v.as_i64().and_then(|i| usize::try_from(i).ok());
                    match (z, i) {
                        (Some(z), Some(i)) if i < num_species => {
                            type_map.insert(z, i);
                        }
                        _ => {
                            return Err(ModelError::config(
                                "_type_map",
                                format!("bad entry {k:?}: {v:?}"),
                            ))
                        }
                    }
                }
            }
            _ => return Err(ModelError::config("_type_map", "expected a dict")),
        }
        // Edge embedding
        let rb = cfg(c, "radial_basis")?;
        if rb.get("radial_basis_name").and_then(Value::as_str) != Some("bessel") {
            return Err(ModelError::config(
                "radial_basis",
                "only \"bessel\" is supported",
            ));
        }
        let nb = rb
            .get("bessel_basis_num")
            .and_then(Value::as_i64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                ModelError::config("radial_basis.bessel_basis_num", "expected an integer")
            })?;
        let bessel = BesselBasis {
            cutoff,
            coeffs: get("edge_embedding.basis_function.coeffs", &[nb])?,
        };
        let cf = cfg(c, "cutoff_function")?;
        let envelope = match cf.get("cutoff_function_name").and_then(Value::as_str) {
            Some("XPLOR") => Cutoff::Xplor {
                r_on: cf.get("cutoff_on").and_then(Value::as_f64).ok_or_else(|| {
                    ModelError::config("cutoff_function.cutoff_on", "expected a number")
                })?,
                r_cut: cutoff,
            },
            Some("poly_cut") => Cutoff::Polynomial {
                r_cut: cutoff,
                p: cf
                    .get("poly_cut_p_value")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| {
                        ModelError::config("cutoff_function.poly_cut_p_value", "expected a number")
                    })?,
            },
            other => {
                return Err(ModelError::config(
                    "cutoff_function.cutoff_function_name",
                    format!("unsupported {other:?} (XPLOR, poly_cut)"),
                ))
            }
        };
        let lmax = u32::try_from(cfg_i64(c, "lmax")?)
            .map_err(|_| ModelError::config("lmax", "negative"))?;
        let lmax_edge = match c.get("lmax_edge").and_then(Value::as_i64) {
            Some(l) if l > 0 => l as u32,
            _ => lmax,
        };
        let sh_ls: Vec<u32> = (0..=lmax_edge).collect();
        let filter = Irreps(
            sh_ls
                .iter()
                .map(|&l| MulIr::new(1, Irrep::new(l, Parity::Even)))
                .collect(),
        );

        let n_layers = usize::try_from(cfg_i64(c, "num_convolution_layer")?)
            .map_err(|_| ModelError::config("num_convolution_layer", "negative"))?;
        let manual = cfg(c, "irreps_manual")?.as_seq().ok_or_else(|| {
            ModelError::config(
                "irreps_manual",
                "expected a list of irreps strings (computed irreps not supported)",
            )
        })?;
        if manual.len() != n_layers + 1 {
            return Err(ModelError::config(
                "irreps_manual",
                format!("{} entries for {n_layers} layers", manual.len()),
            ));
        }
        let manual: Vec<Irreps> = manual
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| ModelError::config("irreps_manual", "entry is not a string"))
                    .and_then(|s| parse_irreps(s, "irreps_manual"))
            })
            .collect::<Result<_>>()?;
        let hidden: Vec<usize> = cfg(c, "weight_nn_hidden_neurons")?
            .as_seq()
            .and_then(|s| {
                s.iter()
                    .map(|v| v.as_i64().and_then(|i| usize::try_from(i).ok()))
                    .collect()
            })
            .ok_or_else(|| {
                ModelError::config("weight_nn_hidden_neurons", "expected a list of integers")
            })?;

        let one_hot = Irreps(vec![MulIr::new(num_species, Irrep::new(0, Parity::Even))]);
        let embed = lin(get, "onehot_to_feature_x", &one_hot, &manual[0])?;
        let mut layers = Vec::with_capacity(n_layers);
        let mut irreps_x = manual[0].clone();
        for t in 0..n_layers {
            let irreps_out = &manual[t + 1];
            let last = t + 1 == n_layers;
            // Gate: scalars = l = 0 entries, gated = the rest (must already be sorted).
            let mut n_scalars = 0;
            let mut gated = Vec::new();
            for m in irreps_out.iter() {
                if m.ir.l == 0 {
                    if m.ir.p != Parity::Even {
                        return Err(ModelError::config(
                            "irreps_manual",
                            "odd scalars are not supported",
                        ));
                    }
                    if !gated.is_empty() {
                        return Err(ModelError::config(
                            "irreps_manual",
                            "scalars after gated irreps are not supported",
                        ));
                    }
                    n_scalars += m.mul;
                } else {
                    gated.push(*m);
                }
            }
            let gated = Irreps(gated).simplify();
            if gated.sort().irreps != gated {
                return Err(ModelError::config(
                    "irreps_manual",
                    format!("gated irreps {gated} are not sorted"),
                ));
            }
            let n_gates: usize = gated.iter().map(|m| m.mul).sum();
            let mut gate_in = vec![MulIr::new(n_scalars + n_gates, Irrep::new(0, Parity::Even))];
            gate_in.extend(gated.iter().copied());
            let gate_in = Irreps(gate_in).simplify();
            let gate = Gate::new(n_scalars, &gated, options.silu_cst);

            let lmax_out = irreps_out.lmax().unwrap_or(0);
            let target = tp_target(&irreps_x, &filter, lmax_out, last);
            let spec = channelwise(&irreps_x, &filter, &target, true);
            let tp = spec
                .build()
                .map_err(|e| ModelError::Tp(format!("layer {t}: {e}")))?;
            let irreps_mid = tp.spec.irreps_out.clone();
            let oracle = Oracle::new(&tp).map_err(|e| ModelError::Tp(format!("layer {t}: {e}")))?;
            let tp_dims = (tp.dim_in1, tp.dim_in2, tp.dim_out, tp.weight_numel);

            let prefix = format!("{t}_convolution.weight_nn");
            let mut widths = vec![nb];
            widths.extend(&hidden);
            widths.push(tp.weight_numel);
            let mut fc_layers = Vec::new();
            for k in 0..widths.len() - 1 {
                let key = format!("{prefix}.layer{k}.weight");
                let w = get(&key, &[widths[k], widths[k + 1]])?;
                fc_layers.push((widths[k], widths[k + 1], w));
            }
            if old_conv_layout {
                let last = fc_layers.len() - 1;
                let key = format!("{prefix}.layer{last}.weight");
                let old = channelwise(&irreps_x, &filter, &target, false);
                let w = &fc_layers[last].2;
                let fixed = sort_old_convolution_weights(t, &old, &spec, &irreps_mid, w, get)
                    .map_err(|why| ModelError::key(&key, why))?;
                fc_layers[last].2 = fixed;
            }
            let weight_nn = FullyConnectedNet::new(fc_layers, options.silu_cst, &prefix)?;
            let den_key = format!("{t}_convolution.denominator");
            let denominator = get(&den_key, &[1])?[0];
            if !(denominator.is_finite() && denominator != 0.0) {
                return Err(ModelError::key(den_key, "must be finite and non-zero"));
            }
            layers.push(Interaction {
                sc: lin(
                    get,
                    &format!("{t}_self_connection_intro"),
                    &irreps_x,
                    &gate_in,
                )?,
                lin1: lin(
                    get,
                    &format!("{t}_self_interaction_1"),
                    &irreps_x,
                    &irreps_x,
                )?,
                lin2: lin(
                    get,
                    &format!("{t}_self_interaction_2"),
                    &irreps_mid.simplify(),
                    &gate_in,
                )?,
                weight_nn,
                tp: oracle,
                product: tp,
                tp_dims,
                denominator,
                gate,
                irreps_x: irreps_x.clone(),
                irreps_mid,
            });
            irreps_x = irreps_out.clone();
        }
        if irreps_x.iter().any(|m| m.ir.l != 0) {
            return Err(ModelError::config(
                "irreps_manual",
                "the last layer must output scalars only",
            ));
        }
        let hidden_irreps = Irreps(vec![MulIr::new(
            irreps_x.dim() / 2,
            Irrep::new(0, Parity::Even),
        )]);
        let readout_hidden = lin(get, "reduce_input_to_hidden", &irreps_x, &hidden_irreps)?;
        let readout_energy = lin(
            get,
            "reduce_hidden_to_energy",
            &hidden_irreps,
            &Irreps(vec![MulIr::new(1, Irrep::new(0, Parity::Even))]),
        )?;
        let shift = get("rescale_atomic_energy.shift", &[num_species])?;
        let scale = get("rescale_atomic_energy.scale", &[num_species])?;
        Ok(SevenNet {
            cutoff,
            type_map,
            num_species,
            bessel,
            envelope,
            sh_ls,
            embed,
            layers,
            readout_hidden,
            readout_energy,
            shift,
            scale,
            options,
        })
    }

    /// Loads a SevenNet checkpoint (`.pth`) and builds the model with the default options.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let ck = Checkpoint::load(path)?;
        Self::from_checkpoint(&ck, Options::default())
    }
}

/// The edge geometry of one structure in f64: values (rounded to `T`) and the derivatives the
/// reverse pass needs.
struct EdgeGeometry<T> {
    /// Radial embedding `[edges, nb]` (Bessel × cutoff envelope) in `T`.
    emb: Vec<T>,
    /// Spherical harmonics `[edges, sh_dim]` in `T`.
    sh: Vec<T>,
    demb_dr: Vec<f64>,
    dsh: Vec<[f64; 3]>,
    r: Vec<f64>,
}

impl<T: Scalar> SevenNet<T> {
    /// The same model computing in `U` (weights cast once; e.g. `model.cast::<f32>()`).
    pub fn cast<U: Scalar>(&self) -> SevenNet<U> {
        SevenNet {
            cutoff: self.cutoff,
            type_map: self.type_map.clone(),
            num_species: self.num_species,
            bessel: self.bessel.clone(),
            envelope: self.envelope.clone(),
            sh_ls: self.sh_ls.clone(),
            embed: self.embed.cast(),
            layers: self.layers.iter().map(Interaction::cast).collect(),
            readout_hidden: self.readout_hidden.cast(),
            readout_energy: self.readout_energy.cast(),
            shift: self.shift.clone(),
            scale: self.scale.clone(),
            options: self.options,
        }
    }

    /// The atomic numbers the model knows, ascending.
    pub fn species(&self) -> Vec<u32> {
        let mut z: Vec<u32> = self.type_map.keys().copied().collect();
        z.sort_unstable();
        z
    }

    /// One-hot indices of the atoms' species; an element the model lacks is an error naming
    /// the atom and the element.
    pub fn types_of(&self, numbers: &[u32]) -> Result<Vec<usize>> {
        numbers
            .iter()
            .enumerate()
            .map(|(a, z)| {
                self.type_map.get(z).copied().ok_or_else(|| {
                    let sym = crate::elements::symbol(*z).unwrap_or("?");
                    ModelError::input(
                        format!("numbers[{a}]"),
                        format!(
                            "element {sym} (Z = {z}) is not one of the model's {} species",
                            self.num_species
                        ),
                    )
                })
            })
            .collect()
    }

    /// Energy, forces and stress of a structure, on the CPU in `T`. Errors: an element the
    /// model lacks, a non-finite coordinate, two atoms (or an atom and a periodic image)
    /// closer than [`MIN_DISTANCE`].
    pub fn evaluate(&self, s: &Structure) -> Result<Prediction> {
        self.evaluate_on(&CpuBackend, s)
    }

    /// [`Self::evaluate`] on `backend`: the radius graph is built once (on the host, f64) and
    /// handed to the backend once ([`Backend::graph`]), then every layer reuses it.
    pub fn evaluate_on<B: Backend<T>>(&self, backend: &B, s: &Structure) -> Result<Prediction> {
        self.evaluate_profiled_on(backend, s).map(|r| r.0)
    }

    /// [`Self::evaluate_on`], with the wall-clock time of each phase of the step.
    pub fn evaluate_profiled_on<B: Backend<T>>(
        &self,
        backend: &B,
        s: &Structure,
    ) -> Result<(Prediction, StepProfile)> {
        let t0 = Instant::now();
        s.validate()?;
        let g = Graph::build(s, self.cutoff)?;
        let nl = t0.elapsed().as_secs_f64();
        let (p, mut prof) = self.evaluate_graph_on(backend, s, &g)?;
        prof.neighbour_list_s = nl;
        prof.total_s = t0.elapsed().as_secs_f64();
        Ok((p, prof))
    }

    /// Energy, forces and stress of `s` for its radius graph `g` (`Graph::build(s,
    /// self.cutoff)`, built by the caller: the model-only part of a step), with the time of
    /// each phase (`neighbour_list_s` is 0 here).
    pub fn evaluate_graph_on<B: Backend<T>>(
        &self,
        backend: &B,
        s: &Structure,
        g: &Graph,
    ) -> Result<(Prediction, StepProfile)> {
        let t0 = Instant::now();
        s.validate()?;
        let clock = Clock::default();
        let types = self.types_of(&s.numbers)?;
        check_overlap(g)?;
        let n = s.positions.len();
        let (receiver, sender) = edge_lists(n, &g.src, &g.dst)?;
        let bg = clock.time(&clock.graph, || backend.graph(n, &receiver, &sender))?;
        let (atomic, fe) = self.edge_grad_clocked(backend, &types, &bg, &g.vec, &clock)?;
        let t_forces = Instant::now();
        let mut forces = vec![[0.0; 3]; n];
        let mut virial = [[0.0; 3]; 3];
        for e in 0..g.len() {
            for d in 0..3 {
                forces[g.src[e]][d] += fe[e][d];
                forces[g.dst[e]][d] -= fe[e][d];
                for b in 0..3 {
                    virial[d][b] += g.vec[e][d] * fe[e][b];
                }
            }
        }
        clock.add(&clock.edge_geometry, t_forces);
        let p = Prediction::assemble(s, atomic, forces, virial, g.len());
        Ok((p, clock.profile(t0.elapsed().as_secs_f64(), n, g.len())))
    }

    /// Per-atom energies and `∂E/∂r_e` for a given graph (`src` = center i, `dst` = neighbour
    /// j, `vec` = `pos_j − pos_i + S·cell`), on the CPU in `T`.
    pub fn energy_and_edge_grad(
        &self,
        types: &[usize],
        src: &[usize],
        dst: &[usize],
        vec: &[[f64; 3]],
    ) -> Result<(Vec<f64>, Vec<[f64; 3]>)> {
        let ne = src.len();
        if dst.len() != ne || vec.len() != ne {
            return Err(ModelError::input(
                "edges",
                "src, dst and vec lengths differ",
            ));
        }
        let (receiver, sender) = edge_lists(types.len(), src, dst)?;
        let g = Backend::<T>::graph(&CpuBackend, types.len(), &receiver, &sender)?;
        self.energy_and_edge_grad_on(&CpuBackend, types, &g, vec)
    }

    fn edge_geometry(&self, vec: &[[f64; 3]]) -> Result<EdgeGeometry<T>> {
        let ne = vec.len();
        let nb = self.bessel.coeffs.len();
        let sh_dim: usize = self.sh_ls.iter().map(|l| 2 * *l as usize + 1).sum();
        let mut emb = vec![T::ZERO; ne * nb];
        let mut demb_dr = vec![0.0; ne * nb];
        let mut r = vec![0.0; ne];
        let mut sh = vec![T::ZERO; ne * sh_dim];
        let mut dsh = vec![[0.0; 3]; ne * sh_dim];
        for e in 0..ne {
            let v = vec[e];
            let re = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
            if !(re > 0.0 && re.is_finite()) {
                return Err(ModelError::input(
                    format!("edges[{e}]"),
                    "zero-length or non-finite edge vector",
                ));
            }
            r[e] = re;
            let (b, db) = self.bessel.eval(re);
            let (f, df) = self.envelope.eval(re);
            for k in 0..nb {
                emb[e * nb + k] = T::from_f64(b[k] * f);
                demb_dr[e * nb + k] = db[k] * f + b[k] * df;
            }
            let (y, gy) =
                spherical_harmonics_with_grad(&self.sh_ls, v, true, ShNormalization::Component)
                    .map_err(|err| ModelError::Tp(err.to_string()))?;
            for (o, &yv) in sh[e * sh_dim..][..sh_dim].iter_mut().zip(&y) {
                *o = T::from_f64(yv);
            }
            dsh[e * sh_dim..][..sh_dim].copy_from_slice(&gy);
        }
        Ok(EdgeGeometry {
            emb,
            sh,
            demb_dr,
            dsh,
            r,
        })
    }

    /// Per-atom energies and `∂E/∂r_e` on `backend`, for a graph it prepared
    /// ([`Backend::graph`]) whose edge `e` has vector `vec[e]`.
    pub fn energy_and_edge_grad_on<B: Backend<T>>(
        &self,
        be: &B,
        types: &[usize],
        g: &B::Graph,
        vec: &[[f64; 3]],
    ) -> Result<(Vec<f64>, Vec<[f64; 3]>)> {
        self.edge_grad_clocked(be, types, g, vec, &Clock::default())
    }

    fn edge_grad_clocked<B: Backend<T>>(
        &self,
        be: &B,
        types: &[usize],
        g: &B::Graph,
        vec: &[[f64; 3]],
        clock: &Clock,
    ) -> Result<(Vec<f64>, Vec<[f64; 3]>)> {
        let n = types.len();
        let ne = vec.len();
        if let Some(a) = types.iter().position(|&t| t >= self.num_species) {
            return Err(ModelError::input(
                format!("types[{a}]"),
                "species index out of range",
            ));
        }
        // ---- edge embedding (f64, rounded to T)
        let t_geo = Instant::now();
        let mut geo = self.edge_geometry(vec)?;
        clock.add(&clock.edge_geometry, t_geo);
        let nb = self.bessel.coeffs.len();
        let sh_dim: usize = self.sh_ls.iter().map(|l| 2 * *l as usize + 1).sum();
        // The spherical harmonics go to the backend once; every layer reads them there.
        let sh = clock.conv(be, || be.edge_sh(g, std::mem::take(&mut geo.sh)))?;
        let dense = &clock.dense;
        // ---- forward
        let ns = self.num_species;
        let mut onehot = vec![T::ZERO; n * ns];
        for (a, &t) in types.iter().enumerate() {
            onehot[a * ns + t] = T::ONE;
        }
        let mut x = clock.time(dense, || be.linear(&self.embed, &onehot))?;
        struct Saved<T, S> {
            conv: S,
            tape: crate::nn::fcnet::FcTape<T>,
            y: Vec<T>,
        }
        let mut saved = Vec::with_capacity(self.layers.len());
        for (t, layer) in self.layers.iter().enumerate() {
            let den = T::from_f64(layer.denominator);
            let sc = clock.time(dense, || be.linear(&layer.sc, &x))?;
            let h = clock.time(dense, || be.linear(&layer.lin1, &x))?;
            let (w, tape) = clock.time(dense, || be.radial(&layer.weight_nn, &geo.emb))?;
            let (mut agg, conv) = clock.conv(be, || be.conv_forward(t, layer, g, &sh, h, w))?;
            for a in &mut agg {
                *a /= den;
            }
            let mut y = clock.time(dense, || be.linear(&layer.lin2, &agg))?;
            for (a, b) in y.iter_mut().zip(&sc) {
                *a += *b;
            }
            x = clock.time(dense, || be.gate(&layer.gate, &y))?;
            saved.push(Saved { conv, tape, y });
        }
        let hid = clock.time(dense, || be.linear(&self.readout_hidden, &x))?;
        let out = clock.time(dense, || be.linear(&self.readout_energy, &hid))?;
        let atomic: Vec<f64> = (0..n)
            .map(|a| out[a].to_f64() * self.scale[types[a]] + self.shift[types[a]])
            .collect();
        // ---- backward: dE/d(everything), E = Σ atomic
        let ge: Vec<T> = types.iter().map(|&t| T::from_f64(self.scale[t])).collect();
        let g_hid = clock.time(dense, || be.linear_backward(&self.readout_energy, &ge))?;
        let mut gx = clock.time(dense, || be.linear_backward(&self.readout_hidden, &g_hid))?;
        let mut g_emb = vec![T::ZERO; ne * nb];
        let mut g_sh = vec![T::ZERO; ne * sh_dim];
        for (t, (layer, s)) in self.layers.iter().zip(saved).enumerate().rev() {
            let den = T::from_f64(layer.denominator);
            let gy = clock.time(dense, || be.gate_backward(&layer.gate, &s.y, &gx))?;
            let mut g_agg = clock.time(dense, || be.linear_backward(&layer.lin2, &gy))?;
            for a in &mut g_agg {
                *a /= den;
            }
            let grads = clock.conv(be, || be.conv_backward(t, layer, g, &sh, s.conv, &g_agg))?;
            for (a, b) in g_sh.iter_mut().zip(&grads.gy) {
                *a += *b;
            }
            let ge_l = clock.time(dense, || {
                be.radial_backward(&layer.weight_nn, &s.tape, &grads.gw)
            })?;
            for (a, b) in g_emb.iter_mut().zip(&ge_l) {
                *a += *b;
            }
            let mut g_in = clock.time(dense, || be.linear_backward(&layer.lin1, &grads.gx))?;
            let g_sc = clock.time(dense, || be.linear_backward(&layer.sc, &gy))?;
            for (a, b) in g_in.iter_mut().zip(g_sc) {
                *a += b;
            }
            gx = g_in;
        }
        drop(sh);
        let t_fe = Instant::now();
        // ---- edge vectors (f64)
        let mut fe = vec![[0.0; 3]; ne];
        for e in 0..ne {
            let g_r: f64 = (0..nb)
                .map(|k| g_emb[e * nb + k].to_f64() * geo.demb_dr[e * nb + k])
                .sum();
            for d in 0..3 {
                let mut v = g_r * vec[e][d] / geo.r[e];
                for c in 0..sh_dim {
                    v += g_sh[e * sh_dim + c].to_f64() * geo.dsh[e * sh_dim + c][d];
                }
                fe[e][d] = v;
            }
        }
        clock.add(&clock.edge_geometry, t_fe);
        Ok((atomic, fe))
    }
}

/// `(receiver, sender)` = `(src, dst)` as u32, each index checked against `n` atoms.
pub(crate) fn edge_lists(n: usize, src: &[usize], dst: &[usize]) -> Result<(Vec<u32>, Vec<u32>)> {
    if let Some(e) = (0..src.len()).find(|&e| src[e] >= n || dst[e] >= n) {
        return Err(ModelError::input(
            format!("edges[{e}]"),
            "atom index out of range",
        ));
    }
    if n > u32::MAX as usize {
        return Err(ModelError::input(
            "positions",
            format!("{n} atoms: more than 2^32 − 1"),
        ));
    }
    Ok((
        src.iter().map(|&i| i as u32).collect(),
        dst.iter().map(|&j| j as u32).collect(),
    ))
}
