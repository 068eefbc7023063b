//! Comparison with sevenn's own float64 evaluation (`gen_sevenn_refs.py`), when its JSON
//! (`tests/data/sevennet/sevenn_refs.json`) and the checkpoint are present.

mod common;
use common::*;
use equikern_model::nn::{normalize2mom_torch, silu};
use equikern_model::sevennet::Options;
use equikern_model::{Checkpoint, SevenNet, Structure};
use std::path::PathBuf;

fn v3(v: &serde_json::Value) -> [f64; 3] {
    [0, 1, 2].map(|i| v[i].as_f64().expect("number"))
}

/// SevenNet-0 (11Jul2024): XPLOR cutoff, lmax 2.
#[test]
fn matches_sevenn_float64_references() {
    check_against_references("sevenn_refs.json", "checkpoint_sevennet_0.pth");
}

/// SevenNet-l3i5: polynomial cutoff, lmax 3, 5 layers.
#[test]
fn l3i5_matches_sevenn_float64_references() {
    check_against_references("sevenn_refs_l3i5.json", "checkpoint_l3i5.pth");
}

fn check_against_references(refs_file: &str, checkpoint: &str) {
    let json = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/sevennet")
        .join(refs_file);
    if !json.exists() {
        println!(
            "SKIP: {} absent (generate with gen_sevenn_refs.py on a machine with torch)",
            json.display()
        );
        return;
    }
    let Some(ck) = checkpoint_named(checkpoint) else {
        return;
    };
    let refs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let ours = normalize2mom_torch(silu);
    let cst = refs["meta"]["e3nn_silu_normalize2mom_cst"]
        .as_f64()
        .unwrap_or(ours);
    println!(
        "e3nn silu cst {cst:.17} (ours {ours:.17}, diff {:.1e})",
        (cst - ours).abs()
    );
    assert!(
        (cst - ours).abs() < 1e-12,
        "torch normal-sampler emulation differs from e3nn"
    );
    let ck = Checkpoint::load(ck).unwrap();
    let model = SevenNet::from_checkpoint(&ck, Options { silu_cst: cst }).unwrap();
    let mut worst: f64 = 0.0;
    for s in refs["structures"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let Some(r) = s.get("f64") else {
            println!("{name}: no f64 reference ({})", s["error"]);
            continue;
        };
        let st = Structure {
            positions: s["positions"].as_array().unwrap().iter().map(v3).collect(),
            numbers: s["numbers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|z| z.as_u64().unwrap() as u32)
                .collect(),
            cell: {
                let c = s["cell"].as_array().unwrap();
                [v3(&c[0]), v3(&c[1]), v3(&c[2])]
            },
            pbc: {
                let p = s["pbc"].as_array().unwrap();
                [0, 1, 2].map(|i| p[i].as_bool().unwrap())
            },
        };
        let p = model.evaluate(&st).unwrap();
        assert_eq!(
            p.num_edges as u64,
            r["num_edges"].as_u64().unwrap(),
            "{name}: edge count"
        );
        let e_ref = r["energy"].as_f64().unwrap();
        let e_err = (p.energy - e_ref).abs() / e_ref.abs().max(1.0);
        let f_ref: Vec<[f64; 3]> = r["forces"].as_array().unwrap().iter().map(v3).collect();
        let f_scale = f_ref.iter().flatten().fold(1.0f64, |m, x| m.max(x.abs()));
        let f_err = p
            .forces
            .iter()
            .flatten()
            .zip(f_ref.iter().flatten())
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs() / f_scale));
        let mut s_err = 0.0f64;
        if let Some(sr) = r["stress"].as_array() {
            let sr: Vec<f64> = sr.iter().map(|x| x.as_f64().unwrap()).collect();
            let ss = p.stress.expect("periodic structure has stress");
            let scale = sr.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
            s_err = ss
                .iter()
                .zip(&sr)
                .fold(0.0, |m, (a, b)| m.max((a - b).abs() / scale));
        }
        println!(
            "{name:28} E {:.12} (ref {e_ref:.12}) rel {e_err:.1e}  F {f_err:.1e}  S {s_err:.1e}",
            p.energy
        );
        worst = worst.max(e_err).max(f_err).max(s_err);
        // sevenn's stock float32 path, for scale (later f32/GPU tolerances)
        if let Some(r32) = s.get("f32") {
            let e32 = r32["energy"].as_f64().unwrap();
            let f_ref32: Vec<[f64; 3]> = r32["forces"].as_array().unwrap().iter().map(v3).collect();
            let df = p
                .forces
                .iter()
                .flatten()
                .zip(f_ref32.iter().flatten())
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            let de = (p.energy - e32).abs() / e32.abs().max(1.0);
            println!(
                "{:28} vs sevenn f32: E rel {de:.1e}, max |dF| {df:.1e} eV/A",
                ""
            );
            assert!(de < 1e-5 && df < 1e-4, "{name}: f32 block far off");
        }
    }
    println!("worst relative error vs sevenn f64: {worst:.2e}");
    assert!(worst < 1e-9, "{worst}");
}
