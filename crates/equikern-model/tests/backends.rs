//! The model on every backend and dtype: cpu f32, wgpu f32 (lavapipe here), cuda f32/f64,
//! against sevenn's float64 references (`tests/data/sevennet/sevenn_refs.json`) and against
//! finite differences. Tests that need the checkpoint, a wgpu adapter or a CUDA GPU print
//! `SKIP: <reason>` and pass without them.

mod common;
use common::*;
use equikern::Device;
use equikern_model::backend::check_combination;
use equikern_model::{Dtype, Evaluator, ModelError, Prediction, SevenNet, Structure, Target};

/// Force tolerance of an f32 evaluation against sevenn's float64 result (eV/Å): the issue's.
const F32_FORCE_TOL: f64 = 2e-4;
/// Energy tolerance of an f32 evaluation (eV/atom).
const F32_ENERGY_TOL: f64 = 2e-5;
/// Stress tolerance of an f32 evaluation (eV/Å³).
const F32_STRESS_TOL: f64 = 2e-6;

/// Largest |ΔE|/atom, |ΔF| and |Δσ| over the references.
#[derive(Default, Debug)]
struct Worst {
    energy_per_atom: f64,
    force: f64,
    stress: f64,
}

fn compare(ev: &Evaluator, refs: &[Reference]) -> Worst {
    let mut w = Worst::default();
    println!("{}", ev.describe());
    for r in refs {
        let p = ev.evaluate(&r.structure).unwrap();
        assert_eq!(p.num_edges, r.num_edges, "{}: edge count", r.name);
        let n = r.structure.positions.len().max(1) as f64;
        let de = (p.energy - r.energy).abs() / n;
        let df = force_gap(&p.forces, &r.forces);
        let ds = match (&r.stress, p.stress) {
            (Some(sr), Some(ss)) => ss
                .iter()
                .zip(sr)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs())),
            (None, None) => 0.0,
            _ => panic!("{}: stress presence differs", r.name),
        };
        println!(
            "  {:24} E {:.9} (ref {:.9}) |dE|/atom {de:.1e} eV  max|dF| {df:.1e} eV/A  max|dS| {ds:.1e} eV/A^3",
            r.name, p.energy, r.energy
        );
        w.energy_per_atom = w.energy_per_atom.max(de);
        w.force = w.force.max(df);
        w.stress = w.stress.max(ds);
    }
    println!("  worst: {w:?}");
    w
}

fn assert_f32(w: &Worst, what: &str) {
    assert!(
        w.force <= F32_FORCE_TOL,
        "{what}: forces off by {:.2e} eV/A",
        w.force
    );
    assert!(
        w.energy_per_atom <= F32_ENERGY_TOL,
        "{what}: energy off by {:.2e} eV/atom",
        w.energy_per_atom
    );
    assert!(
        w.stress <= F32_STRESS_TOL,
        "{what}: stress off by {:.2e} eV/A^3",
        w.stress
    );
}

fn real_model_and_refs() -> Option<(SevenNet, Vec<Reference>)> {
    let refs = sevenn_references()?;
    let model = real_model()?;
    Some((model, refs))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Option<Device> {
    println!("SKIP: built without the `wgpu` feature");
    None
}

/// A wgpu device (lavapipe in CI) or `None`, printing why.
#[cfg(feature = "wgpu")]
fn wgpu_device() -> Option<Device> {
    match Device::wgpu(equikern::WgpuOptions::default()) {
        Ok(d) => {
            println!("adapter: {}", d.name());
            Some(d)
        }
        Err(e) => {
            println!("SKIP: no wgpu adapter: {e} (CI installs mesa-vulkan-drivers for lavapipe)");
            None
        }
    }
}

/// The first CUDA GPU or `None`, printing why.
fn cuda_device() -> Option<Device> {
    match Device::new(equikern::Backend::Cuda) {
        Ok(d) => {
            println!("device: {}", d.name());
            Some(d)
        }
        Err(e) => {
            println!("SKIP: {e}");
            None
        }
    }
}

#[test]
fn cpu_f32_matches_sevenn_float64() {
    let Some((model, refs)) = real_model_and_refs() else {
        return;
    };
    let ev = Evaluator::cpu(&model, Dtype::F32);
    let w = compare(&ev, &refs);
    assert_f32(&w, "cpu f32");
    // and it is really f32: not bit-equal to the f64 model
    let p64 = model.evaluate(&refs[0].structure).unwrap();
    let p32 = ev.evaluate(&refs[0].structure).unwrap();
    assert_ne!(p64.energy, p32.energy);
}

#[test]
fn wgpu_f32_matches_sevenn_float64() {
    let Some((model, refs)) = real_model_and_refs() else {
        return;
    };
    let Some(dev) = wgpu_device() else { return };
    let ev = Evaluator::on_device(&model, dev, Dtype::F32).unwrap();
    assert_eq!(ev.target(), Target::Wgpu);
    let w = compare(&ev, &refs);
    assert_f32(&w, "wgpu f32");
}

#[test]
fn cuda_matches_sevenn_float64() {
    let Some((model, refs)) = real_model_and_refs() else {
        return;
    };
    let Some(dev) = cuda_device() else { return };
    let ev = Evaluator::on_device(&model, dev.clone(), Dtype::F32).unwrap();
    let w = compare(&ev, &refs);
    assert_f32(&w, "cuda f32");
    let ev = Evaluator::on_device(&model, dev, Dtype::F64).unwrap();
    let w = compare(&ev, &refs);
    // f64 on the GPU: the CPU f64 model's agreement (1e-14 relative) up to summation order
    assert!(w.force <= 1e-9, "cuda f64 forces off by {:.2e}", w.force);
    assert!(
        w.energy_per_atom <= 1e-10,
        "cuda f64 energy {:.2e}",
        w.energy_per_atom
    );
    assert!(w.stress <= 1e-10, "cuda f64 stress {:.2e}", w.stress);
}

/// Largest |a − b| over forces, and |ΔE|.
fn diff(a: &Prediction, b: &Prediction) -> (f64, f64) {
    (force_gap(&a.forces, &b.forces), (a.energy - b.energy).abs())
}

/// `E − Σ shift`: the part of the energy the network computes (the per-species shifts are
/// added in f64), the scale for relative energy errors.
fn interaction_energy(model: &SevenNet, s: &Structure, p: &Prediction) -> f64 {
    let shift: f64 = s
        .numbers
        .iter()
        .map(|z| model.shift[model.type_map[z]])
        .sum();
    p.energy - shift
}

/// The device evaluator against the CPU f64 model on random-weight models (no checkpoint
/// needed): open and periodic, several images, both cutoff envelopes. Errors relative to
/// max |F| and to the interaction energy.
fn device_matches_cpu_small_models(dev: &Device, dtype: Dtype, tol: f64) {
    for (cutoff, s) in [
        ("XPLOR", triclinic()),
        ("poly", molecule()),
        ("XPLOR", molecule()),
    ] {
        let model = small_model(cutoff, 3);
        let ev = Evaluator::on_device(&model, dev.clone(), dtype).unwrap();
        let p = ev.evaluate(&s).unwrap();
        let r = model.evaluate(&s).unwrap();
        let (df, de) = diff(&p, &r);
        let (fs, es) = (fmax(&r), interaction_energy(&model, &s, &r).abs());
        println!(
            "{} {cutoff}: {} atoms, {} edges, E_int {es:.3e}, max|F| {fs:.3e}: rel dE {:.1e}, rel dF {:.1e}",
            ev.describe(),
            s.positions.len(),
            p.num_edges,
            de / es,
            df / fs
        );
        assert_eq!(p.num_edges, r.num_edges);
        assert!(df / fs <= tol, "forces {df:.2e} (scale {fs:.2e})");
        assert!(de / es <= tol, "energy {de:.2e} (scale {es:.2e})");
        if let (Some(a), Some(b)) = (p.stress, r.stress) {
            let ds = a
                .iter()
                .zip(&b)
                .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
            let ss = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(ds / ss <= tol, "stress {ds:.2e} (scale {ss:.2e})");
        }
    }
}

#[test]
fn wgpu_f32_matches_cpu_f64_on_small_models() {
    let Some(dev) = wgpu_device() else { return };
    device_matches_cpu_small_models(&dev, Dtype::F32, 1e-5);
}

#[test]
fn cuda_matches_cpu_f64_on_small_models() {
    let Some(dev) = cuda_device() else { return };
    device_matches_cpu_small_models(&dev, Dtype::F32, 1e-5);
    device_matches_cpu_small_models(&dev, Dtype::F64, 1e-11);
}

/// Energy along a displacement of atom `a` in direction `d`.
fn energy_at(ev: &Evaluator, s: &Structure, a: usize, d: usize, h: f64) -> f64 {
    let mut t = s.clone();
    t.positions[a][d] += h;
    ev.evaluate(&t).unwrap().energy
}

/// Forces = −∇E by finite differences of the evaluator's own energies, on the open molecule:
/// a 4-point stencil at h = 2e-2 Å (truncation O(h⁴) ≈ 1e-5 of max |F| here; f32 rounding of
/// the energy ≈ 1e-7·|E_int|, divided by h, ≈ 5e-5). A wrong gradient (x, y or w) is O(1).
fn forces_are_minus_gradient(ev: &Evaluator) {
    let s = molecule();
    let p = ev.evaluate(&s).unwrap();
    let scale = fmax(&p);
    let h = 2e-2;
    let mut worst = 0.0f64;
    for a in 0..s.positions.len() {
        for d in 0..3 {
            let e = |k: f64| energy_at(ev, &s, a, d, k * h);
            let fd = -(-e(2.0) + 8.0 * e(1.0) - 8.0 * e(-1.0) + e(-2.0)) / (12.0 * h);
            worst = worst.max((fd - p.forces[a][d]).abs() / scale);
        }
    }
    println!(
        "{}: E {:.6}, max|F| {scale:.3e}, worst |F + dE/dx| / max|F| = {worst:.2e}",
        ev.describe(),
        p.energy
    );
    assert!(worst < 5e-4, "{worst}");
}

#[test]
fn wgpu_forces_are_minus_energy_gradient() {
    let Some(dev) = wgpu_device() else { return };
    let model = small_model("XPLOR", 11);
    forces_are_minus_gradient(&Evaluator::on_device(&model, dev.clone(), Dtype::F32).unwrap());
    let Some(model) = real_model() else { return };
    forces_are_minus_gradient(&Evaluator::on_device(&model, dev, Dtype::F32).unwrap());
}

#[test]
fn cpu_f32_forces_are_minus_energy_gradient() {
    let model = small_model("XPLOR", 11);
    forces_are_minus_gradient(&Evaluator::cpu(&model, Dtype::F32));
}

#[test]
fn cuda_forces_are_minus_energy_gradient() {
    let Some(dev) = cuda_device() else { return };
    let model = small_model("XPLOR", 11);
    for dtype in [Dtype::F32, Dtype::F64] {
        forces_are_minus_gradient(&Evaluator::on_device(&model, dev.clone(), dtype).unwrap());
    }
}

/// Si diamond supercell `n × n × n` (8 n³ atoms), slightly rattled.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn si_supercell(n: usize) -> Structure {
    let s = si_diamond();
    let a = s.cell[0][0];
    let mut positions = Vec::new();
    for i in 0..n {
        for j in 0..n {
            for k in 0..n {
                for p in &s.positions {
                    let r = ((positions.len() as f64) * 1.37).sin() * 0.03;
                    positions.push([
                        p[0] + i as f64 * a + r,
                        p[1] + j as f64 * a - r,
                        p[2] + k as f64 * a + 0.5 * r,
                    ]);
                }
            }
        }
    }
    let m = n as f64 * a;
    Structure {
        numbers: vec![14; positions.len()],
        positions,
        cell: [[m, 0.0, 0.0], [0.0, m, 0.0], [0.0, 0.0, m]],
        pbc: [true; 3],
    }
}

/// Kernels are made once per model: structures of other sizes compile nothing new.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_kernels_are_reused_across_structure_sizes() {
    let Some(dev) = wgpu_device() else { return };
    let Some(model) = real_model() else { return };
    let rt = dev.wgpu_runtime().expect("wgpu device").clone();
    let ev = Evaluator::on_device(&model, dev, Dtype::F32).unwrap();
    let p1 = ev.evaluate(&si_supercell(1)).unwrap();
    let plans = rt.cached_plans();
    let p2 = ev.evaluate(&si_supercell(2)).unwrap();
    let p3 = ev.evaluate(&molecule()).unwrap();
    println!(
        "edges {} / {} / {}: {plans} compiled plans after the first, {} after all",
        p1.num_edges,
        p2.num_edges,
        p3.num_edges,
        rt.cached_plans()
    );
    assert_eq!(rt.cached_plans(), plans);
    // 5 layers × (forward, backward)
    assert!(plans <= 10, "{plans}");
    // translation-invariant supercell: same energy per atom as the unit cell (up to f32)
    assert!(((p2.energy / 64.0) - (p1.energy / 8.0)).abs() < 1e-2);
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_kernels_are_reused_across_structure_sizes() {
    let Some(dev) = cuda_device() else { return };
    let Some(model) = real_model() else { return };
    for dtype in [Dtype::F32, Dtype::F64] {
        // the generic DeviceBackend (the resident path: tests/cuda_model.rs)
        let ev = Evaluator::on_device_generic(&model, dev.clone(), dtype).unwrap();
        let plans = |ev: &Evaluator| {
            let b = ev.device_backend().unwrap();
            let pd = match dtype {
                Dtype::F32 => equikern::plan::Dtype::F32,
                Dtype::F64 => equikern::plan::Dtype::F64,
            };
            b.ops()
                .iter()
                .flat_map(|op| {
                    [
                        equikern::plan::Direction::Forward,
                        equikern::plan::Direction::Backward,
                    ]
                    .map(|d| op.cuda_plan(d, pd).unwrap())
                })
                .collect::<Vec<_>>()
        };
        ev.evaluate(&si_supercell(1)).unwrap();
        let before = plans(&ev);
        ev.evaluate(&si_supercell(3)).unwrap();
        ev.evaluate(&molecule()).unwrap();
        let after = plans(&ev);
        for (a, b) in before.iter().zip(&after) {
            assert!(std::sync::Arc::ptr_eq(a, b), "a plan was rebuilt");
        }
        println!("cuda {}: {} plans reused", dtype.name(), before.len());
    }
}

#[test]
fn unsupported_combinations_are_errors() {
    let e = check_combination(Target::Wgpu, Dtype::F64).unwrap_err();
    assert!(matches!(e, ModelError::Unsupported(_)));
    let msg = e.to_string();
    assert!(msg.contains("wgpu") && msg.contains("f64"), "{msg}");
    for (t, d) in equikern_model::backend::SUPPORTED {
        check_combination(t, d).unwrap();
    }
    let model = small_model("XPLOR", 1);
    let e = Evaluator::new(&model, Target::Wgpu, Dtype::F64)
        .err()
        .expect("refused");
    assert!(e.to_string().contains("wgpu"), "{e}");
}

/// The f32 CPU model is the f64 one with weights cast: same graph, same code path, f32
/// rounding (errors relative to max |F| and the interaction energy).
#[test]
fn cpu_f32_is_close_to_f64_on_small_models() {
    for s in [triclinic(), molecule()] {
        let model = small_model("poly", 5);
        let p32 = model.cast::<f32>().evaluate(&s).unwrap();
        let p64 = model.evaluate(&s).unwrap();
        let (df, de) = diff(&p32, &p64);
        let (fs, es) = (fmax(&p64), interaction_energy(&model, &s, &p64).abs());
        println!(
            "cpu f32 vs f64: max|F| {fs:.2e}, rel dF {:.1e}, E_int {es:.2e}, rel dE {:.1e}",
            df / fs,
            de / es
        );
        assert!(df / fs < 1e-5 && de / es < 1e-5);
        assert!(df > 0.0, "f32 rounding is visible");
        assert_eq!(p32.num_edges, p64.num_edges);
    }
}

/// Bytes one step must upload and download when the edge SH go up once per structure and
/// each layer's `x` and `w` once (forward), `grad_z` once (backward); downloads `z`, `gx`,
/// `gy`, `gw` per layer.
fn expected_traffic(model: &SevenNet, nodes: usize, edges: usize, elem: u64) -> (u64, u64) {
    let sh: usize = model.sh_ls.iter().map(|l| 2 * *l as usize + 1).sum();
    let mut up = edges * sh;
    let mut down = 0;
    for l in &model.layers {
        let (d1, d2, dmid, wn) = l.tp_dims;
        up += nodes * d1 + edges * wn + nodes * dmid;
        down += nodes * dmid + nodes * d1 + edges * d2 + edges * wn;
    }
    (up as u64 * elem, down as u64 * elem)
}

/// Data movement of one step on a device: the SH uploaded once per structure (not per layer
/// and direction), `x`/`w` once per layer (the backward reads the forward's device copies),
/// the graph's index tables once per structure, and all device buffers freed after the step.
fn check_device_traffic(dev: Device, dtype: Dtype, elem: u64) {
    let model = small_model("XPLOR", 11);
    // the generic DeviceBackend's traffic (the resident CUDA path: tests/cuda_model.rs)
    let ev = Evaluator::on_device_generic(&model, dev, dtype).unwrap();
    let s = triclinic();
    let cpu = Evaluator::cpu(&model, Dtype::F64).evaluate(&s).unwrap();
    let c0 = ev.counters();
    assert_eq!(c0, Default::default());
    let p = ev.evaluate(&s).unwrap();
    let c1 = ev.counters();
    let (up, down) = expected_traffic(&model, s.positions.len(), p.num_edges, elem);
    println!(
        "{}: {} edges, up {} B, down {} B, transfer {:.2} ms, peak {} B, live after {} B",
        ev.describe(),
        p.num_edges,
        c1.uploaded_bytes,
        c1.downloaded_bytes,
        c1.transfer_s * 1e3,
        c1.peak_bytes,
        c1.live_bytes
    );
    assert_eq!(c1.uploaded_bytes, up);
    assert_eq!(c1.downloaded_bytes, down);
    assert!(c1.transfer_s > 0.0);
    // all buffers freed; only the graph's index tables may be counted until the next graph
    let tables = c1.live_bytes;
    assert!(tables > 0 && tables < c1.peak_bytes, "{c1:?}");
    // peak ≥ every layer's x and w kept for the backward
    let kept: usize = model
        .layers
        .iter()
        .map(|l| s.positions.len() * l.tp_dims.0 + p.num_edges * l.tp_dims.3)
        .sum();
    assert!(c1.peak_bytes >= kept as u64 * elem, "{c1:?}");
    // the same traffic again on the second step (tables re-uploaded for the new graph only)
    let p2 = ev.evaluate(&s).unwrap();
    let c2 = ev.counters();
    assert_eq!(c2.uploaded_bytes - c1.uploaded_bytes, up);
    assert_eq!(c2.live_bytes, tables);
    assert_eq!(p2.energy, p.energy);
    let df = force_gap(&p.forces, &cpu.forces);
    assert!(df < 1e-3, "{df}");
}

#[test]
fn wgpu_uploads_edge_tensors_once() {
    let Some(dev) = wgpu_device() else { return };
    check_device_traffic(dev, Dtype::F32, 4);
}

#[test]
fn cuda_uploads_edge_tensors_once() {
    let Some(dev) = cuda_device() else { return };
    check_device_traffic(dev.clone(), Dtype::F32, 4);
    check_device_traffic(dev, Dtype::F64, 8);
}
