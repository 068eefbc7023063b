//! `equikern conv` end to end: results against the conv oracle (cpu, wgpu), and the one-line,
//! exit-code-2 contract for bad indices, files and shapes.

use equikern::core::conv::{ConvOracle, Csr};
use equikern::core::TpSpec;
use npyz::WriterBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_equikern");

const SPEC: &str = r#"{"irreps_in1": "2x0e + 2x1o", "irreps_in2": "1x0e + 1x1o",
  "irreps_out": "2x0e + 2x1o + 2x1e",
  "instructions": [[0, 0, 0, "uvu", true], [1, 1, 0, "uvu", true], [0, 1, 1, "uvu", true],
                   [1, 0, 1, "uvu", true], [1, 1, 2, "uvu", true]],
  "shared_weights": false}"#;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("equikern-conv-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[usize], data: &[T]) {
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&dims)
        .writer(std::io::BufWriter::new(
            std::fs::File::create(path).unwrap(),
        ))
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

fn read_f(path: &Path) -> Vec<f64> {
    let f = npyz::NpyFile::new(std::fs::File::open(path).unwrap()).unwrap();
    if f.dtype().descr().contains("f4") {
        f.into_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    } else {
        f.into_vec::<f64>().unwrap()
    }
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .env("XDG_RUNTIME_DIR", dir)
        .args(args)
        .output()
        .expect("run equikern")
}

fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let n: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let d: f64 = b.iter().map(|y| y * y).sum();
    (n / d.max(1e-300)).sqrt()
}

fn assert_input_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("XDG_RUNTIME_DIR"))
        .collect();
    assert_eq!(lines.len(), 1, "want one stderr line, got: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} not in {err:?}");
    }
}

struct Case {
    dir: PathBuf,
    csr: Csr,
    tp: equikern::TensorProduct,
    x: Vec<f64>,
    y: Vec<f64>,
    w: Vec<f64>,
    gz: Vec<f64>,
}

/// A directed graph with an isolated node; indices stored as int64.
fn case(name: &str) -> Case {
    let dir = tmp(name);
    std::fs::write(dir.join("spec.json"), SPEC).unwrap();
    let tp = TpSpec::from_json(SPEC).unwrap().build().unwrap();
    let (nodes, recv, send) = (5usize, vec![1i64, 2, 2, 0, 1, 3], vec![0i64, 1, 0, 3, 3, 3]);
    let e = recv.len();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut v = |n: usize| -> Vec<f64> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let (x, y, w, gz) = (
        v(nodes * tp.dim_in1),
        v(e * tp.dim_in2),
        v(e * tp.weight_numel),
        v(nodes * tp.dim_out),
    );
    write_npy(&dir.join("x.npy"), &[nodes, tp.dim_in1], &x);
    write_npy(&dir.join("y.npy"), &[e, tp.dim_in2], &y);
    write_npy(&dir.join("w.npy"), &[e, tp.weight_numel], &w);
    write_npy(&dir.join("g.npy"), &[nodes, tp.dim_out], &gz);
    write_npy(&dir.join("r.npy"), &[e], &recv);
    write_npy(&dir.join("s.npy"), &[e], &send);
    let csr = Csr::build(nodes, &recv, &send).unwrap();
    Case {
        dir,
        csr,
        tp,
        x,
        y,
        w,
        gz,
    }
}

const ARGS: [&str; 18] = [
    "conv",
    "--spec",
    "spec.json",
    "--x",
    "x.npy",
    "--y",
    "y.npy",
    "--w",
    "w.npy",
    "--receiver",
    "r.npy",
    "--sender",
    "s.npy",
    "--out",
    "z.npy",
    "--grad-out",
    "g.npy",
    "--grad-x",
];

#[test]
fn conv_matches_the_oracle_on_cpu_and_wgpu() {
    let c = case("ok");
    let o = ConvOracle::<f64>::new(&c.tp).unwrap();
    let z = o.forward(&c.csr, &c.x, &c.y, &c.w).unwrap();
    let b = o.backward(&c.csr, &c.x, &c.y, &c.w, &c.gz).unwrap();
    for (backend, tol) in [("cpu", 1e-15), ("wgpu", 1e-5)] {
        let mut a: Vec<&str> = ARGS.to_vec();
        a.extend([
            "gx.npy",
            "--grad-y",
            "gy.npy",
            "--grad-w",
            "gw.npy",
            "--backend",
            backend,
        ]);
        let out = run(&c.dir, &a);
        let err = String::from_utf8_lossy(&out.stderr);
        if backend == "wgpu" && out.status.code() == Some(2) && err.contains("not available") {
            println!("skipped wgpu: {err}");
            continue;
        }
        assert!(out.status.success(), "{backend}: {err}");
        for (f, want) in [
            ("z.npy", &z),
            ("gx.npy", &b.gx),
            ("gy.npy", &b.gy),
            ("gw.npy", &b.gw),
        ] {
            let e = rel_l2(&read_f(&c.dir.join(f)), want);
            assert!(e <= tol, "{backend} {f}: rel L2 {e:e}");
        }
    }
}

#[test]
fn bad_graphs_exit_2_naming_the_index() {
    let c = case("bad");
    let base: Vec<&str> = ARGS[..15].to_vec();
    write_npy(&c.dir.join("r_bad.npy"), &[6], &[1i64, 9, 2, 0, 1, 3]);
    write_npy(&c.dir.join("s_neg.npy"), &[6], &[0i32, 1, 0, -1, 3, 3]);
    write_npy(&c.dir.join("s_short.npy"), &[5], &[0i64, 1, 0, 3, 3]);
    write_npy(&c.dir.join("s_2d.npy"), &[2, 3], &[0i64, 1, 0, 3, 3, 3]);
    let with = |flag: &str, file: &str| -> Vec<String> {
        let mut v: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        let i = v.iter().position(|a| a == flag).unwrap();
        v[i + 1] = file.into();
        v
    };
    let go = |v: Vec<String>| run(&c.dir, &v.iter().map(String::as_str).collect::<Vec<_>>());
    assert_input_error(
        &go(with("--receiver", "r_bad.npy")),
        &["--receiver", "r_bad.npy", "receiver[1] = 9", "nodes = 5"],
    );
    assert_input_error(
        &go(with("--sender", "s_neg.npy")),
        &["--sender", "sender[3] = -1"],
    );
    assert_input_error(
        &go(with("--sender", "s_short.npy")),
        &["receiver has 6 edges but sender has 5"],
    );
    assert_input_error(&go(with("--sender", "s_2d.npy")), &["--sender", "1-D"]);
    // y with the wrong number of edges
    write_npy(
        &c.dir.join("y_bad.npy"),
        &[5, c.tp.dim_in2],
        &vec![0.0f64; 5 * c.tp.dim_in2],
    );
    assert_input_error(
        &go(with("--y", "y_bad.npy")),
        &["--y", "y_bad.npy", "[6, 4]"],
    );
    // float indices are refused
    write_npy(
        &c.dir.join("r_f.npy"),
        &[6],
        &[1.0f64, 2.0, 2.0, 0.0, 1.0, 3.0],
    );
    assert_input_error(
        &go(with("--receiver", "r_f.npy")),
        &["--receiver", "index dtype"],
    );
    // --atomic has no float atomics on cpu/wgpu
    let mut v = with("--x", "x.npy");
    v.push("--atomic".into());
    assert_input_error(&go(v), &["--atomic"]);
}

/// `--backend cuda` (deterministic and `--atomic`) against the oracle where CUDA is present
/// (f64 inputs compute in f64 there); elsewhere one exit-2 line saying CUDA is not available.
#[test]
fn conv_on_cuda_or_a_clean_exit_2() {
    let c = case("cuda");
    let o = ConvOracle::<f64>::new(&c.tp).unwrap();
    let z = o.forward(&c.csr, &c.x, &c.y, &c.w).unwrap();
    let b = o.backward(&c.csr, &c.x, &c.y, &c.w, &c.gz).unwrap();
    for atomic in [false, true] {
        let mut a: Vec<&str> = ARGS.to_vec();
        a.extend([
            "gx.npy",
            "--grad-y",
            "gy.npy",
            "--grad-w",
            "gw.npy",
            "--backend",
            "cuda",
        ]);
        if atomic {
            a.push("--atomic");
        }
        let out = run(&c.dir, &a);
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(2) && err.contains("not available") {
            assert_input_error(&out, &["--backend cuda", "not available"]);
            println!("skipped cuda (atomic {atomic}): {err}");
            continue;
        }
        assert!(out.status.success(), "cuda atomic={atomic}: {err}");
        for (f, want) in [
            ("z.npy", &z),
            ("gx.npy", &b.gx),
            ("gy.npy", &b.gy),
            ("gw.npy", &b.gw),
        ] {
            let e = rel_l2(&read_f(&c.dir.join(f)), want);
            assert!(e <= 1e-12, "cuda atomic={atomic} {f}: rel L2 {e:e}");
        }
    }
}
