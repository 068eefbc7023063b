//! [`CudaSevenNet`]: the whole SevenNet step on one CUDA device (see the module docs of
//! `cuda_model`).
//!
//! Memory policy: a layer's per-edge weights `w [E, weight_numel]` (and its radial MLP's
//! pre-activations `[E, hidden]`, which the MLP backward needs) are kept from the forward to
//! the backward while all layers' together fit [`KEEP_W_ENV`]'s budget (default
//! [`DEFAULT_KEEP_W_BYTES`]: 7net-0 in f32 keeps them up to ≈ 16,000 Si atoms; 4,096 atoms
//! need 1.9 GB). Beyond it (917,504 edges: 3,488 weights + 640 pre-activations per edge
//! would be 15 GB in f32) they are recomputed: the backward reruns each layer's radial MLP
//! from the edge embedding (the last layer's is still in place), one `w` buffer of
//! `E × max(weight_numel)` and one set of hidden buffers serve all layers, and the peak is
//! `w` + `gw` + 4 hidden `[E, 64]` ≈ 8.3 GB at 917,504 edges (f32). The MLP backward forms
//! input gradients only (no weight gradients), overwriting the activation buffers. Node
//! tensors are kept per layer (the conv input and the gate input, a few hundred values per
//! atom).

use super::buffers::{drv, Buf, Mem};
use super::gemm::{DevReal, Gemmer};
use super::launch_cfg;
use super::tables::{kernel_source, GateTable, LinearTable, LINEAR_ROWS};
use crate::backend::DeviceCounters;
use crate::error::{ModelError, Result};
use crate::graph::{Graph, Structure};
use crate::nn::{Cutoff, Linear};
use crate::sevennet::{check_overlap, edge_lists, Prediction, SevenNet, StepProfile};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, PushKernelArg};
use equikern::plan::{Direction, Tensor};
use equikern::{ConvGraph, ConvOp, Device};
use equikern_core::conv::End;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The kernels of `kernels.cu`, loaded once.
struct Kernels {
    edge_geometry: CudaFunction,
    edge_force: CudaFunction,
    one_hot: CudaFunction,
    linear: CudaFunction,
    gate: CudaFunction,
    gate_backward: CudaFunction,
    act: CudaFunction,
    act_backward: CudaFunction,
    gemm: CudaFunction,
    accumulate: CudaFunction,
    fill: CudaFunction,
    fill_f64: CudaFunction,
    readout: CudaFunction,
    forces: CudaFunction,
    virial_partial: CudaFunction,
    virial_final: CudaFunction,
}

/// A Linear on the device: table, coefficients, weights (`W` or per-path `Wᵀ`).
struct DevLinear<T> {
    tab: Buf<i32>,
    coef: Buf<T>,
    w: Buf<T>,
    dim_in: usize,
    dim_out: usize,
}

struct DevGate {
    tab: Buf<i32>,
    t: GateTable,
}

struct DevLayer<T> {
    sc: DevLinear<T>,
    sc_t: DevLinear<T>,
    lin1: DevLinear<T>,
    lin1_t: DevLinear<T>,
    lin2: DevLinear<T>,
    lin2_t: DevLinear<T>,
    /// `(h_in, h_out, W [h_in, h_out])` of the radial MLP.
    mlp: Vec<(usize, usize, Buf<T>)>,
    gate: DevGate,
    inv_den: T,
    d1: usize,
    dmid: usize,
    numel: usize,
}

struct Params<T> {
    embed: DevLinear<T>,
    readout_hidden: DevLinear<T>,
    readout_hidden_t: DevLinear<T>,
    readout_energy: DevLinear<T>,
    readout_energy_t: DevLinear<T>,
    layers: Vec<DevLayer<T>>,
    coeffs: Buf<f64>,
    scale: Buf<f64>,
    shift: Buf<f64>,
}

/// Per-step device tensors (grow-only).
struct Workspace<T> {
    vec: Buf<f64>,
    idx: Buf<u32>,
    emb: Buf<T>,
    sh: Buf<T>,
    onehot: Buf<T>,
    x: Buf<T>,
    sc: Buf<T>,
    agg: Buf<T>,
    hs: Vec<Buf<T>>,
    ys: Vec<Buf<T>>,
    hid: Buf<T>,
    out: Buf<T>,
    seed: Buf<T>,
    g_hid: Buf<T>,
    gx: Buf<T>,
    gy: Buf<T>,
    g_agg: Buf<T>,
    gxc: Buf<T>,
    tmp: Buf<T>,
    /// Radial-MLP pre-activations `[slot][hidden layer]` and outputs `[slot]`: one slot per
    /// layer when kept for the backward, else slot 0 for all (see the module docs).
    pre: Vec<Vec<Buf<T>>>,
    w: Vec<Buf<T>>,
    /// Hidden activations (forward), then their gradients (backward): shared scratch.
    act: Vec<Buf<T>>,
    gw: Buf<T>,
    /// Whether this structure keeps every layer's `w` and pre-activations.
    keep: bool,
    gsh_l: Buf<T>,
    g_sh: Buf<T>,
    g_emb: Buf<T>,
    fe: Buf<f64>,
    vpart: Buf<f64>,
    result: Buf<f64>,
}

/// Environment variable: bytes of device memory the per-layer radial-MLP outputs may take
/// to be kept for the backward instead of recomputed (`0`: always recompute).
pub const KEEP_W_ENV: &str = "EQUIKERN_MODEL_KEEP_W_BYTES";

/// Default of [`KEEP_W_ENV`]: 8 GiB.
pub const DEFAULT_KEEP_W_BYTES: u64 = 8 << 30;

/// Partial sums of the virial's first pass.
const VIRIAL_PARTS: usize = 1024;

/// SevenNet on one CUDA device in `T` (f32 or f64), every layer resident on the device.
pub struct CudaSevenNet<T: DevReal> {
    model: SevenNet<T>,
    device: Device,
    stream: Arc<CudaStream>,
    k: Kernels,
    gemm: Gemmer,
    params: Params<T>,
    ops: Vec<ConvOp>,
    ws: Mutex<Workspace<T>>,
    mem: Arc<Mem>,
    env: (i32, f64, f64),
    sh_dim: usize,
    keep_w_bytes: u64,
}

fn err(e: impl std::fmt::Display) -> ModelError {
    ModelError::backend("cuda", e)
}

fn cast<T: DevReal>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

impl<T: DevReal> DevLinear<T> {
    fn new(s: &Arc<CudaStream>, mem: &Arc<Mem>, t: LinearTable) -> Result<Self> {
        Ok(DevLinear {
            tab: Buf::from_host(s, mem, &t.tab)?,
            coef: Buf::from_host(s, mem, &cast::<T>(&t.coef))?,
            w: Buf::from_host(s, mem, &cast::<T>(&t.weight))?,
            dim_in: t.dim_in,
            dim_out: t.dim_out,
        })
    }
    fn fwd(s: &Arc<CudaStream>, mem: &Arc<Mem>, l: &Linear<T>) -> Result<Self> {
        Self::new(s, mem, LinearTable::forward(l)?)
    }
    fn bwd(s: &Arc<CudaStream>, mem: &Arc<Mem>, l: &Linear<T>) -> Result<Self> {
        Self::new(s, mem, LinearTable::transpose(l)?)
    }
}

impl<T: DevReal> CudaSevenNet<T> {
    /// Uploads every parameter of `model` to `device` (a CUDA device) once and compiles the
    /// kernels once (NVRTC, cached on disk by equikern-cuda).
    pub fn new(model: &SevenNet<T>, device: Device) -> Result<Self> {
        let cuda = device.cuda_device().ok_or_else(|| {
            ModelError::backend(
                device.name(),
                "CudaSevenNet needs a CUDA device (equikern::Backend::Cuda)",
            )
        })?;
        let stream = cuda.stream().clone();
        let lmax = model.sh_ls.iter().copied().max().unwrap_or(0);
        if model.sh_ls != (0..=lmax).collect::<Vec<_>>() {
            return Err(ModelError::Unsupported(format!(
                "spherical harmonics degrees {:?}: the CUDA evaluator needs 0..=lmax",
                model.sh_ls
            )));
        }
        let env = match model.envelope {
            Cutoff::Xplor { r_on, r_cut } if r_cut == model.bessel.cutoff => (0, r_on, 0.0),
            Cutoff::Polynomial { r_cut, p } if r_cut == model.bessel.cutoff => (1, 0.0, p),
            _ => {
                return Err(ModelError::Unsupported(
                    "cutoff envelope and Bessel basis with different cutoffs".into(),
                ))
            }
        };
        let src = kernel_source::<T>(lmax)?;
        let (module, _) = cuda
            .load_module_source(&format!("equikern-sevennet-{}", T::NAME), &src)
            .map_err(err)?;
        let f = |n: &str| module.load_function(n).map_err(err);
        let k = Kernels {
            edge_geometry: f("ek_edge_geometry")?,
            edge_force: f("ek_edge_force")?,
            one_hot: f("ek_one_hot")?,
            linear: f("ek_linear")?,
            gate: f("ek_gate")?,
            gate_backward: f("ek_gate_backward")?,
            act: f("ek_act")?,
            act_backward: f("ek_act_backward")?,
            gemm: f("ek_gemm")?,
            accumulate: f("ek_accumulate")?,
            fill: f("ek_fill")?,
            fill_f64: f("ek_fill_f64")?,
            readout: f("ek_readout")?,
            forces: f("ek_forces")?,
            virial_partial: f("ek_virial_partial")?,
            virial_final: f("ek_virial_final")?,
        };
        let mem = Arc::new(Mem::default());
        let s = &stream;
        let mut layers = Vec::new();
        for (t, l) in model.layers.iter().enumerate() {
            let (d1, d2, dmid, numel) = l.tp_dims;
            if d2
                != model
                    .sh_ls
                    .iter()
                    .map(|l| 2 * *l as usize + 1)
                    .sum::<usize>()
            {
                return Err(ModelError::Unsupported(format!(
                    "layer {t}: the convolution's second input is not the edge harmonics"
                )));
            }
            if l.lin2.dim_in != dmid || l.lin1.dim_out != d1 || l.weight_nn.dim_out() != numel {
                return Err(ModelError::Unsupported(format!(
                    "layer {t}: inconsistent dimensions"
                )));
            }
            let mlp = l
                .weight_nn
                .layers
                .iter()
                .map(|(a, b, w)| Ok((*a, *b, Buf::from_host(s, &mem, w)?)))
                .collect::<Result<Vec<_>>>()?;
            let gt = GateTable::new(&l.gate)?;
            layers.push(DevLayer {
                sc: DevLinear::fwd(s, &mem, &l.sc)?,
                sc_t: DevLinear::bwd(s, &mem, &l.sc)?,
                lin1: DevLinear::fwd(s, &mem, &l.lin1)?,
                lin1_t: DevLinear::bwd(s, &mem, &l.lin1)?,
                lin2: DevLinear::fwd(s, &mem, &l.lin2)?,
                lin2_t: DevLinear::bwd(s, &mem, &l.lin2)?,
                mlp,
                gate: DevGate {
                    tab: Buf::from_host(s, &mem, &gt.tab)?,
                    t: gt,
                },
                inv_den: T::from_f64(1.0 / l.denominator),
                d1,
                dmid,
                numel,
            });
        }
        let params = Params {
            embed: DevLinear::fwd(s, &mem, &model.embed)?,
            readout_hidden: DevLinear::fwd(s, &mem, &model.readout_hidden)?,
            readout_hidden_t: DevLinear::bwd(s, &mem, &model.readout_hidden)?,
            readout_energy: DevLinear::fwd(s, &mem, &model.readout_energy)?,
            readout_energy_t: DevLinear::bwd(s, &mem, &model.readout_energy)?,
            layers,
            coeffs: Buf::from_host(s, &mem, &model.bessel.coeffs)?,
            scale: Buf::from_host(s, &mem, &model.scale)?,
            shift: Buf::from_host(s, &mem, &model.shift)?,
        };
        if params.readout_energy.dim_out != 1 {
            return Err(ModelError::Unsupported(
                "the energy readout must output one scalar".into(),
            ));
        }
        let ops = model
            .layers
            .iter()
            .map(|l| {
                ConvOp::from_tensor_product(
                    l.product.clone(),
                    &device,
                    equikern::ConvOptions::default(),
                )
                .map(|op| op.with_auto_pieces(true))
                .map_err(err)
            })
            .collect::<Result<Vec<_>>>()?;
        let nl = model.layers.len();
        let hidden = model
            .layers
            .iter()
            .map(|l| l.weight_nn.layers.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let b = || Buf::new(s, &mem);
        let ws = Workspace {
            vec: Buf::new(s, &mem)?,
            idx: Buf::new(s, &mem)?,
            emb: b()?,
            sh: b()?,
            onehot: b()?,
            x: b()?,
            sc: b()?,
            agg: b()?,
            hs: (0..nl).map(|_| b()).collect::<Result<_>>()?,
            ys: (0..nl).map(|_| b()).collect::<Result<_>>()?,
            hid: b()?,
            out: b()?,
            seed: b()?,
            g_hid: b()?,
            gx: b()?,
            gy: b()?,
            g_agg: b()?,
            gxc: b()?,
            tmp: b()?,
            pre: (0..nl)
                .map(|_| (0..hidden).map(|_| b()).collect::<Result<_>>())
                .collect::<Result<_>>()?,
            w: (0..nl).map(|_| b()).collect::<Result<_>>()?,
            act: (0..hidden).map(|_| b()).collect::<Result<_>>()?,
            gw: b()?,
            keep: false,
            gsh_l: b()?,
            g_sh: b()?,
            g_emb: b()?,
            fe: Buf::new(s, &mem)?,
            vpart: Buf::new(s, &mem)?,
            result: Buf::new(s, &mem)?,
        };
        let sh_dim = model.sh_ls.iter().map(|l| 2 * *l as usize + 1).sum();
        Ok(CudaSevenNet {
            model: model.clone(),
            stream: stream.clone(),
            gemm: Gemmer::new(&stream),
            device,
            k,
            params,
            ops,
            ws: Mutex::new(ws),
            mem,
            env,
            sh_dim,
            keep_w_bytes: std::env::var(KEEP_W_ENV)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(DEFAULT_KEEP_W_BYTES),
        })
    }

    /// The model this evaluator runs.
    pub fn model(&self) -> &SevenNet<T> {
        &self.model
    }

    /// The layers' convolutions (their plans are built on first use, then reused).
    pub fn ops(&self) -> &[ConvOp] {
        &self.ops
    }

    /// e.g. `"NVIDIA H100 80GB HBM3 f32 (resident, cuBLAS)"`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} (resident, {})",
            self.device.name(),
            T::NAME,
            self.gemm.name()
        )
    }

    pub fn counters(&self) -> DeviceCounters {
        let m = &self.mem;
        DeviceCounters {
            transfer_s: m.transfer_ns.load(Ordering::Relaxed) as f64 * 1e-9,
            uploaded_bytes: m.up.load(Ordering::Relaxed),
            downloaded_bytes: m.down.load(Ordering::Relaxed),
            live_bytes: m.live.load(Ordering::Relaxed),
            peak_bytes: m.peak.load(Ordering::Relaxed),
        }
    }

    pub fn reset_peak(&self) {
        let m = &self.mem;
        m.peak
            .store(m.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Whether the last structure kept every layer's radial-MLP outputs for the backward
    /// (else they were recomputed; see the module docs).
    pub fn kept_radial_outputs(&self) -> bool {
        self.lock().keep
    }

    /// Sets the byte budget for keeping radial-MLP outputs (default [`KEEP_W_ENV`] or
    /// [`DEFAULT_KEEP_W_BYTES`]; 0: always recompute).
    pub fn set_keep_w_bytes(&mut self, bytes: u64) {
        self.keep_w_bytes = bytes;
    }

    /// Bytes of workspace held now (grows to the largest structure seen).
    pub fn workspace_bytes(&self) -> u64 {
        let ws = self.lock();
        let (a, b) = ws.floats();
        a.iter().map(|x| x.bytes()).sum::<u64>()
            + b.iter().map(|x| x.bytes()).sum::<u64>()
            + ws.idx.bytes()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Workspace<T>> {
        self.ws.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fills every float workspace buffer with NaN (tests: an element a kernel fails to
    /// write then shows in the results).
    pub fn poison_workspace(&self) -> Result<()> {
        let ws = self.lock();
        let (reals, doubles) = ws.floats();
        let nan = T::from_f64(f64::NAN);
        for b in reals {
            let n = b.capacity() as u64;
            let mut lb = self.stream.launch_builder(&self.k.fill);
            lb.arg(&n).arg(&b.s).arg(&nan);
            // SAFETY: writes n = len elements.
            unsafe { lb.launch(launch_cfg(n)) }.map_err(drv)?;
        }
        for b in doubles {
            let n = b.capacity() as u64;
            let v = f64::NAN;
            let mut lb = self.stream.launch_builder(&self.k.fill_f64);
            lb.arg(&n).arg(&b.s).arg(&v);
            // SAFETY: writes n = len elements.
            unsafe { lb.launch(launch_cfg(n)) }.map_err(drv)?;
        }
        self.stream.synchronize().map_err(drv)
    }

    /// Energy, forces and stress of `s` (radius graph on the host, the rest on the device).
    pub fn evaluate(&self, s: &Structure) -> Result<Prediction> {
        self.evaluate_profiled(s).map(|r| r.0)
    }

    /// [`Self::evaluate`] with the step's phases.
    pub fn evaluate_profiled(&self, s: &Structure) -> Result<(Prediction, StepProfile)> {
        let t0 = Instant::now();
        s.validate()?;
        let g = Graph::build(s, self.model.cutoff)?;
        let nl = t0.elapsed().as_secs_f64();
        let (p, mut prof) = self.evaluate_graph(s, &g)?;
        prof.neighbour_list_s = nl;
        prof.total_s = t0.elapsed().as_secs_f64();
        Ok((p, prof))
    }

    /// The model-only part of a step, for the radius graph `g` of `s`. Profile: `graph_s` =
    /// CSR views and index packing on the host, `transfer_s` = the uploads and the one
    /// download, `conv_s` = the whole device step (launch to results ready).
    pub fn evaluate_graph(&self, s: &Structure, g: &Graph) -> Result<(Prediction, StepProfile)> {
        let t0 = Instant::now();
        s.validate()?;
        let types = self.model.types_of(&s.numbers)?;
        check_overlap(g)?;
        let n = s.positions.len();
        let ne = g.len();
        let (receiver, sender) = edge_lists(n, &g.src, &g.dst)?;
        let cg = ConvGraph::new(&self.device, n, &receiver, &sender).map_err(err)?;
        let csr = cg
            .csr()
            .ok_or_else(|| err("a host-built graph has a host CSR"))?
            .clone();
        let mut idx: Vec<u32> = Vec::with_capacity(3 * n + 2 + 4 * ne);
        idx.extend(types.iter().map(|&t| t as u32));
        idx.extend(csr.packed(End::Receiver));
        idx.extend(csr.packed(End::Sender));
        let vec: Vec<f64> = g.vec.iter().flatten().copied().collect();
        let graph_s = t0.elapsed().as_secs_f64();

        // cuBLAS calls use the thread's current context (kernel launches bind it themselves).
        self.stream.context().bind_to_thread().map_err(drv)?;
        let mut ws = self.lock();
        self.ensure(&mut ws, n, ne)?;
        let t_up = Instant::now();
        if ne > 0 {
            self.stream
                .memcpy_htod(&vec, &mut ws.vec.s.slice_mut(0..vec.len()))
                .map_err(drv)?;
        }
        self.stream
            .memcpy_htod(&idx, &mut ws.idx.s.slice_mut(0..idx.len()))
            .map_err(drv)?;
        let up_s = t_up.elapsed().as_secs_f64();
        self.mem
            .up
            .fetch_add((vec.len() * 8 + idx.len() * 4) as u64, Ordering::Relaxed);
        let t_dev = Instant::now();
        self.step(&mut ws, &cg, n, ne)?;
        // The one synchronisation: results back.
        let res = self
            .stream
            .clone_dtoh(&ws.result.s.slice(0..4 * n + 9))
            .map_err(drv)?;
        let dev_s = t_dev.elapsed().as_secs_f64();
        drop(ws);
        self.mem
            .down
            .fetch_add(((4 * n + 9) * 8) as u64, Ordering::Relaxed);
        self.mem
            .transfer_ns
            .fetch_add((up_s * 1e9) as u64, Ordering::Relaxed);
        self.mem.bump(cg.device_table_bytes());
        let atomic = res[..n].to_vec();
        let forces: Vec<[f64; 3]> = (0..n)
            .map(|a| [res[n + 3 * a], res[n + 3 * a + 1], res[n + 3 * a + 2]])
            .collect();
        let v = &res[4 * n..];
        let virial = [[v[0], v[1], v[2]], [v[3], v[4], v[5]], [v[6], v[7], v[8]]];
        let p = Prediction::assemble(s, atomic, forces, virial, ne);
        let prof = StepProfile {
            neighbour_list_s: 0.0,
            graph_s,
            edge_geometry_s: 0.0,
            dense_s: 0.0,
            conv_s: dev_s,
            transfer_s: up_s,
            total_s: t0.elapsed().as_secs_f64(),
            atoms: n,
            edges: ne,
        };
        Ok((p, prof))
    }

    /// Sizes every workspace buffer for `n` atoms and `ne` edges (grow-only).
    fn ensure(&self, ws: &mut Workspace<T>, n: usize, ne: usize) -> Result<()> {
        let s = &self.stream;
        let m = &self.model;
        let nb = m.bessel.coeffs.len();
        let p = &self.params;
        let mut node_max = p.embed.dim_out.max(p.readout_hidden.dim_in);
        for l in &p.layers {
            node_max = node_max
                .max(l.sc.dim_in)
                .max(l.sc.dim_out)
                .max(l.dmid)
                .max(l.d1);
        }
        ws.vec.ensure(s, 3 * ne)?;
        ws.idx.ensure(s, 3 * n + 2 + 4 * ne)?;
        ws.emb.ensure(s, ne * nb)?;
        ws.sh.ensure(s, ne * self.sh_dim)?;
        ws.onehot.ensure(s, n * m.num_species)?;
        for b in [
            &mut ws.x,
            &mut ws.sc,
            &mut ws.agg,
            &mut ws.gx,
            &mut ws.gy,
            &mut ws.g_agg,
            &mut ws.gxc,
            &mut ws.tmp,
        ] {
            b.ensure(s, n * node_max)?;
        }
        // Per-layer radial-MLP tensors kept for the backward if they fit the budget.
        let es = std::mem::size_of::<T>() as u64;
        let per_edge: u64 = p
            .layers
            .iter()
            .map(|l| l.mlp.iter().map(|x| x.1 as u64).sum::<u64>())
            .sum();
        ws.keep = ne as u64 * per_edge * es <= self.keep_w_bytes;
        for (t, l) in p.layers.iter().enumerate() {
            ws.hs[t].ensure(s, n * l.d1)?;
            ws.ys[t].ensure(s, n * l.sc.dim_out)?;
            let slot = if ws.keep { t } else { 0 };
            if !ws.keep && t > 0 {
                // recomputing: the other layers' slots are not used
                ws.w[t].release(s)?;
                for b in &mut ws.pre[t] {
                    b.release(s)?;
                }
            }
            ws.w[slot].ensure(s, ne * l.numel)?;
            for (k, (_, h_out, _)) in l.mlp.iter().enumerate().take(l.mlp.len() - 1) {
                ws.pre[slot][k].ensure(s, ne * h_out)?;
                ws.act[k].ensure(s, ne * h_out)?;
            }
        }
        let hdim = p.readout_hidden.dim_out;
        ws.hid.ensure(s, n * hdim)?;
        ws.g_hid.ensure(s, n * hdim)?;
        ws.out.ensure(s, n)?;
        ws.seed.ensure(s, n)?;
        let numel = p.layers.iter().map(|l| l.numel).max().unwrap_or(0);
        ws.gw.ensure(s, ne * numel)?;
        ws.gsh_l.ensure(s, ne * self.sh_dim)?;
        ws.g_sh.ensure(s, ne * self.sh_dim)?;
        ws.g_emb.ensure(s, ne * nb)?;
        ws.fe.ensure(s, 3 * ne)?;
        ws.vpart.ensure(s, VIRIAL_PARTS * 9)?;
        ws.result.ensure(s, 4 * n + 9)?;
        Ok(())
    }

    /// `y = alpha · L(x) + add` on `n` rows.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        l: &DevLinear<T>,
        n: usize,
        x: &CudaSlice<T>,
        y: &mut CudaSlice<T>,
        alpha: T,
        add: Option<&CudaSlice<T>>,
    ) -> Result<()> {
        let total = (n.div_ceil(LINEAR_ROWS) * l.dim_out) as u64;
        if total == 0 {
            return Ok(());
        }
        if x.len() < n * l.dim_in || y.len() < n * l.dim_out {
            return Err(err("linear: workspace too small"));
        }
        let (n64, di, dout) = (n as u64, l.dim_in as i32, l.dim_out as i32);
        let null = 0u64;
        let mut b = self.stream.launch_builder(&self.k.linear);
        b.arg(&n64)
            .arg(x)
            .arg(&di)
            .arg(y)
            .arg(&dout)
            .arg(&l.w.s)
            .arg(&l.tab.s)
            .arg(&l.coef.s)
            .arg(&alpha);
        match add {
            Some(a) => b.arg(a),
            None => b.arg(&null),
        };
        // SAFETY: x holds n·dim_in, y (and add) n·dim_out elements (checked); tables built by
        // LinearTable for these weights.
        unsafe { b.launch(launch_cfg(total)) }.map_err(drv)?;
        Ok(())
    }

    /// Row-major product on the evaluator's stream (see [`Gemmer::gemm`]).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        dims: (usize, usize, usize),
        alpha: f64,
        a: &CudaSlice<T>,
        b: &CudaSlice<T>,
        trans_b: bool,
        beta: f64,
        c: &mut CudaSlice<T>,
    ) -> Result<()> {
        self.gemm.gemm(
            &self.stream,
            &self.k.gemm,
            dims,
            T::from_f64(alpha),
            a,
            b,
            trans_b,
            T::from_f64(beta),
            c,
        )
    }

    fn act(
        &self,
        n: u64,
        pre: &CudaSlice<T>,
        h: &CudaSlice<T>,
        c: T,
        backward: bool,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let f = if backward {
            &self.k.act_backward
        } else {
            &self.k.act
        };
        let mut b = self.stream.launch_builder(f);
        b.arg(&n).arg(pre).arg(h).arg(&c);
        // SAFETY: both hold at least n elements (sized by `ensure`).
        unsafe { b.launch(launch_cfg(n)) }.map_err(drv)?;
        Ok(())
    }

    /// Layer `t`'s radial MLP: `w [ne, numel]` from `emb`, hidden pre-activations and
    /// activations left in `ws.pre` / `ws.act` for the backward.
    fn mlp_forward(&self, ws: &mut Workspace<T>, t: usize, ne: usize) -> Result<()> {
        let l = &self.params.layers[t];
        let slot = ws.slot(t);
        let c = T::from_f64(self.model.layers[t].weight_nn.act_cst.to_f64());
        let last = l.mlp.len() - 1;
        for (k, (a, b, wk)) in l.mlp.iter().enumerate() {
            let alpha = 1.0 / (*a as f64).sqrt();
            let input = if k == 0 { &ws.emb.s } else { &ws.act[k - 1].s };
            if k < last {
                let out = &mut ws.pre[slot][k].s;
                self.gemm.gemm(
                    &self.stream,
                    &self.k.gemm,
                    (ne, *b, *a),
                    T::from_f64(alpha),
                    input,
                    &wk.s,
                    false,
                    T::ZERO,
                    out,
                )?;
                self.act((ne * b) as u64, &ws.pre[slot][k].s, &ws.act[k].s, c, false)?;
            } else {
                self.gemm.gemm(
                    &self.stream,
                    &self.k.gemm,
                    (ne, *b, *a),
                    T::from_f64(alpha),
                    input,
                    &wk.s,
                    false,
                    T::ZERO,
                    &mut ws.w[slot].s,
                )?;
            }
        }
        Ok(())
    }

    /// The whole step on the device (no synchronisation).
    fn step(&self, ws: &mut Workspace<T>, cg: &ConvGraph, n: usize, ne: usize) -> Result<()> {
        let m = &self.model;
        let p = &self.params;
        let st = &self.stream;
        let nb = m.bessel.coeffs.len();
        let (n64, ne64) = (n as u64, ne as u64);
        let nb32 = nb as i32;
        let (kind, r_on, pp) = self.env;
        let cutoff = m.bessel.cutoff;
        let recv_at = n..2 * n + 1 + 2 * ne;
        let send_at = 2 * n + 1 + 2 * ne..3 * n + 2 + 4 * ne;
        let one = T::ONE;
        // ---- edge geometry
        if ne > 0 {
            let mut b = st.launch_builder(&self.k.edge_geometry);
            b.arg(&ne64)
                .arg(&ws.vec.s)
                .arg(&p.coeffs.s)
                .arg(&nb32)
                .arg(&cutoff)
                .arg(&kind)
                .arg(&r_on)
                .arg(&pp)
                .arg(&ws.emb.s)
                .arg(&ws.sh.s);
            // SAFETY: vec 3·ne, emb ne·nb, sh ne·sh_dim (ensure); coeffs nb.
            unsafe { b.launch(launch_cfg(ne64)) }.map_err(drv)?;
        }
        // ---- embedding
        {
            let ns = m.num_species as i32;
            let types = ws.idx.s.slice(0..n);
            let mut b = st.launch_builder(&self.k.one_hot);
            b.arg(&n64).arg(&types).arg(&ns).arg(&ws.onehot.s);
            // SAFETY: onehot n·ns; types n.
            unsafe { b.launch(launch_cfg(n64 * ns as u64)) }.map_err(drv)?;
        }
        self.linear(&p.embed, n, &ws.onehot.s, &mut ws.x.s, one, None)?;
        // ---- interaction blocks
        let nl = p.layers.len();
        for (t, l) in p.layers.iter().enumerate() {
            self.linear(&l.sc, n, &ws.x.s, &mut ws.sc.s, one, None)?;
            self.linear(&l.lin1, n, &ws.x.s, &mut ws.hs[t].s, one, None)?;
            if ne > 0 {
                self.mlp_forward(ws, t, ne)?;
                use Tensor::*;
                self.ops[t]
                    .run_cuda(
                        Direction::Forward,
                        cg,
                        &[(X, &ws.hs[t].s), (Y, &ws.sh.s), (W, &ws.w[ws.slot(t)].s)],
                        &mut [(Z, &mut ws.agg.s)],
                    )
                    .map_err(err)?;
            } else {
                st.memset_zeros(&mut ws.agg.s).map_err(drv)?;
            }
            self.linear(
                &l.lin2,
                n,
                &ws.agg.s,
                &mut ws.ys[t].s,
                l.inv_den,
                Some(&ws.sc.s),
            )?;
            let g = &l.gate.t;
            let c = T::from_f64(m.layers[t].gate.act_cst.to_f64());
            let total = n64 * g.dout as u64;
            if total > 0 {
                let mut b = st.launch_builder(&self.k.gate);
                b.arg(&n64)
                    .arg(&ws.ys[t].s)
                    .arg(&ws.x.s)
                    .arg(&g.ns)
                    .arg(&g.ng)
                    .arg(&l.gate.tab.s)
                    .arg(&g.din)
                    .arg(&g.dout)
                    .arg(&c);
                // SAFETY: ys n·din, x n·dout (ensure: node_max).
                unsafe { b.launch(launch_cfg(total)) }.map_err(drv)?;
            }
        }
        // ---- readout
        self.linear(&p.readout_hidden, n, &ws.x.s, &mut ws.hid.s, one, None)?;
        self.linear(&p.readout_energy, n, &ws.hid.s, &mut ws.out.s, one, None)?;
        {
            let types = ws.idx.s.slice(0..n);
            let mut b = st.launch_builder(&self.k.readout);
            let mut atomic = ws.result.s.slice_mut(0..n);
            b.arg(&n64)
                .arg(&ws.out.s)
                .arg(&types)
                .arg(&p.scale.s)
                .arg(&p.shift.s)
                .arg(&mut atomic)
                .arg(&ws.seed.s);
            // SAFETY: out, seed, types n; scale/shift num_species (types checked on the host).
            unsafe { b.launch(launch_cfg(n64)) }.map_err(drv)?;
        }
        // ---- backward
        self.linear(
            &p.readout_energy_t,
            n,
            &ws.seed.s,
            &mut ws.g_hid.s,
            one,
            None,
        )?;
        self.linear(&p.readout_hidden_t, n, &ws.g_hid.s, &mut ws.gx.s, one, None)?;
        for t in (0..nl).rev() {
            let l = &p.layers[t];
            let g = &l.gate.t;
            let c = T::from_f64(m.layers[t].gate.act_cst.to_f64());
            let total = n64 * g.din as u64;
            if total > 0 {
                let mut b = st.launch_builder(&self.k.gate_backward);
                b.arg(&n64)
                    .arg(&ws.ys[t].s)
                    .arg(&ws.gx.s)
                    .arg(&ws.gy.s)
                    .arg(&g.ns)
                    .arg(&g.ng)
                    .arg(&l.gate.tab.s)
                    .arg(&g.din)
                    .arg(&g.dout)
                    .arg(&c);
                // SAFETY: ys, gy n·din; gx n·dout.
                unsafe { b.launch(launch_cfg(total)) }.map_err(drv)?;
            }
            self.linear(&l.lin2_t, n, &ws.gy.s, &mut ws.g_agg.s, l.inv_den, None)?;
            if ne > 0 {
                if !ws.keep && t + 1 != nl {
                    // w was not kept: recompute this layer's radial MLP.
                    self.mlp_forward(ws, t, ne)?;
                }
                use Tensor::*;
                self.ops[t]
                    .run_cuda(
                        Direction::Backward,
                        cg,
                        &[
                            (X, &ws.hs[t].s),
                            (Y, &ws.sh.s),
                            (W, &ws.w[ws.slot(t)].s),
                            (GZ, &ws.g_agg.s),
                        ],
                        &mut [
                            (GX, &mut ws.gxc.s),
                            (GY, &mut ws.gsh_l.s),
                            (GW, &mut ws.gw.s),
                        ],
                    )
                    .map_err(err)?;
                let first = i32::from(t + 1 == nl);
                let len = ne64 * self.sh_dim as u64;
                let mut b = st.launch_builder(&self.k.accumulate);
                b.arg(&len).arg(&ws.g_sh.s).arg(&ws.gsh_l.s).arg(&first);
                // SAFETY: both ne·sh_dim.
                unsafe { b.launch(launch_cfg(len)) }.map_err(drv)?;
                self.mlp_backward(ws, t, ne, t + 1 == nl)?;
            } else {
                st.memset_zeros(&mut ws.gxc.s).map_err(drv)?;
            }
            self.linear(&l.sc_t, n, &ws.gy.s, &mut ws.tmp.s, one, None)?;
            self.linear(&l.lin1_t, n, &ws.gxc.s, &mut ws.gx.s, one, Some(&ws.tmp.s))?;
        }
        // ---- edge forces, forces, virial
        if ne > 0 {
            let mut b = st.launch_builder(&self.k.edge_force);
            b.arg(&ne64)
                .arg(&ws.vec.s)
                .arg(&p.coeffs.s)
                .arg(&nb32)
                .arg(&cutoff)
                .arg(&kind)
                .arg(&r_on)
                .arg(&pp)
                .arg(&ws.g_emb.s)
                .arg(&ws.g_sh.s)
                .arg(&ws.fe.s);
            // SAFETY: vec, fe 3·ne; g_emb ne·nb; g_sh ne·sh_dim.
            unsafe { b.launch(launch_cfg(ne64)) }.map_err(drv)?;
        }
        {
            let (recv, send) = (ws.idx.s.slice(recv_at), ws.idx.s.slice(send_at));
            let mut forces = ws.result.s.slice_mut(n..4 * n);
            let mut b = st.launch_builder(&self.k.forces);
            b.arg(&n64)
                .arg(&recv)
                .arg(&send)
                .arg(&ws.fe.s)
                .arg(&mut forces);
            // SAFETY: recv/send packed CSR views of n nodes and ne edges; fe 3·ne.
            unsafe { b.launch(launch_cfg(n64)) }.map_err(drv)?;
        }
        {
            let parts = VIRIAL_PARTS as u64;
            let mut b = st.launch_builder(&self.k.virial_partial);
            b.arg(&ne64)
                .arg(&parts)
                .arg(&ws.vec.s)
                .arg(&ws.fe.s)
                .arg(&ws.vpart.s);
            // SAFETY: vpart parts·9; vec, fe 3·ne.
            unsafe { b.launch(launch_cfg(parts * 9)) }.map_err(drv)?;
            let mut out = ws.result.s.slice_mut(4 * n..4 * n + 9);
            let mut b = st.launch_builder(&self.k.virial_final);
            b.arg(&parts).arg(&ws.vpart.s).arg(&mut out);
            // SAFETY: writes 9 values.
            unsafe { b.launch(launch_cfg(9)) }.map_err(drv)?;
        }
        Ok(())
    }

    /// `g_emb (+)= ∂⟨gw, w⟩/∂emb` of layer `t`'s MLP (input gradient only; the hidden
    /// buffers of its forward are overwritten by their gradients).
    fn mlp_backward(&self, ws: &mut Workspace<T>, t: usize, ne: usize, first: bool) -> Result<()> {
        let l = &self.params.layers[t];
        let c = T::from_f64(self.model.layers[t].weight_nn.act_cst.to_f64());
        let last = l.mlp.len() - 1;
        let slot = ws.slot(t);
        for k in (0..=last).rev() {
            let (a, b, wk) = &l.mlp[k];
            let alpha = 1.0 / (*a as f64).sqrt();
            if k > 0 {
                // g_act[k-1] = G · W_kᵀ / √a, G = gw (k = last) or g_pre[k]
                let (lo, hi) = ws.act.split_at_mut(k);
                let g = if k == last { &ws.gw.s } else { &hi[0].s };
                self.gemm((ne, *a, *b), alpha, g, &wk.s, true, 0.0, &mut lo[k - 1].s)?;
                self.act(
                    (ne * a) as u64,
                    &ws.pre[slot][k - 1].s,
                    &ws.act[k - 1].s,
                    c,
                    true,
                )?;
            } else {
                let g = if last == 0 { &ws.gw.s } else { &ws.act[0].s };
                let beta = if first { 0.0 } else { 1.0 };
                self.gemm((ne, *a, *b), alpha, g, &wk.s, true, beta, &mut ws.g_emb.s)?;
            }
        }
        Ok(())
    }
}

impl<T> Workspace<T> {
    /// The radial-MLP slot of layer `t`.
    fn slot(&self, t: usize) -> usize {
        if self.keep {
            t
        } else {
            0
        }
    }

    /// Every float buffer: `(real ones, f64 ones)`.
    fn floats(&self) -> (Vec<&Buf<T>>, Vec<&Buf<f64>>) {
        let mut a = vec![
            &self.emb,
            &self.sh,
            &self.onehot,
            &self.x,
            &self.sc,
            &self.agg,
            &self.hid,
            &self.out,
            &self.seed,
            &self.g_hid,
            &self.gx,
            &self.gy,
            &self.g_agg,
            &self.gxc,
            &self.tmp,
            &self.gw,
            &self.gsh_l,
            &self.g_sh,
            &self.g_emb,
        ];
        a.extend(
            self.hs
                .iter()
                .chain(&self.ys)
                .chain(&self.w)
                .chain(&self.act),
        );
        a.extend(self.pre.iter().flatten());
        (a, vec![&self.vec, &self.fe, &self.vpart, &self.result])
    }
}
