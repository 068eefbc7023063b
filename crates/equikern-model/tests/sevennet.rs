//! SevenNet model on CPU (f64): forces and stress against finite differences, symmetries,
//! error paths; real-checkpoint sanity when the checkpoint is present.
#![allow(clippy::needless_range_loop)]

mod common;
use common::*;
use equikern_model::{SevenNet, Structure};

fn energy(m: &SevenNet, s: &Structure) -> f64 {
    m.evaluate(s).unwrap().energy
}

fn check_forces_fd(m: &SevenNet, s: &Structure, atoms: &[usize], tol: f64) -> f64 {
    let p = m.evaluate(s).unwrap();
    let h = 1e-5;
    let mut worst: f64 = 0.0;
    for &a in atoms {
        for d in 0..3 {
            let (mut sp, mut sm) = (s.clone(), s.clone());
            sp.positions[a][d] += h;
            sm.positions[a][d] -= h;
            let fd = -(energy(m, &sp) - energy(m, &sm)) / (2.0 * h);
            let err = (fd - p.forces[a][d]).abs() / (1.0 + fd.abs());
            worst = worst.max(err);
            assert!(err < tol, "atom {a} dim {d}: fd {fd} vs {}", p.forces[a][d]);
        }
    }
    worst
}

fn check_stress_fd(m: &SevenNet, s: &Structure, tol: f64) -> f64 {
    let p = m.evaluate(s).unwrap();
    let stress = p.stress.expect("periodic");
    let vol = s.volume();
    let strained = |eps: [[f64; 3]; 3]| {
        let mut t = s.clone();
        let f =
            |v: [f64; 3]| [0, 1, 2].map(|b| v[b] + (0..3).map(|a| v[a] * eps[a][b]).sum::<f64>());
        t.positions = t.positions.iter().map(|&v| f(v)).collect();
        t.cell = t.cell.map(f);
        energy(m, &t)
    };
    let voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)];
    let h = 1e-6;
    let mut worst: f64 = 0.0;
    for (k, &(a, b)) in voigt.iter().enumerate() {
        let mut ep = [[0.0; 3]; 3];
        let mut em = [[0.0; 3]; 3];
        if a == b {
            ep[a][a] = h;
            em[a][a] = -h;
        } else {
            ep[a][b] = h / 2.0;
            ep[b][a] = h / 2.0;
            em[a][b] = -h / 2.0;
            em[b][a] = -h / 2.0;
        }
        let fd = (strained(ep) - strained(em)) / (2.0 * h) / vol;
        let err = (fd - stress[k]).abs() / (1e-3 + fd.abs());
        worst = worst.max(err);
        assert!(err < tol, "voigt {k}: fd {fd} vs {}", stress[k]);
    }
    worst
}

#[test]
fn forces_and_stress_match_finite_differences_small_model() {
    for cf in ["XPLOR", "poly"] {
        let m = small_model(cf, 11);
        let s = triclinic();
        let p = m.evaluate(&s).unwrap();
        assert!(
            p.num_edges > 4 * 3 * 4,
            "several images per pair: {} edges",
            p.num_edges
        );
        let wf = check_forces_fd(&m, &s, &[0, 1, 2, 3], 1e-7);
        let ws = check_stress_fd(&m, &s, 1e-6);
        println!(
            "{cf}: E = {}, edges {}, worst force rel err {wf:.2e}, stress {ws:.2e}",
            p.energy, p.num_edges
        );
        // sum of forces vanishes (translation invariance)
        for d in 0..3 {
            let t: f64 = p.forces.iter().map(|f| f[d]).sum();
            assert!(t.abs() < 1e-10, "{t}");
        }
    }
}

#[test]
fn open_boundary_molecule_and_single_atom() {
    let m = small_model("XPLOR", 3);
    let s = molecule();
    let p = m.evaluate(&s).unwrap();
    assert!(p.stress.is_none());
    check_forces_fd(&m, &s, &[0, 1, 2, 5], 1e-7);
    for d in 0..3 {
        assert!(p.forces.iter().map(|f| f[d]).sum::<f64>().abs() < 1e-10);
    }
    let single = Structure {
        positions: vec![[0.3, -0.2, 1.0]],
        numbers: vec![8],
        cell: [[0.0; 3]; 3],
        pbc: [false; 3],
    };
    let p1 = m.evaluate(&single).unwrap();
    assert_eq!(p1.num_edges, 0);
    assert_eq!(p1.forces, vec![[0.0; 3]]);
    assert!(p1.energy.is_finite());
}

#[test]
fn invariance_and_equivariance() {
    let m = small_model("XPLOR", 5);
    for s in [triclinic(), molecule()] {
        let p = m.evaluate(&s).unwrap();
        let r = rotation(0.3, 1.1, -0.7);
        let mut rs = s.clone();
        rs.positions = s.positions.iter().map(|&v| apply(&r, v)).collect();
        rs.cell = s.cell.map(|v| apply(&r, v));
        let q = m.evaluate(&rs).unwrap();
        assert!((p.energy - q.energy).abs() < 1e-10 * (1.0 + p.energy.abs()));
        for a in 0..s.positions.len() {
            let rf = apply(&r, p.forces[a]);
            for d in 0..3 {
                assert!((rf[d] - q.forces[a][d]).abs() < 1e-10, "rotated force");
            }
        }
        if let (Some(sp), Some(sq)) = (p.stress, q.stress) {
            // σ' = R σ Rᵀ
            let full = |v: [f64; 6]| [[v[0], v[5], v[4]], [v[5], v[1], v[3]], [v[4], v[3], v[2]]];
            let a = full(sp);
            let b = full(sq);
            for i in 0..3 {
                for j in 0..3 {
                    let mut rr = 0.0;
                    for k in 0..3 {
                        for l in 0..3 {
                            rr += r[i][k] * a[k][l] * r[j][l];
                        }
                    }
                    assert!((rr - b[i][j]).abs() < 1e-10, "rotated stress");
                }
            }
        }
        // translation
        let mut ts = s.clone();
        ts.positions = s
            .positions
            .iter()
            .map(|v| [v[0] + 0.37, v[1] - 1.2, v[2] + 2.5])
            .collect();
        let t = m.evaluate(&ts).unwrap();
        assert!((p.energy - t.energy).abs() < 1e-10 * (1.0 + p.energy.abs()));
        // permutation
        let n = s.positions.len();
        let perm: Vec<usize> = (0..n).rev().collect();
        let mut ps = s.clone();
        ps.positions = perm.iter().map(|&i| s.positions[i]).collect();
        ps.numbers = perm.iter().map(|&i| s.numbers[i]).collect();
        let pp = m.evaluate(&ps).unwrap();
        assert!((p.energy - pp.energy).abs() < 1e-10 * (1.0 + p.energy.abs()));
        for (k, &i) in perm.iter().enumerate() {
            for d in 0..3 {
                assert!((pp.forces[k][d] - p.forces[i][d]).abs() < 1e-10);
            }
        }
    }
}

#[test]
fn bad_inputs_are_errors_naming_the_field() {
    let m = small_model("XPLOR", 1);
    let mut s = molecule();
    s.numbers[2] = 92;
    let e = m.evaluate(&s).unwrap_err().to_string();
    assert!(e.contains("numbers[2]") && e.contains("92"), "{e}");
    let mut s = molecule();
    s.numbers.pop();
    assert!(m.evaluate(&s).unwrap_err().to_string().contains("numbers"));
    let mut s = molecule();
    s.positions[1][0] = f64::NAN;
    assert!(m
        .evaluate(&s)
        .unwrap_err()
        .to_string()
        .contains("positions"));
    let mut s = triclinic();
    s.cell[2] = [0.0; 3];
    assert!(m.evaluate(&s).unwrap_err().to_string().contains("cell"));
    // unsupported config values name the field
    let mut c = small_config("XPLOR");
    if let equikern_model::Value::Dict(items) = &mut c {
        for (k, v) in items.iter_mut() {
            if k.as_str() == Some("self_connection_type") {
                *v = equikern_model::Value::Str("nequip".into());
            }
        }
    }
    let e = SevenNet::random(&c, equikern_model::sevennet::Options { silu_cst: 1.0 }, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("self_connection_type"), "{e}");
}

#[test]
fn real_sevennet0_silicon() {
    let Some(m) = real_model() else { return };
    let s = si_diamond();
    let p = m.evaluate(&s).unwrap();
    let per_atom = p.energy / 8.0;
    println!(
        "SevenNet-0 Si diamond (a=5.43): E/atom = {per_atom:.6} eV, edges {}, stress {:?}",
        p.num_edges, p.stress
    );
    // DFT-PBE (MPtrj) silicon is about −5.42 eV/atom; a layout or normalisation slip is far off.
    assert!((per_atom + 5.42).abs() < 0.1, "{per_atom}");
    // perfect diamond: forces vanish by symmetry
    for f in &p.forces {
        for d in 0..3 {
            assert!(f[d].abs() < 1e-9, "{f:?}");
        }
    }
    // rattled: forces and stress against finite differences
    let mut r = s.clone();
    for (a, v) in r.positions.iter_mut().enumerate() {
        for (d, x) in v.iter_mut().enumerate() {
            *x += 0.05 * ((a * 3 + d) as f64 * 1.7).sin();
        }
    }
    let wf = check_forces_fd(&m, &r, &[0, 5], 1e-6);
    let ws = check_stress_fd(&m, &r, 1e-5);
    println!("rattled Si: worst force rel err {wf:.2e}, stress {ws:.2e}");
}

/// The resident CUDA step gives an edge pair one radial row only where every convolution
/// plan reads the weights through the fold (`KernelPlan::folds_weights`; the evaluator asks
/// `ConvOp::folds_weights` on the device). 7net-0's plans do — f32 and f64, CSR and pieces,
/// forward and backward, with an H100's capabilities — so its default step keeps the pair
/// rows; the predicate has teeth: the row-kernel (atomic) plans refuse.
#[test]
fn sevennet_plans_fold_weight_rows_on_cuda() {
    use equikern::plan::{lower_conv_with, Capabilities, ConvOptions, Direction, Dtype};
    let Some(model) = real_model() else {
        println!("SKIP: no 7net-0 checkpoint (models/checkpoint_sevennet_0.pth)");
        return;
    };
    // an H100's (sm_90) capabilities, as equikern-cuda reads them from the driver
    let caps = Capabilities {
        subgroup_size: 32,
        subgroups: true,
        warp_shuffles: true,
        max_invocations_per_workgroup: 1024,
        max_workgroup_size_x: 1024,
        workgroup_memory_bytes: 232_448,
        max_storage_binding_bytes: 80 << 30,
        max_workgroups_per_dim: 65_535,
        max_storage_buffers_per_stage: 256,
        f64: true,
        float_atomics: true,
    };
    let csr = ConvOptions::default();
    let pieces = ConvOptions {
        max_piece_edges: Some(equikern::AUTO_PIECE_EDGES),
        ..csr
    };
    let atomic = ConvOptions {
        atomic: true,
        max_piece_edges: None,
    };
    for (t, l) in model.layers.iter().enumerate() {
        for dtype in [Dtype::F32, Dtype::F64] {
            for d in [Direction::Forward, Direction::Backward] {
                for (name, o) in [("csr", csr), ("pieces", pieces)] {
                    let p = lower_conv_with(&l.product, d, dtype, &caps, o, Default::default())
                        .unwrap();
                    assert!(p.folds_weights(), "layer {t} {dtype:?} {d:?} {name}");
                }
                let p = lower_conv_with(&l.product, d, dtype, &caps, atomic, Default::default())
                    .unwrap();
                assert!(!p.folds_weights(), "layer {t} {dtype:?} {d:?} atomic");
            }
        }
    }
}
