//! `equikern bench`: sane JSON on cpu and wgpu at a tiny batch, FLOP and byte counts equal to
//! the peers' formulas (hand-computed for nequip-water), clean errors for CUDA without a GPU.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_equikern");

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("equikern-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bench(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("bench")
        .args(args)
        .output()
        .expect("run equikern")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// nequip-water by hand: in1 = 32x0o+32x0e+32x1o+32x1e (dim 256), in2 = 0e+1o (dim 4),
/// out = 4 blocks of 32x0 + 6 blocks of 32x1 (dim 704), 10 uvu paths of shape (32, 1), all
/// weighted (weight_numel 320). CG nonzeros of the ten paths: 1,3,1,3,3,3,6,3,6,3 = 32.
/// Forward FLOPs/sample = 3·32·32 + (4·1 + 6·3)·32 = 3072 + 704 = 3776;
/// backward = 9·32·32 = 9216 (the peers charge double backward as backward).
/// Bytes/sample (f32, the peers' formula): forward 4·(256+4+704+320) = 5136,
/// backward 4·(2·(256+4+320) + 704) = 7456; our floor for double backward
/// 4·(3·(256+4+320) + 2·704) = 12592.
const WATER_FLOPS: [(&str, u64); 3] = [
    ("forward", 3776),
    ("backward", 9216),
    ("double_backward", 9216),
];
const WATER_BYTES: [(&str, u64); 3] = [
    ("forward", 5136),
    ("backward", 7456),
    ("double_backward", 7456),
];
const WATER_FLOOR_BYTES: [(&str, u64); 3] = [
    ("forward", 5136),
    ("backward", 7456),
    ("double_backward", 12592),
];

fn lookup(t: &[(&str, u64)], d: &str) -> u64 {
    t.iter().find(|(k, _)| *k == d).unwrap().1
}

fn check_rows(doc: &Value, imp: &str, batch: u64, dirs: &[&str]) {
    let rows = doc["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), dirs.len(), "{doc}");
    assert!(doc["copy_gbps"].as_f64().unwrap() > 0.0);
    for (r, d) in rows.iter().zip(dirs) {
        assert_eq!(r["problem"], "nequip-water");
        assert_eq!(r["direction"], *d);
        assert_eq!(r["impl"], imp);
        assert_eq!(r["batch"].as_u64(), Some(batch));
        assert_eq!(r["dtype"], "float32");
        let ms = r["ms"].as_f64().unwrap_or_else(|| panic!("no ms in {r}"));
        assert!(ms > 0.0 && ms.is_finite(), "{r}");
        assert_eq!(
            r["flops"].as_u64(),
            Some(batch * lookup(&WATER_FLOPS, d)),
            "{r}"
        );
        assert_eq!(
            r["bytes"].as_u64(),
            Some(batch * lookup(&WATER_BYTES, d)),
            "{r}"
        );
        assert_eq!(
            r["floor_bytes"].as_u64(),
            Some(batch * lookup(&WATER_FLOOR_BYTES, d)),
            "{r}"
        );
        let gflops = r["gflops"].as_f64().unwrap();
        let want = (batch * lookup(&WATER_FLOPS, d)) as f64 / (ms * 1e6);
        assert!((gflops - want).abs() <= 1e-9 * want.max(1.0), "{r}");
        let gbps = r["gbps"].as_f64().unwrap();
        assert!((gbps - (batch * lookup(&WATER_BYTES, d)) as f64 / (ms * 1e6)).abs() < 1e-6);
        let floor = r["floor_ms"].as_f64().unwrap();
        assert!(floor > 0.0);
        let pct = r["pct_floor"].as_f64().unwrap();
        assert!(
            (pct - 100.0 * floor / ms).abs() < 1e-6 * pct.max(1.0),
            "{r}"
        );
        assert!(["events", "timestamps", "host"].contains(&r["timing"].as_str().unwrap()));
        assert!(r["compile_ms"].as_f64().unwrap() >= 0.0);
        assert!(r["compile_cached_ms"].as_f64().unwrap() >= 0.0);
        assert!(r["input_sets"].as_u64().unwrap() >= 1);
    }
}

#[test]
fn cpu_bench_json_counts_like_the_peers() {
    let d = tmp("cpu");
    let out = d.join("cpu.json");
    let o = bench(&[
        "--backend",
        "cpu",
        "--batch",
        "8",
        "--reps",
        "3",
        "--warmup",
        "1",
        "--only",
        "nequip-water",
        "--copy-mib",
        "4",
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(doc["impl"], "equikern-cpu");
    check_rows(
        &doc,
        "equikern-cpu",
        8,
        &["forward", "backward", "double_backward"],
    );
    for r in doc["rows"].as_array().unwrap() {
        assert_eq!(r["timing"], "host");
        assert_eq!(r["reps"].as_u64(), Some(3));
    }
}

#[test]
fn wgpu_bench_json_is_sane() {
    let d = tmp("wgpu");
    let out = d.join("wgpu.json");
    let o = bench(&[
        "--backend",
        "wgpu",
        "--batch",
        "16",
        "--reps",
        "3",
        "--warmup",
        "1",
        "--dirs",
        "forward,backward",
        "--only",
        "nequip-water",
        "--copy-mib",
        "8",
        "--json",
        out.to_str().unwrap(),
    ]);
    if o.status.code() == Some(2) && text(&o).contains("not available") {
        eprintln!("skipped: no wgpu adapter: {}", text(&o));
        return;
    }
    assert!(o.status.success(), "{}", text(&o));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(doc["impl"], "equikern-wgpu");
    assert!(["timestamps", "host"].contains(&doc["timing"].as_str().unwrap()));
    check_rows(&doc, "equikern-wgpu", 16, &["forward", "backward"]);
}

#[test]
fn cuda_bench_runs_or_says_cuda_is_not_available() {
    let d = tmp("cuda");
    let out = d.join("cuda.json");
    let o = bench(&[
        "--backend",
        "cuda",
        "--batch",
        "64",
        "--reps",
        "3",
        "--only",
        "nequip-water",
        "--copy-mib",
        "64",
        "--json",
        out.to_str().unwrap(),
    ]);
    if !o.status.success() {
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("CUDA not available"), "{}", text(&o));
        assert_eq!(text(&o).lines().count(), 1, "{}", text(&o));
        return;
    }
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    check_rows(
        &doc,
        "equikern-cuda",
        64,
        &["forward", "backward", "double_backward"],
    );
    for r in doc["rows"].as_array().unwrap() {
        assert_eq!(r["timing"], "events");
    }
}

#[test]
fn bad_arguments_are_input_errors() {
    for args in [
        &["--backend", "cpu", "--dirs", "sideways"][..],
        &["--backend", "cpu", "--only", "no-such-problem"][..],
        &["--backend", "cpu", "--reps", "0"][..],
        &["--backend", "cpu", "--batch", "0"][..],
    ] {
        let o = bench(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert_eq!(text(&o).lines().count(), 1, "{args:?}: {}", text(&o));
    }
}

/// benches/report.py merges our JSON with a peers' log into the markdown table and the SVG.
#[test]
fn report_merges_ours_and_peers() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipped: no python3");
        return;
    }
    let d = tmp("report");
    let ours = d.join("cpu.json");
    let o = bench(&[
        "--backend",
        "cpu",
        "--batch",
        "4",
        "--reps",
        "2",
        "--warmup",
        "0",
        "--dirs",
        "forward",
        "--only",
        "nequip-water",
        "--copy-mib",
        "4",
        "--json",
        ours.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let peers = d.join("peers_oeq.log");
    std::fs::write(
        &peers,
        "loading\n{\"problem\": \"nequip-water\", \"direction\": \"forward\", \"impl\": \"oeq\", \"batch\": 4, \"dtype\": \"float32\", \"ms\": 0.5}\n",
    )
    .unwrap();
    let (md, svg) = (d.join("r.md"), d.join("r.svg"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../benches/report.py");
    let o = Command::new("python3")
        .args([script, ours.to_str().unwrap(), peers.to_str().unwrap()])
        .args(["--md", md.to_str().unwrap(), "--svg", svg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let md = std::fs::read_to_string(md).unwrap();
    let line = md
        .lines()
        .find(|l| l.starts_with("| nequip-water | forward |"))
        .unwrap_or_else(|| panic!("{md}"));
    assert!(line.contains("0.500"), "{line}");
    assert!(std::fs::read_to_string(svg).unwrap().starts_with("<svg"));
}

/// `bench --conv` on the CPU oracle at a tiny size: one row per graph × problem × direction,
/// times positive, the graphs exported as int64 .npy sorted by (receiver, sender) with a
/// manifest; bad graph specs and variants the backend lacks are exit-2 errors.
#[test]
fn conv_bench_cpu_rows_and_exported_graphs() {
    let d = tmp("conv");
    let json = d.join("conv.json");
    let gdir = d.join("graphs");
    let o = bench(&[
        "--conv",
        "--backend",
        "cpu",
        "--graphs",
        "diamond:1:1.7,skewed:50:400",
        "--only",
        "nequip-water",
        "--reps",
        "2",
        "--warmup",
        "0",
        "--export-graphs",
        gdir.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * 2, "{doc}");
    for r in rows {
        assert!(r["ms"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["impl"], "equikern-cpu-det");
        assert_eq!(r["problem"], "nequip-water");
    }
    assert_eq!(rows[0]["graph"], "diamond-1-1.7");
    assert_eq!(rows[0]["nodes"], 8);
    assert_eq!(rows[0]["edges"], 32, "diamond: 4 neighbours each");
    assert_eq!(rows[2]["edges"], 400);
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(gdir.join("graphs.json")).unwrap()).unwrap();
    for g in m["graphs"].as_array().unwrap() {
        let read = |k: &str| -> Vec<i64> {
            let f = std::fs::File::open(gdir.join(g[k].as_str().unwrap())).unwrap();
            let npy = npyz::NpyFile::new(std::io::BufReader::new(f)).unwrap();
            assert_eq!(npy.dtype().descr(), "'<i8'");
            npy.into_vec::<i64>().unwrap()
        };
        let (r, s) = (read("receiver"), read("sender"));
        let n = g["nodes"].as_i64().unwrap();
        assert_eq!(r.len() as u64, g["edges"].as_u64().unwrap());
        assert!(r.iter().chain(&s).all(|&v| (0..n).contains(&v)));
        let pairs: Vec<(i64, i64)> = r.iter().copied().zip(s.iter().copied()).collect();
        assert!(
            pairs.windows(2).all(|w| w[0] <= w[1]),
            "not sorted: {}",
            g["name"]
        );
    }
    for (args, needle) in [
        (vec!["--graphs", "cube:3"], "--graphs"),
        (vec!["--graphs", "diamond:1:9.0"], "2 × cutoff"),
        (vec!["--variants", "atomic"], "--variants atomic"),
        (vec!["--piece-edges", "0"], "--piece-edges"),
    ] {
        let mut a = vec!["--conv", "--backend", "cpu", "--only", "nequip-water"];
        a.extend(args);
        let o = bench(&a);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains(needle), "{needle}: {}", text(&o));
    }
}
