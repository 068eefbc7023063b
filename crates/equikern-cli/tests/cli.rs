//! End-to-end tests of the `equikern` binary: results against the CPU oracle and e3nn's
//! fixtures, and the one-line, exit-code-2 contract for bad input.

use equikern::core::oracle;
use equikern::core::TpSpec;
use npyz::WriterBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_equikern");

/// Per-sample weights, several modes, two instructions into one output block.
const SPEC: &str = r#"{"irreps_in1": "2x0e + 1x1o", "irreps_in2": "1x0e + 1x1o",
  "irreps_out": "2x0e + 1x1o + 1x1e",
  "instructions": [[0, 0, 0, "uvw", true], [1, 1, 0, "uvw", true], [0, 1, 1, "uvw", true],
                   [1, 0, 1, "uvu", true, 2.0], [1, 1, 2, "uuu", false]],
  "shared_weights": false}"#;

const SHARED_SPEC: &str = r#"{"irreps_in1": "2x0e + 1x1o", "irreps_in2": "1x0e + 1x1o",
  "irreps_out": "2x0e + 1x1o", "instructions": [[0, 0, 0, "uvw", true], [0, 1, 1, "uvv", true]],
  "shared_weights": true, "irrep_normalization": "norm", "path_normalization": "path"}"#;

const UNWEIGHTED_SPEC: &str = r#"{"irreps_in1": "1x1o", "irreps_in2": "1x1o",
  "irreps_out": "1x0e + 1x1e", "instructions": [[0, 0, 0, "uuu", false], [0, 0, 1, "uuu", false]]}"#;

/// A fresh directory per test (tests run in parallel).
fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("equikern-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[usize], data: &[T]) {
    write_npy_order(path, shape, data, npyz::Order::C);
}

fn write_npy_order<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[usize],
    data: &[T],
    order: npyz::Order,
) {
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&dims)
        .order(order)
        .writer(std::io::BufWriter::new(
            std::fs::File::create(path).unwrap(),
        ))
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

/// A hand-made .npy (version 1.0) with any header, for files numpy would not write.
fn raw_npy(path: &Path, descr: &str, shape: &str, data_bytes: usize) {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((h.len() as u16).to_le_bytes());
    bytes.extend(h.as_bytes());
    bytes.extend(vec![0u8; data_bytes]);
    std::fs::write(path, bytes).unwrap();
}

/// Reads an array, returning its shape, dtype string and values as f64.
fn read_npy(path: &Path) -> (Vec<usize>, String, Vec<f64>) {
    let f = npyz::NpyFile::new(std::fs::File::open(path).unwrap()).unwrap();
    let shape = f.shape().iter().map(|&d| d as usize).collect();
    let descr = f.dtype().descr();
    let data = if descr.contains("f4") {
        f.into_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    } else {
        f.into_vec::<f64>().unwrap()
    };
    (shape, descr, data)
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        // libwayland (loaded while wgpu probes adapters) prints a line when this is unset.
        .env("XDG_RUNTIME_DIR", dir)
        .args(args)
        .output()
        .expect("run equikern")
}

fn randv(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    d / b.iter().fold(1e-300f64, |m, y| m.max(y.abs()))
}

/// Asserts exit code 2 and exactly one stderr line that contains every `needle`.
fn assert_input_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "want one stderr line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} not in {err:?}");
    }
}

/// Writes a spec and random inputs (x, y, w, grad_out, hx, hy, hw) for `batch` samples.
struct Case {
    dir: PathBuf,
    tp: equikern::TensorProduct,
    batch: usize,
    x: Vec<f64>,
    y: Vec<f64>,
    w: Vec<f64>,
    gz: Vec<f64>,
    hx: Vec<f64>,
    hy: Vec<f64>,
    hw: Vec<f64>,
}

impl Case {
    fn new(name: &str, spec: &str, batch: usize) -> Case {
        let dir = tmp(name);
        std::fs::write(dir.join("spec.json"), spec).unwrap();
        let tp = TpSpec::from_json(spec).unwrap().build().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let wlen = if tp.spec.shared_weights { 1 } else { batch } * tp.weight_numel;
        let c = Case {
            x: randv(&mut rng, batch * tp.dim_in1),
            y: randv(&mut rng, batch * tp.dim_in2),
            w: randv(&mut rng, wlen),
            gz: randv(&mut rng, batch * tp.dim_out),
            hx: randv(&mut rng, batch * tp.dim_in1),
            hy: randv(&mut rng, batch * tp.dim_in2),
            hw: randv(&mut rng, wlen),
            dir,
            tp,
            batch,
        };
        let ws = c.wshape();
        write_npy(&c.dir.join("x.npy"), &[batch, c.tp.dim_in1], &c.x);
        write_npy(&c.dir.join("y.npy"), &[batch, c.tp.dim_in2], &c.y);
        write_npy(&c.dir.join("w.npy"), &ws, &c.w);
        write_npy(&c.dir.join("g.npy"), &[batch, c.tp.dim_out], &c.gz);
        write_npy(&c.dir.join("hx.npy"), &[batch, c.tp.dim_in1], &c.hx);
        write_npy(&c.dir.join("hy.npy"), &[batch, c.tp.dim_in2], &c.hy);
        write_npy(&c.dir.join("hw.npy"), &ws, &c.hw);
        c
    }

    fn wshape(&self) -> Vec<usize> {
        if self.tp.spec.shared_weights {
            vec![self.tp.weight_numel]
        } else {
            vec![self.batch, self.tp.weight_numel]
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        run(&self.dir, args)
    }

    fn read(&self, name: &str) -> (Vec<usize>, String, Vec<f64>) {
        read_npy(&self.dir.join(name))
    }
}

const ALL_OUTPUTS: &[&str] = &[
    "tp",
    "--spec",
    "spec.json",
    "--x",
    "x.npy",
    "--y",
    "y.npy",
    "--w",
    "w.npy",
    "--out",
    "z.npy",
    "--grad-out",
    "g.npy",
    "--grad-x",
    "gx.npy",
    "--grad-y",
    "gy.npy",
    "--grad-w",
    "gw.npy",
    "--hx",
    "hx.npy",
    "--hy",
    "hy.npy",
    "--hw",
    "hw.npy",
    "--dd-x",
    "dx.npy",
    "--dd-y",
    "dy.npy",
    "--dd-w",
    "dw.npy",
    "--dd-g",
    "dg.npy",
];

fn check_round_trip(c: &Case) {
    let out = c.run(ALL_OUTPUTS);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (b, tp) = (c.batch, &c.tp);
    let z = oracle::forward(tp, b, &c.x, &c.y, &c.w).unwrap();
    let g = oracle::backward(tp, b, &c.x, &c.y, &c.w, &c.gz).unwrap();
    let d = oracle::double_backward(tp, b, &c.x, &c.y, &c.w, &c.gz, &c.hx, &c.hy, &c.hw).unwrap();
    let ws = c.wshape();
    for (file, shape, want) in [
        ("z.npy", vec![b, tp.dim_out], &z),
        ("gx.npy", vec![b, tp.dim_in1], &g.gx),
        ("gy.npy", vec![b, tp.dim_in2], &g.gy),
        ("gw.npy", ws.clone(), &g.gw),
        ("dx.npy", vec![b, tp.dim_in1], &d.dx),
        ("dy.npy", vec![b, tp.dim_in2], &d.dy),
        ("dw.npy", ws.clone(), &d.dw),
        ("dg.npy", vec![b, tp.dim_out], &d.dgz),
    ] {
        let (s, descr, got) = c.read(file);
        assert_eq!(s, shape, "{file} shape");
        assert_eq!(descr, "'<f8'", "{file} dtype");
        assert!(
            max_rel(&got, want) <= 1e-15,
            "{file} differs from the oracle"
        );
    }
}

#[test]
fn tp_per_sample_weights_round_trip_matches_oracle() {
    check_round_trip(&Case::new("roundtrip", SPEC, 5));
}

#[test]
fn tp_shared_weights_round_trip_matches_oracle() {
    check_round_trip(&Case::new("shared", SHARED_SPEC, 4));
}

#[test]
fn tp_without_weights_needs_no_w() {
    let c = Case::new("unweighted", UNWEIGHTED_SPEC, 3);
    let out = c.run(&[
        "tp",
        "--spec",
        "spec.json",
        "--x",
        "x.npy",
        "--y",
        "y.npy",
        "--out",
        "z.npy",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (shape, _, z) = c.read("z.npy");
    assert_eq!(shape, vec![3, 4]);
    let want = oracle::forward(&c.tp, 3, &c.x, &c.y, &[]).unwrap();
    assert!(max_rel(&z, &want) <= 1e-15);
}

#[test]
fn tp_float32_inputs_give_float32_outputs_and_dtype_overrides() {
    let c = Case::new("f32", SPEC, 3);
    let to32 = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
    let (x32, y32, w32) = (to32(&c.x), to32(&c.y), to32(&c.w));
    write_npy(&c.dir.join("x32.npy"), &[3, c.tp.dim_in1], &x32);
    write_npy(&c.dir.join("y32.npy"), &[3, c.tp.dim_in2], &y32);
    write_npy(&c.dir.join("w32.npy"), &c.wshape(), &w32);
    let base = [
        "tp",
        "--spec",
        "spec.json",
        "--x",
        "x32.npy",
        "--y",
        "y32.npy",
        "--w",
        "w32.npy",
    ];
    let out = c.run(&[&base[..], &["--out", "z32.npy"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, descr, z) = c.read("z32.npy");
    assert_eq!(descr, "'<f4'");
    let want: Vec<f64> = oracle::forward(&c.tp, 3, &x32, &y32, &w32)
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    assert_eq!(z, want, "f32 output equals the f32 oracle");

    // --dtype f64 computes in f64 from the (exactly widened) f32 inputs.
    let out = c.run(&[&base[..], &["--dtype", "f64", "--out", "z64.npy"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, descr, z) = c.read("z64.npy");
    assert_eq!(descr, "'<f8'");
    let wide = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<f64>>();
    let want = oracle::forward(&c.tp, 3, &wide(&x32), &wide(&y32), &wide(&w32)).unwrap();
    assert_eq!(z, want);
}

#[test]
fn tp_bad_input_exits_2_with_one_line_naming_the_culprit() {
    let c = Case::new("errors", SPEC, 4);
    let d = &c.dir;
    std::fs::write(d.join("bad.json"), "{\"irreps_in1\": ").unwrap();
    std::fs::write(
        d.join("parity.json"),
        r#"{"irreps_in1": "1x1o", "irreps_in2": "1x1o", "irreps_out": "1x1o",
            "instructions": [[0, 0, 0, "uuu", false]]}"#,
    )
    .unwrap();
    std::fs::write(d.join("garbage.npy"), b"definitely not numpy").unwrap();
    write_npy(&d.join("x48.npy"), &[4, 8], &[0.0f64; 32]);
    write_npy(&d.join("x1d.npy"), &[20], &[0.0f64; 20]);
    write_npy(&d.join("xint.npy"), &[4, 5], &[0i64; 20]);
    write_npy_order(
        &d.join("xf.npy"),
        &[4, 5],
        &[0.0f64; 20],
        npyz::Order::Fortran,
    );
    raw_npy(&d.join("xbig.npy"), "<f8", "(1000000000000, 5)", 64);
    raw_npy(
        &d.join("xovf.npy"),
        "<f8",
        "(1099511627776, 1099511627776)",
        64,
    );
    raw_npy(&d.join("xshort.npy"), "<f8", "(4, 5)", 100);
    raw_npy(&d.join("xc16.npy"), "<c16", "(4, 5)", 320);
    raw_npy(&d.join("xbe.npy"), ">f8", "(4, 5)", 160);
    write_npy(&d.join("y3.npy"), &[3, 4], &[0.0f64; 12]);
    write_npy(
        &d.join("wshared.npy"),
        &[c.tp.weight_numel],
        &vec![0.0f64; c.tp.weight_numel],
    );

    let tp = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["tp", "--spec", "spec.json", "--out", "z.npy"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let has = |flag: &str| extra.contains(&flag);
        for (flag, file) in [("--x", "x.npy"), ("--y", "y.npy"), ("--w", "w.npy")] {
            if !has(flag) {
                a.extend([flag.to_string(), file.to_string()]);
            }
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let check = |extra: &[&str], needles: &[&str]| {
        let args = tp(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_input_error(&c.run(&args), needles);
    };
    // Files and formats.
    check(
        &["--x", "missing.npy"],
        &["--x", "missing.npy", "cannot open"],
    );
    check(
        &["--x", "garbage.npy"],
        &["--x", "garbage.npy", "not a valid .npy"],
    );
    check(&["--x", "xint.npy"], &["--x", "xint.npy", "<i8", "float64"]);
    check(&["--x", "xf.npy"], &["--x", "xf.npy", "Fortran"]);
    check(
        &["--x", "xbig.npy"],
        &["--x", "xbig.npy", "truncated", "data bytes"],
    );
    check(&["--x", "xovf.npy"], &["--x", "xovf.npy", "too large"]);
    check(&["--x", "xshort.npy"], &["--x", "xshort.npy", "data bytes"]);
    check(&["--x", "xc16.npy"], &["--x", "xc16.npy", "<c16"]);
    check(
        &["--x", "xbe.npy"],
        &["--x", "xbe.npy", ">f8", "little-endian"],
    );
    // Shapes.
    check(
        &["--x", "x48.npy"],
        &["--x x48.npy: expected shape [batch, 5] for irreps_in1 \"2x0e+1x1o\", got [4, 8]"],
    );
    check(&["--x", "x1d.npy"], &["--x", "got [20]"]);
    check(
        &["--y", "y3.npy"],
        &["--y", "y3.npy", "batch 3", "--x batch 4"],
    );
    check(
        &["--w", "wshared.npy"],
        &["--w", "wshared.npy", "expected shape [4, 9]", "per-sample"],
    );
    check(
        &["--grad-out", "x.npy", "--grad-x", "gx.npy"],
        &["--grad-out", "x.npy", "irreps_out"],
    );
    // Specs.
    let spec_err = |spec: &str, needles: &[&str]| {
        let args = [
            "tp", "--spec", spec, "--x", "x.npy", "--y", "y.npy", "--w", "w.npy", "--out", "z.npy",
        ];
        assert_input_error(&c.run(&args), needles);
    };
    spec_err("bad.json", &["--spec", "bad.json"]);
    spec_err("parity.json", &["--spec", "parity.json", "instruction 0"]);
    spec_err("nope.json", &["--spec", "nope.json", "cannot read"]);
    // Flag pairs.
    check(&["--grad-x", "gx.npy"], &["--grad-x requires --grad-out"]);
    check(&["--dd-w", "dw.npy"], &["--dd-w requires --grad-out"]);
    check(
        &["--grad-out", "g.npy"],
        &["--grad-out", "no gradient output"],
    );
    check(&["--grad-out", "g.npy", "--dd-x", "dx.npy"], &["--hx"]);
    check(
        &[
            "--grad-out",
            "g.npy",
            "--dd-x",
            "dx.npy",
            "--hx",
            "hx.npy",
            "--hy",
            "hy.npy",
        ],
        &["--hw"],
    );
    check(&["--hx", "hx.npy"], &["--hx", "no double-backward output"]);
    // Weights required by the spec.
    let args = [
        "tp",
        "--spec",
        "spec.json",
        "--x",
        "x.npy",
        "--y",
        "y.npy",
        "--out",
        "z.npy",
    ];
    assert_input_error(&c.run(&args), &["--w is required", "weight_numel 9"]);
    // Unknown flag and value (clap).
    check(&["--bogus"], &["--bogus"]);
    check(&["--dtype", "f16"], &["f16"]);
    let no_out = [
        "tp",
        "--spec",
        "spec.json",
        "--x",
        "x.npy",
        "--y",
        "y.npy",
        "--w",
        "w.npy",
    ];
    assert_input_error(&c.run(&no_out), &["required", "--out"]);
    // Nothing was written by the failed runs.
    assert!(!d.join("z.npy").exists());
}

#[test]
fn tp_gpu_backends_run_in_f32_or_say_why_not() {
    let c = Case::new("backend", SPEC, 3);
    let base = [
        "tp",
        "--spec",
        "spec.json",
        "--x",
        "x.npy",
        "--y",
        "y.npy",
        "--w",
        "w.npy",
        "--out",
        "z.npy",
        "--backend",
    ];
    for backend in ["wgpu", "cuda"] {
        // f64 inputs and no --dtype: GPU backends compute in f32 only.
        let out = c.run(&[&base[..], &[backend]].concat());
        assert_input_error(&out, &["--backend", backend]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not available") || err.contains("--dtype f32"),
            "{err}"
        );

        let out = c.run(&[&base[..], &[backend, "--dtype", "f32"]].concat());
        if !out.status.success() {
            assert_input_error(&out, &["--backend", backend, "not available"]);
            continue;
        }
        let (_, descr, z) = c.read("z.npy");
        assert_eq!(descr, "'<f4'");
        let want = oracle::forward(&c.tp, 3, &c.x, &c.y, &c.w).unwrap();
        let e = max_rel(&z, &want);
        assert!(e < 1e-5, "{backend}: rel err {e:.2e} vs the f64 oracle");
    }
}

#[test]
fn info_reports_weight_numel_coefficients_and_cost() {
    let c = Case::new("info", SPEC, 1);
    let out = c.run(&["info", "--spec", "spec.json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("weight_numel 9"), "{text}");
    for needle in [
        "irreps_in1",
        "uvw",
        "uuu",
        "path_shape",
        "cg_nonzeros_total",
        "flops_per_sample",
        "bytes_per_sample",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    let coefficient = format!("{:.16}", c.tp.paths[0].coefficient);
    assert!(
        text.contains(&coefficient),
        "{coefficient} missing:\n{text}"
    );

    let bad = c.run(&["info", "--spec", "missing.json"]);
    assert_input_error(&bad, &["--spec", "missing.json"]);
}

#[test]
fn suite_prints_a_row_per_problem_and_direction() {
    let dir = tmp("suite");
    let out = run(
        &dir,
        &[
            "suite",
            "--batch",
            "8",
            "--check-batch",
            "4",
            "--dtype",
            "f64",
            "--filter",
            "tetris",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for row in ["tetris-poly-1", "tetris-poly-2"] {
        for dir in ["forward", "backward"] {
            assert!(
                text.lines().any(|l| l.starts_with(row) && l.contains(dir)),
                "no {row} {dir} row:\n{text}"
            );
        }
    }
    assert!(
        text.contains("GFLOP/s") && text.contains("rel_err"),
        "{text}"
    );

    std::fs::write(dir.join("bad.json"), "{\"problems\": [{}]}").unwrap();
    assert_input_error(
        &run(&dir, &["suite", "--suite", "bad.json"]),
        &["--suite", "bad.json"],
    );
    assert_input_error(
        &run(&dir, &["suite", "--filter", "no-such-problem"]),
        &["no problems", "no-such-problem"],
    );
}

/// One e3nn fixture case through the binary: .npy in, .npy out, compared with e3nn's numbers.
#[test]
fn tp_reproduces_an_e3nn_fixture_case() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/e3nn_fixtures.json"
    );
    let Ok(text) = std::fs::read_to_string(path) else {
        eprintln!("skipped: {path} not present");
        return;
    };
    let fixtures: serde_json::Value = serde_json::from_str(&text).unwrap();
    let case = fixtures["tensor_products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "channelwise-uvu")
        .expect("channelwise-uvu case");
    let flat = |k: &str| -> Vec<f64> {
        fn walk(v: &serde_json::Value, out: &mut Vec<f64>) {
            match v {
                serde_json::Value::Array(a) => a.iter().for_each(|e| walk(e, out)),
                n => out.push(n.as_f64().unwrap()),
            }
        }
        let mut out = Vec::new();
        walk(&case[k], &mut out);
        out
    };
    let c = Case::new(
        "fixture",
        &case["spec"].to_string(),
        case["batch"].as_u64().unwrap() as usize,
    );
    let b = c.batch;
    let ws = c.wshape();
    for (file, shape, key) in [
        ("x.npy", vec![b, c.tp.dim_in1], "x"),
        ("y.npy", vec![b, c.tp.dim_in2], "y"),
        ("w.npy", ws.clone(), "w"),
        ("g.npy", vec![b, c.tp.dim_out], "grad_z"),
        ("hx.npy", vec![b, c.tp.dim_in1], "hx"),
        ("hy.npy", vec![b, c.tp.dim_in2], "hy"),
        ("hw.npy", ws.clone(), "hw"),
    ] {
        write_npy(&c.dir.join(file), &shape, &flat(key));
    }
    let out = c.run(ALL_OUTPUTS);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (file, key) in [
        ("z.npy", "z"),
        ("gx.npy", "grad_x"),
        ("gy.npy", "grad_y"),
        ("gw.npy", "grad_w"),
        ("dx.npy", "dd_x"),
        ("dy.npy", "dd_y"),
        ("dw.npy", "dd_w"),
        ("dg.npy", "dd_grad_z"),
    ] {
        let (_, _, got) = c.read(file);
        let e = max_rel(&got, &flat(key));
        assert!(e <= 1e-12, "{file} vs e3nn {key}: rel err {e:.2e}");
    }
}

#[test]
fn a_panic_prints_one_line_and_exits_101() {
    let dir = tmp("panic");
    let out = Command::new(BIN)
        .current_dir(&dir)
        .env("EQUIKERN_CLI_TEST_PANIC", "1")
        .env("RUST_BACKTRACE", "1")
        .args(["info", "--spec", "x.json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: internal error"), "{err}");
    assert!(
        err.contains("forced by EQUIKERN_CLI_TEST_PANIC second line"),
        "{err}"
    );
}
