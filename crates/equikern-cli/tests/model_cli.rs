//! `equikern eval` / `equikern md` end to end: results equal the library's (and sevenn's
//! float64 references), the JSON schema, and the one-line, exit-code-2 contract for bad input.
//! Runs needing the SevenNet-0 checkpoint print SKIP without it
//! (crates/equikern-model/fetch_checkpoint.sh); the input checks run before the model loads.

use equikern_model::extxyz::{self, Frame};
use equikern_model::torch_save::random_sevennet_checkpoint;
use equikern_model::{Checkpoint, SevenNet, Structure, Value as Value2};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `equikern` binary: `$EQUIKERN_BIN` if set (a test binary carried to another machine
/// with the CLI beside it), else the one cargo built with this test.
fn bin() -> PathBuf {
    std::env::var_os("EQUIKERN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_equikern")))
}

/// A file of the repository, `rel` from its root: under `$EQUIKERN_REPO` if set, else in the
/// source tree this test was built from, else under the working directory. The first that
/// exists; else the source-tree path.
fn repo_file(rel: &str) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    let mut candidates = Vec::new();
    if let Some(r) = std::env::var_os("EQUIKERN_REPO") {
        candidates.push(PathBuf::from(r).join(rel));
    }
    candidates.push(built.clone());
    candidates.push(std::env::current_dir().unwrap().join(rel));
    candidates.into_iter().find(|p| p.exists()).unwrap_or(built)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("equikern-model-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .current_dir(dir)
        // libwayland complains on stderr without it while wgpu looks for adapters
        .env("XDG_RUNTIME_DIR", dir)
        .args(args)
        .output()
        .expect("run equikern")
}

fn checkpoint() -> Option<PathBuf> {
    let p = repo_file("models/checkpoint_sevennet_0.pth")
        .canonicalize()
        .ok();
    if p.is_none() {
        println!("SKIP: models/checkpoint_sevennet_0.pth absent (run crates/equikern-model/fetch_checkpoint.sh)");
    }
    p
}

/// A SevenNet-architecture config, small (H C N O, 2 layers, cutoff 3.5 Å).
fn small_config() -> Value2 {
    let s = |x: &str| Value2::Str(x.to_string());
    let kv = |k: &str, v: Value2| (s(k), v);
    let silu = || Value2::Dict(vec![kv("e", s("silu")), kv("o", s("tanh"))]);
    Value2::Dict(vec![
        kv("cutoff", Value2::Float(3.5)),
        kv("_number_of_species", Value2::Int(4)),
        kv(
            "_type_map",
            Value2::Dict(
                [1, 6, 7, 8]
                    .iter()
                    .enumerate()
                    .map(|(i, &z)| (Value2::Int(z), Value2::Int(i as i64)))
                    .collect(),
            ),
        ),
        kv(
            "radial_basis",
            Value2::Dict(vec![
                kv("radial_basis_name", s("bessel")),
                kv("bessel_basis_num", Value2::Int(6)),
            ]),
        ),
        kv(
            "cutoff_function",
            Value2::Dict(vec![
                kv("cutoff_function_name", s("XPLOR")),
                kv("cutoff_on", Value2::Float(3.0)),
            ]),
        ),
        kv("lmax", Value2::Int(2)),
        kv("lmax_edge", Value2::Int(-1)),
        kv("is_parity", Value2::Bool(false)),
        kv("num_convolution_layer", Value2::Int(2)),
        kv(
            "irreps_manual",
            Value2::List(vec![s("4x0e"), s("6x0e+3x1e+2x2e"), s("6x0e")]),
        ),
        kv(
            "weight_nn_hidden_neurons",
            Value2::List(vec![Value2::Int(8)]),
        ),
        kv("act_radial", s("silu")),
        kv("act_scalar", silu()),
        kv("act_gate", silu()),
        kv("self_connection_type", s("linear")),
        kv("interaction_type", s("nequip")),
        kv("use_bias_in_linear", Value2::Bool(false)),
        kv("readout_as_fcn", Value2::Bool(false)),
        kv("_normalize_sph", Value2::Bool(true)),
    ])
}

/// A random-weight checkpoint of [`small_config`] in `dir` (no real checkpoint needed).
fn random_checkpoint(dir: &Path) -> PathBuf {
    let p = dir.join("random.pth");
    std::fs::write(&p, random_sevennet_checkpoint(&small_config(), 5).unwrap()).unwrap();
    p
}

fn water_box() -> Structure {
    let l = 4.0;
    let mut positions = Vec::new();
    for (k, o) in [
        [0.5, 0.5, 0.5],
        [2.5, 2.5, 0.7],
        [0.6, 2.4, 2.6],
        [2.4, 0.6, 2.4],
    ]
    .iter()
    .enumerate()
    {
        let a = k as f64 * 1.1;
        positions.push(*o);
        positions.push([o[0] + 0.76 * a.cos(), o[1] + 0.76 * a.sin(), o[2] + 0.59]);
        positions.push([o[0] - 0.76 * a.cos(), o[1] - 0.76 * a.sin(), o[2] + 0.59]);
    }
    Structure {
        positions,
        numbers: [8, 1, 1].repeat(4),
        cell: [[l, 0.0, 0.0], [0.3, l, 0.0], [0.0, -0.2, l]],
        pbc: [true; 3],
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code 2 and one line on stderr containing every `want`.
fn assert_input_error(o: &Output, want: &[&str]) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {e}");
    assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e}");
    for w in want {
        assert!(e.contains(w), "{e:?} lacks {w:?}");
    }
}

fn si8() -> Structure {
    let a = 5.43;
    let basis = [
        [0.0, 0.0, 0.0],
        [0.0, 0.5, 0.5],
        [0.5, 0.0, 0.5],
        [0.5, 0.5, 0.0],
        [0.25, 0.25, 0.25],
        [0.25, 0.75, 0.75],
        [0.75, 0.25, 0.75],
        [0.75, 0.75, 0.25],
    ];
    Structure {
        positions: basis
            .iter()
            .enumerate()
            .map(|(k, f)| f.map(|x| x * a + 0.05 * ((k * 7) as f64).sin()))
            .collect(),
        numbers: vec![14; 8],
        cell: [[a, 0.0, 0.0], [0.0, a, 0.0], [0.0, 0.0, a]],
        pbc: [true; 3],
    }
}

fn h2o() -> Structure {
    Structure {
        positions: vec![
            [0.0, 0.0, 0.1193],
            [0.0, 0.7632, -0.4770],
            [0.0, -0.7632, -0.4770],
        ],
        numbers: vec![8, 1, 1],
        cell: [[0.0; 3]; 3],
        pbc: [false; 3],
    }
}

fn write_xyz(dir: &Path, name: &str, frames: &[Structure]) -> PathBuf {
    let p = dir.join(name);
    let f: Vec<Frame> = frames.iter().cloned().map(Frame::new).collect();
    extxyz::write(&p, &f).unwrap();
    p
}

fn check_schema(v: &Value, s: &Structure) {
    let o = v.as_object().expect("object");
    let periodic = s.pbc.iter().all(|&p| p);
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if periodic {
        assert_eq!(keys, ["energy", "forces", "stress"]);
        assert_eq!(o["stress"].as_array().unwrap().len(), 6);
    } else {
        assert_eq!(keys, ["energy", "forces"]);
    }
    assert!(o["energy"].is_f64());
    let f = o["forces"].as_array().unwrap();
    assert_eq!(f.len(), s.positions.len());
    assert!(f.iter().all(|r| r.as_array().unwrap().len() == 3));
}

#[test]
fn eval_matches_the_library_and_json_schema() {
    let Some(ck) = checkpoint() else { return };
    let dir = tmp("eval");
    let model = SevenNet::load(&ck).unwrap();
    // one periodic frame → an object with stress
    let si = write_xyz(&dir, "si.extxyz", &[si8()]);
    let o = run(
        &dir,
        &[
            "eval",
            "--model",
            ck.to_str().unwrap(),
            "--structure",
            si.to_str().unwrap(),
            "--json",
            "si.json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("energy") && out.contains("stress"), "{out}");
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("si.json")).unwrap()).unwrap();
    check_schema(&v, &si8());
    let p = model.evaluate(&si8()).unwrap();
    assert_eq!(v["energy"].as_f64().unwrap(), p.energy);
    for (a, r) in v["forces"].as_array().unwrap().iter().enumerate() {
        for d in 0..3 {
            assert_eq!(r[d].as_f64().unwrap(), p.forces[a][d]);
        }
    }
    for k in 0..6 {
        assert_eq!(v["stress"][k].as_f64().unwrap(), p.stress.unwrap()[k]);
    }
    // two frames (periodic + open) → a list; "-" prints the JSON alone on stdout
    let two = write_xyz(&dir, "two.extxyz", &[si8(), h2o()]);
    let o = run(
        &dir,
        &[
            "eval",
            "--model",
            ck.to_str().unwrap(),
            "--structure",
            two.to_str().unwrap(),
            "--json",
            "-",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON only");
    let l = v.as_array().expect("list for a multi-frame file");
    assert_eq!(l.len(), 2);
    check_schema(&l[0], &si8());
    check_schema(&l[1], &h2o());
    assert_eq!(
        l[1]["energy"].as_f64().unwrap(),
        model.evaluate(&h2o()).unwrap().energy
    );
}

#[test]
fn eval_random_checkpoint_matches_the_library() {
    let dir = tmp("eval-random");
    let ck = random_checkpoint(&dir);
    let model = SevenNet::from_checkpoint(
        &Checkpoint::load(&ck).unwrap(),
        equikern_model::sevennet::Options::default(),
    )
    .unwrap();
    let frames = [water_box(), h2o()];
    write_xyz(&dir, "w.extxyz", &frames);
    let o = run(
        &dir,
        &[
            "eval",
            "--model",
            "random.pth",
            "--structure",
            "w.extxyz",
            "--json",
            "out.json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("frame 1: OH2 (3 atoms), pbc F F F"), "{out}");
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out.json")).unwrap()).unwrap();
    let l = v.as_array().expect("a list for two frames");
    for (j, s) in l.iter().zip(&frames) {
        check_schema(j, s);
        let p = model.evaluate(s).unwrap();
        assert!(p.num_edges > 0);
        assert_eq!(j["energy"].as_f64().unwrap(), p.energy);
        for (a, r) in j["forces"].as_array().unwrap().iter().enumerate() {
            for d in 0..3 {
                assert_eq!(r[d].as_f64().unwrap(), p.forces[a][d]);
            }
        }
        if let Some(st) = p.stress {
            for k in 0..6 {
                assert_eq!(j["stress"][k].as_f64().unwrap(), st[k]);
            }
        }
    }
    // the model's missing elements and overlapping atoms: exit 2, one line
    write_xyz(&dir, "si.xyz", &[h2o(), si8()]);
    let o = run(
        &dir,
        &["eval", "--model", "random.pth", "--structure", "si.xyz"],
    );
    assert_input_error(
        &o,
        &[
            "si.xyz frame 1",
            "numbers[0]",
            "element Si (Z = 14)",
            "4 species",
        ],
    );
    let mut s = water_box();
    s.positions[4] = s.positions[7].map(|x| x + 0.05);
    write_xyz(&dir, "close.xyz", &[s]);
    let o = run(
        &dir,
        &["eval", "--model", "random.pth", "--structure", "close.xyz"],
    );
    assert_input_error(&o, &["close.xyz", "overlapping", "atoms 4 and 7"]);
    // md: NVE and Langevin runs write their trajectories
    let o = run(
        &dir,
        &[
            "md",
            "--model",
            "random.pth",
            "--structure",
            "w.extxyz",
            "--steps",
            "20",
            "--dt",
            "0.5",
            "--temperature",
            "300",
            "--out",
            "t.extxyz",
            "--every",
            "10",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("NVE") && out.contains("eV/atom/ps"), "{out}");
    let t = extxyz::read(dir.join("t.extxyz")).unwrap();
    assert_eq!(t.len(), 3);
    // started from the file's last frame (the open water molecule)
    assert_eq!(t[0].atoms.positions, h2o().positions);
    let o = run(
        &dir,
        &[
            "md",
            "--model",
            "random.pth",
            "--structure",
            "w.extxyz",
            "--steps",
            "5",
            "--dt",
            "0.5",
            "--temperature",
            "300",
            "--thermostat",
            "langevin",
            "--friction",
            "0.02",
            "--seed",
            "3",
            "--out",
            "l.extxyz",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Langevin"));
    assert_eq!(extxyz::read(dir.join("l.extxyz")).unwrap().len(), 6);
}

#[test]
fn eval_matches_sevenn_references() {
    let Some(ck) = checkpoint() else { return };
    let json = repo_file("tests/data/sevennet/sevenn_refs.json");
    let refs: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let dir = tmp("refs");
    let v3 = |v: &Value| [0, 1, 2].map(|i| v[i].as_f64().unwrap());
    let mut frames = Vec::new();
    let mut want = Vec::new();
    for s in refs["structures"].as_array().unwrap() {
        let Some(r) = s.get("f64") else { continue };
        // the 24-atom water box takes a second on the CPU: keep the test short
        if s["positions"].as_array().unwrap().len() > 10 {
            continue;
        }
        let c = s["cell"].as_array().unwrap();
        frames.push(Structure {
            positions: s["positions"].as_array().unwrap().iter().map(v3).collect(),
            numbers: s["numbers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|z| z.as_u64().unwrap() as u32)
                .collect(),
            cell: [v3(&c[0]), v3(&c[1]), v3(&c[2])],
            pbc: [0, 1, 2].map(|i| s["pbc"][i].as_bool().unwrap()),
        });
        want.push(r.clone());
    }
    let p = write_xyz(&dir, "refs.extxyz", &frames);
    let o = run(
        &dir,
        &[
            "eval",
            "--model",
            ck.to_str().unwrap(),
            "--structure",
            p.to_str().unwrap(),
            "--json",
            "out.json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out.json")).unwrap()).unwrap();
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), want.len());
    let mut worst: f64 = 0.0;
    for (g, r) in got.iter().zip(&want) {
        let e = r["energy"].as_f64().unwrap();
        worst = worst.max((g["energy"].as_f64().unwrap() - e).abs() / e.abs().max(1.0));
        for (fg, fr) in g["forces"]
            .as_array()
            .unwrap()
            .iter()
            .zip(r["forces"].as_array().unwrap())
        {
            for d in 0..3 {
                worst = worst.max((fg[d].as_f64().unwrap() - fr[d].as_f64().unwrap()).abs());
            }
        }
        if let (Some(sg), Some(sr)) = (g.get("stress"), r.get("stress").filter(|s| !s.is_null())) {
            for k in 0..6 {
                worst = worst.max((sg[k].as_f64().unwrap() - sr[k].as_f64().unwrap()).abs());
            }
        }
    }
    println!(
        "eval vs sevenn float64 over {} structures: worst {worst:.2e}",
        got.len()
    );
    assert!(worst < 1e-9, "{worst}");
}

/// `eval --backend B --dtype D` on sevenn's reference structures: forces within 2e-4 eV/Å
/// of sevenn's float64 ones in f32 (1e-9 in f64), energies within 2e-5 eV/atom; equal to the
/// library's `Evaluator` on the same backend. A backend this machine lacks prints SKIP.
#[test]
fn eval_on_every_backend_matches_sevenn_references() {
    let Some(ck) = checkpoint() else { return };
    let json = repo_file("tests/data/sevennet/sevenn_refs.json");
    let refs: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let dir = tmp("backends");
    let v3 = |v: &Value| [0, 1, 2].map(|i| v[i].as_f64().unwrap());
    let mut frames = Vec::new();
    let mut want = Vec::new();
    for s in refs["structures"].as_array().unwrap() {
        let Some(r) = s.get("f64") else { continue };
        let c = s["cell"].as_array().unwrap();
        frames.push(Structure {
            positions: s["positions"].as_array().unwrap().iter().map(v3).collect(),
            numbers: s["numbers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|z| z.as_u64().unwrap() as u32)
                .collect(),
            cell: [v3(&c[0]), v3(&c[1]), v3(&c[2])],
            pbc: [0, 1, 2].map(|i| s["pbc"][i].as_bool().unwrap()),
        });
        want.push(r.clone());
    }
    let p = write_xyz(&dir, "refs.extxyz", &frames);
    let model = SevenNet::load(&ck).unwrap();
    for (backend, dtype, f_tol, e_tol) in [
        ("cpu", "f32", 2e-4, 2e-5),
        ("wgpu", "f32", 2e-4, 2e-5),
        ("cuda", "f32", 2e-4, 2e-5),
        ("cuda", "f64", 1e-9, 1e-10),
    ] {
        let o = run(
            &dir,
            &[
                "eval",
                "--model",
                ck.to_str().unwrap(),
                "--structure",
                p.to_str().unwrap(),
                "--backend",
                backend,
                "--dtype",
                dtype,
                "--json",
                "out.json",
            ],
        );
        if o.status.code() == Some(2) && stderr(&o).contains("not available") {
            println!("SKIP {backend} {dtype}: {}", stderr(&o).trim());
            continue;
        }
        assert!(o.status.success(), "{backend} {dtype}: {}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains(&format!(" {dtype}")), "{out}");
        let got: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("out.json")).unwrap()).unwrap();
        let got = got.as_array().unwrap();
        assert_eq!(got.len(), want.len());
        let (mut worst_f, mut worst_e, mut worst_s) = (0.0f64, 0.0f64, 0.0f64);
        for ((g, r), s) in got.iter().zip(&want).zip(&frames) {
            check_schema(g, s);
            let n = s.positions.len() as f64;
            let e = r["energy"].as_f64().unwrap();
            worst_e = worst_e.max((g["energy"].as_f64().unwrap() - e).abs() / n);
            for (fg, fr) in g["forces"]
                .as_array()
                .unwrap()
                .iter()
                .zip(r["forces"].as_array().unwrap())
            {
                for d in 0..3 {
                    worst_f =
                        worst_f.max((fg[d].as_f64().unwrap() - fr[d].as_f64().unwrap()).abs());
                }
            }
            if let (Some(sg), Some(sr)) =
                (g.get("stress"), r.get("stress").filter(|s| !s.is_null()))
            {
                for k in 0..6 {
                    worst_s =
                        worst_s.max((sg[k].as_f64().unwrap() - sr[k].as_f64().unwrap()).abs());
                }
            }
        }
        println!(
            "eval --backend {backend} --dtype {dtype} vs sevenn float64 over {} structures: \
             max |dF| {worst_f:.2e} eV/A, max |dE| {worst_e:.2e} eV/atom, max |dS| {worst_s:.2e} eV/A^3",
            got.len()
        );
        assert!(worst_f <= f_tol, "{backend} {dtype}: forces {worst_f:.2e}");
        assert!(worst_e <= e_tol, "{backend} {dtype}: energy {worst_e:.2e}");
        assert!(
            worst_s <= f_tol / 10.0,
            "{backend} {dtype}: stress {worst_s:.2e}"
        );
        // the same numbers as the library on that backend (deterministic kernels)
        let target = match backend {
            "cpu" => equikern_model::Target::Cpu,
            "wgpu" => equikern_model::Target::Wgpu,
            _ => equikern_model::Target::Cuda,
        };
        let dt = if dtype == "f32" {
            equikern_model::Dtype::F32
        } else {
            equikern_model::Dtype::F64
        };
        let ev = equikern_model::Evaluator::new(&model, target, dt).unwrap();
        let lib = ev.evaluate(&frames[0]).unwrap();
        assert_eq!(got[0]["energy"].as_f64().unwrap(), lib.energy);
        assert_eq!(got[0]["forces"][1][2].as_f64().unwrap(), lib.forces[1][2]);
    }
}

#[test]
fn eval_bad_input_exits_2_naming_it() {
    let dir = tmp("bad");
    let si = write_xyz(&dir, "si.extxyz", &[si8()]);
    let si = si.to_str().unwrap();
    // checked before the model loads: no checkpoint needed
    let fake = "missing.pth";
    // wgpu computes in f32 only: the combination is named
    let o = run(
        &dir,
        &[
            "eval",
            "--model",
            fake,
            "--structure",
            si,
            "--backend",
            "wgpu",
            "--dtype",
            "f64",
        ],
    );
    assert_input_error(&o, &["--backend wgpu --dtype f64", "not supported", "f32"]);
    // supported combinations get as far as the (missing) model, or name an absent device
    for (b, d) in [
        ("cpu", "f32"),
        ("cpu", "f64"),
        ("wgpu", "f32"),
        ("cuda", "f32"),
    ] {
        let o = run(
            &dir,
            &[
                "eval",
                "--model",
                fake,
                "--structure",
                si,
                "--backend",
                b,
                "--dtype",
                d,
            ],
        );
        let err = stderr(&o);
        if err.contains("not available") {
            assert_input_error(&o, &[&format!("--backend {b}"), "not available"]);
        } else {
            assert_input_error(&o, &["--model", "missing.pth"]);
        }
    }
    std::fs::write(dir.join("bad.xyz"), "2\n\nSi 0 0 0\nSi 1 1\n").unwrap();
    let o = run(&dir, &["eval", "--model", fake, "--structure", "bad.xyz"]);
    assert_input_error(&o, &["--structure", "bad.xyz line 4", "expected 4 columns"]);
    std::fs::write(dir.join("nan.xyz"), "1\n\nSi 0 NaN 0\n").unwrap();
    let o = run(&dir, &["eval", "--model", fake, "--structure", "nan.xyz"]);
    assert_input_error(&o, &["nan.xyz line 3", "pos[1]", "non-finite"]);
    std::fs::write(dir.join("sym.xyz"), "1\n\nQq 0 0 0\n").unwrap();
    let o = run(&dir, &["eval", "--model", fake, "--structure", "sym.xyz"]);
    assert_input_error(&o, &["sym.xyz line 3", "species", "\"Qq\""]);
    let o = run(
        &dir,
        &["eval", "--model", fake, "--structure", "nothere.xyz"],
    );
    assert_input_error(&o, &["--structure", "nothere.xyz"]);
    let o = run(&dir, &["eval", "--model", fake, "--structure", si]);
    assert_input_error(&o, &["--model", "missing.pth"]);
    std::fs::write(dir.join("notzip.pth"), "hello").unwrap();
    let o = run(&dir, &["eval", "--model", "notzip.pth", "--structure", si]);
    assert_input_error(&o, &["--model notzip.pth"]);

    // needs the model: an element it lacks, overlapping atoms
    let Some(ck) = checkpoint() else { return };
    let ck = ck.to_str().unwrap();
    let model = SevenNet::load(ck).unwrap();
    let known = model.species();
    assert_eq!(known.len(), 89);
    let missing = (1..=118).find(|z| !known.contains(z)).unwrap();
    let mut s = h2o();
    s.numbers[2] = missing;
    write_xyz(&dir, "elem.xyz", &[h2o(), s]);
    let o = run(&dir, &["eval", "--model", ck, "--structure", "elem.xyz"]);
    let sym = equikern_model::elements::symbol(missing).unwrap();
    assert_input_error(
        &o,
        &["elem.xyz frame 1", "numbers[2]", &format!("element {sym} ")],
    );
    let mut s = si8();
    s.positions[3] = s.positions[5].map(|x| x + 0.02);
    write_xyz(&dir, "close.xyz", &[s]);
    let o = run(&dir, &["eval", "--model", ck, "--structure", "close.xyz"]);
    assert_input_error(&o, &["close.xyz", "overlapping", "atoms 3 and 5"]);
}

#[test]
fn md_runs_and_writes_a_trajectory() {
    let Some(ck) = checkpoint() else { return };
    let dir = tmp("md");
    write_xyz(&dir, "h2o.xyz", &[h2o()]);
    let o = run(
        &dir,
        &[
            "md",
            "--model",
            ck.to_str().unwrap(),
            "--structure",
            "h2o.xyz",
            "--steps",
            "7",
            "--dt",
            "0.5",
            "--temperature",
            "300",
            "--out",
            "traj.extxyz",
            "--every",
            "3",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("drift") && out.contains("eV/atom/ps"), "{out}");
    let frames = extxyz::read(dir.join("traj.extxyz")).unwrap();
    // steps 0, 3, 6, 7
    assert_eq!(frames.len(), 4);
    let steps: Vec<&str> = frames
        .iter()
        .map(|f| f.info.iter().find(|(k, _)| k == "step").unwrap().1.as_str())
        .collect();
    assert_eq!(steps, ["0", "3", "6", "7"]);
    assert!(frames
        .iter()
        .all(|f| f.energy.is_some() && f.forces.is_some() && f.momenta.is_some()));
    // restart from the trajectory's last frame (its momenta), Langevin
    let o = run(
        &dir,
        &[
            "md",
            "--model",
            ck.to_str().unwrap(),
            "--structure",
            "traj.extxyz",
            "--steps",
            "2",
            "--dt",
            "0.5",
            "--out",
            "t2.extxyz",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let f2 = extxyz::read(dir.join("t2.extxyz")).unwrap();
    assert_eq!(f2[0].atoms.positions, frames[3].atoms.positions);
    // momenta → velocities → momenta: equal to rounding
    let (a, b) = (
        f2[0].momenta.as_ref().unwrap(),
        frames[3].momenta.as_ref().unwrap(),
    );
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert!((x - y).abs() <= 1e-14 * y.abs().max(1e-3), "{x} {y}");
    }
}

#[test]
fn md_bad_input_exits_2() {
    let dir = tmp("mdbad");
    write_xyz(&dir, "h2o.xyz", &[h2o()]);
    let base = [
        "md",
        "--model",
        "missing.pth",
        "--structure",
        "h2o.xyz",
        "--steps",
        "3",
        "--out",
        "t.xyz",
    ];
    let with = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend(extra);
        run(&dir, &a)
    };
    assert_input_error(&with(&["--dt", "0"]), &["--dt"]);
    assert_input_error(&with(&["--dt", "nan"]), &["--dt"]);
    assert_input_error(
        &with(&["--dt", "0.5", "--thermostat", "langevin"]),
        &["--thermostat langevin needs --temperature"],
    );
    assert_input_error(
        &with(&[
            "--dt",
            "0.5",
            "--temperature",
            "300",
            "--thermostat",
            "langevin",
            "--friction",
            "-1",
        ]),
        &["--friction"],
    );
    assert_input_error(
        &with(&["--dt", "0.5", "--temperature", "-5"]),
        &["--temperature"],
    );
    assert_input_error(&with(&["--dt", "0.5", "--every", "0"]), &["--every"]);
    assert_input_error(
        &with(&["--dt", "0.5", "--backend", "wgpu", "--dtype", "f64"]),
        &["--backend wgpu --dtype f64", "not supported"],
    );
    assert_input_error(&with(&["--dt", "0.5"]), &["--model", "missing.pth"]);
}

/// `md --backend wgpu` (f32 by default there) runs and writes its trajectory; no checkpoint
/// needed (random weights). Skips where no wgpu adapter exists.
#[test]
fn md_runs_on_wgpu() {
    let dir = tmp("md-wgpu");
    random_checkpoint(&dir);
    write_xyz(&dir, "w.extxyz", &[water_box()]);
    let o = run(
        &dir,
        &[
            "md",
            "--model",
            "random.pth",
            "--structure",
            "w.extxyz",
            "--steps",
            "4",
            "--dt",
            "0.5",
            "--temperature",
            "300",
            "--out",
            "t.extxyz",
            "--backend",
            "wgpu",
        ],
    );
    if o.status.code() == Some(2) && stderr(&o).contains("not available") {
        println!("SKIP: {}", stderr(&o).trim());
        return;
    }
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(" f32") && out.contains("NVE"), "{out}");
    let t = extxyz::read(dir.join("t.extxyz")).unwrap();
    assert_eq!(t.len(), 5);
    assert!(t[4].energy.is_some_and(f64::is_finite));
}

/// `bench --model` JSON: the fields, and that its energy equals `eval`'s on the same system.
fn check_bench_json(v: &Value, backend: &str, systems: &[(&str, usize)], gpu: bool) {
    assert_eq!(v["command"], "bench --model");
    assert_eq!(v["backend"], backend);
    assert_eq!(v["dtype"], "f32");
    assert!(v["device"].as_str().is_some_and(|d| d.ends_with(" f32")));
    assert!(v["timing"].as_str().unwrap().contains("median"));
    assert_eq!(v["reps"], 2);
    assert_eq!(v["warmup"], 1);
    for k in ["load_ms", "place_ms"] {
        assert!(v[k].as_f64().is_some_and(|x| x >= 0.0), "{k}");
    }
    let rows = v["systems"].as_array().unwrap();
    assert_eq!(rows.len(), systems.len());
    for (r, (name, atoms)) in rows.iter().zip(systems) {
        assert_eq!(r["system"], *name);
        assert_eq!(r["atoms"], *atoms);
        assert!(r["edges"].as_u64().unwrap() > 0);
        assert_eq!(r["reps"], 2);
        for k in [
            "first_call_ms",
            "ms_model",
            "ms_model_min",
            "ms_with_nl",
            "atoms_per_s",
            "atoms_per_s_with_nl",
        ] {
            assert!(
                r[k].as_f64().is_some_and(|x| x > 0.0),
                "{name} {k}: {}",
                r[k]
            );
        }
        assert!(r["ms_model_min"].as_f64() <= r["ms_model"].as_f64());
        assert!(r["energy"].as_f64().is_some_and(f64::is_finite));
        assert!(
            matches!(r["neighbour_list_on"].as_str(), Some("cpu" | "cuda")),
            "{name}: {}",
            r["neighbour_list_on"]
        );
        let ph = &r["phases_ms"];
        for k in [
            "neighbour_list",
            "graph",
            "edge_geometry",
            "dense_host",
            "conv_device",
            "transfer",
            "other",
        ] {
            assert!(ph[k].as_f64().is_some_and(|x| x >= 0.0), "{name} {k}");
        }
        assert!(ph["dense_host"].as_f64().unwrap() > 0.0);
        assert!(ph["conv_device"].as_f64().unwrap() > 0.0);
        if gpu {
            assert!(r["peak_device_bytes"].as_u64().unwrap() > 0);
            assert!(r["uploaded_bytes_per_step"].as_u64().unwrap() > 0);
            assert!(ph["transfer"].as_f64().unwrap() > 0.0);
        } else {
            assert!(r["peak_device_bytes"].is_null());
            assert_eq!(r["uploaded_bytes_per_step"], 0);
            assert_eq!(ph["transfer"], 0.0);
        }
    }
}

fn bench_model(dir: &Path, ckpt: &str, backend: &str, systems: &str) -> Output {
    run(
        dir,
        &[
            "bench",
            "--model",
            ckpt,
            "--backend",
            backend,
            "--dtype",
            "f32",
            "--systems",
            systems,
            "--reps",
            "2",
            "--warmup",
            "1",
            "--json",
            "b.json",
        ],
    )
}

/// The benchmark systems' energy from `bench --model` equals `eval`'s on the same structure.
fn eval_energy(dir: &Path, ckpt: &str, s: &Structure, backend: &str) -> f64 {
    write_xyz(dir, "sys.extxyz", std::slice::from_ref(s));
    let o = run(
        dir,
        &[
            "eval",
            "--model",
            ckpt,
            "--structure",
            "sys.extxyz",
            "--backend",
            backend,
            "--dtype",
            "f32",
            "--json",
            "e.json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("e.json")).unwrap()).unwrap();
    v["energy"].as_f64().unwrap()
}

#[test]
fn bench_model_cpu_json() {
    let dir = tmp("bench-model-cpu");
    random_checkpoint(&dir);
    let o = bench_model(&dir, "random.pth", "cpu", "water:24,water:81");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("water:81") && out.contains("ms model"),
        "{out}"
    );
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("b.json")).unwrap()).unwrap();
    check_bench_json(&v, "cpu", &[("water:24", 24), ("water:81", 81)], false);
    // the same structure through `eval` gives the same energy (f32 cpu: deterministic)
    let s = equikern_model::systems::SystemSpec::parse("water:24")
        .unwrap()
        .build()
        .unwrap();
    let e = eval_energy(&dir, "random.pth", &s, "cpu");
    assert_eq!(v["systems"][0]["energy"].as_f64().unwrap(), e);
    // the real checkpoint on a Si cell, when present
    if let Some(ck) = checkpoint() {
        let ck = ck.to_str().unwrap();
        let o = bench_model(&dir, ck, "cpu", "si:8");
        assert!(o.status.success(), "{}", stderr(&o));
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("b.json")).unwrap()).unwrap();
        check_bench_json(&v, "cpu", &[("si:8", 8)], false);
        assert_eq!(v["systems"][0]["edges"], 8 * 28);
    }
}

#[test]
fn bench_model_wgpu_json() {
    let dir = tmp("bench-model-wgpu");
    random_checkpoint(&dir);
    let o = bench_model(&dir, "random.pth", "wgpu", "water:24");
    if o.status.code() == Some(2) && stderr(&o).contains("not available") {
        println!("SKIP: {}", stderr(&o).trim());
        return;
    }
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("b.json")).unwrap()).unwrap();
    check_bench_json(&v, "wgpu", &[("water:24", 24)], true);
    let s = equikern_model::systems::SystemSpec::parse("water:24")
        .unwrap()
        .build()
        .unwrap();
    let e = eval_energy(&dir, "random.pth", &s, "wgpu");
    let b = v["systems"][0]["energy"].as_f64().unwrap();
    assert!((b - e).abs() <= 1e-9 * e.abs().max(1.0), "{b} vs {e}");
}

#[test]
fn bench_model_bad_input_exits_2() {
    let dir = tmp("bench-model-bad");
    random_checkpoint(&dir);
    let o = bench_model(&dir, "random.pth", "cpu", "si:100");
    assert_input_error(&o, &["--systems", "8·k³"]);
    let o = bench_model(&dir, "random.pth", "cpu", "cu:32");
    assert_input_error(&o, &["--systems", "unknown kind"]);
    // an element the model lacks (the random model has H C N O, not Si)
    let o = bench_model(&dir, "random.pth", "cpu", "si:8");
    assert_input_error(&o, &["si:8", "Si"]);
    let o = bench_model(&dir, "missing.pth", "cpu", "water:24");
    assert_input_error(&o, &["--model"]);
}

#[test]
fn bench_model_exports_the_systems_for_the_peers() {
    let dir = tmp("export-systems");
    let out = dir.join("systems");
    // The checkpoint is not read when exporting.
    let o = run(
        &dir,
        &[
            "bench",
            "--model",
            "unused.pth",
            "--systems",
            "si:64,water:24",
            "--export-systems",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for (file, n, numbers) in [
        ("si_64.extxyz", 64, vec![14u32]),
        ("water_24.extxyz", 24, vec![1, 8]),
    ] {
        let frames = equikern_model::extxyz::read(out.join(file)).unwrap();
        assert_eq!(frames.len(), 1, "{file}");
        let s = &frames[0].atoms;
        assert_eq!(s.numbers.len(), n, "{file}");
        let mut z = s.numbers.clone();
        z.sort_unstable();
        z.dedup();
        assert_eq!(z, numbers, "{file}");
        assert_eq!(s.pbc, [true; 3], "{file}");
        // The same atoms as the benchmark builds.
        let spec = equikern_model::systems::SystemSpec::parse(
            &file.replace(".extxyz", "").replace('_', ":"),
        )
        .unwrap();
        let built = spec.build().unwrap();
        assert_eq!(built.numbers, s.numbers, "{file}");
        for (a, b) in built.positions.iter().zip(&s.positions) {
            for k in 0..3 {
                assert!((a[k] - b[k]).abs() < 1e-9, "{file}: {a:?} vs {b:?}");
            }
        }
    }
    // Only with --model.
    let o = run(&dir, &["bench", "--export-systems", out.to_str().unwrap()]);
    assert_input_error(&o, &["--export-systems"]);
}
