//! The CUDA neighbour list on a device against `Graph::build`: the same edges in the same
//! order, the same shifts, bit-identical edge vectors — on the structures of the CPU
//! emulation test, random ones, an MD-like run (one list reused, positions moving) and Si
//! diamond with 32 768 atoms, with the host and device times printed. Skips (printing why)
//! without a CUDA device.

#![cfg(feature = "cuda")]

mod common;
mod neighbours_common;

use equikern::cuda_runtime::{availability, CacheLevel, CudaDevice};
use equikern_model::neighbours_cuda::CudaNeighbourList;
use equikern_model::systems::{si_diamond, water_box};
use equikern_model::{Graph, Structure};
use neighbours_common::{cases, random, Lcg};
use std::time::Instant;

fn device() -> Option<CudaDevice> {
    if let Err(e) = availability() {
        println!("skipped: {e}");
        return None;
    }
    match CudaDevice::new(0) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("skipped: {e}");
            None
        }
    }
}

fn assert_same(name: &str, got: &Graph, want: &Graph) {
    assert_eq!(got.len(), want.len(), "{name}: edge count");
    assert_eq!(got.src, want.src, "{name}: centres");
    assert_eq!(got.dst, want.dst, "{name}: neighbours");
    assert_eq!(got.shift, want.shift, "{name}: shifts");
    assert_eq!(got.pairs, want.pairs, "{name}: pairs");
    assert!(
        got.is_empty() || got.pairs == 0 || got.paired(),
        "{name}: pair order"
    );
    let bits = |g: &Graph| -> Vec<[u64; 3]> { g.vec.iter().map(|v| v.map(f64::to_bits)).collect() };
    assert_eq!(bits(got), bits(want), "{name}: edge vectors");
}

fn device_graph(nl: &mut CudaNeighbourList, s: &Structure, rc: f64) -> Graph {
    let e = nl.build(s, rc).unwrap();
    assert_eq!(nl.edges(), e);
    if e > 0 {
        assert_eq!(nl.receiver().unwrap().len(), e);
        assert_eq!(nl.sender().unwrap().len(), e);
        assert_eq!(nl.shifts().unwrap().len(), 3 * e);
        assert_eq!(nl.vectors().unwrap().len(), 3 * e);
    }
    nl.download().unwrap()
}

#[test]
fn device_list_equals_the_host_list() {
    let Some(dev) = device() else { return };
    let mut nl = CudaNeighbourList::new(&dev).unwrap();
    println!(
        "{} ({}), module: {:?}",
        dev.name(),
        dev.arch(),
        nl.compile_level()
    );
    // one list for every case: its buffers grow and shrink-in-use between them
    for (name, s, rc) in cases() {
        let want = Graph::build(&s, rc).unwrap();
        assert_same(&name, &device_graph(&mut nl, &s, rc), &want);
        println!(
            "{name}: {} atoms, {} edges, equal",
            s.positions.len(),
            want.len()
        );
    }
    let mut r = Lcg(7);
    for case in 0..200 {
        let mut cell = [[0.0; 3]; 3];
        for (k, row) in cell.iter_mut().enumerate() {
            row[k] = 2.0 + 12.0 * r.next();
            for (d, x) in row.iter_mut().enumerate() {
                if d != k {
                    *x = (r.next() - 0.5) * 0.5 * (2.0 + 10.0 * r.next());
                }
            }
        }
        let pbc = [r.next() < 0.7, r.next() < 0.7, r.next() < 0.7];
        let n = (r.next() * 150.0) as usize;
        let rc = 1.5 + 4.5 * r.next();
        let s = random(cell, pbc, n, -0.5, 1.5, 5000 + case);
        let name = format!("random {case}: {pbc:?} n={n} rc={rc:.2}");
        match (nl.build(&s, rc), Graph::build(&s, rc)) {
            (Ok(_), Ok(w)) => {
                let g = nl.download().unwrap();
                assert_same(&name, &g, &w);
                if case % 4 == 0 {
                    assert_same(&name, &g.sorted(), &Graph::build_all_pairs(&s, rc).unwrap());
                }
            }
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{name}"),
            (a, b) => panic!("{name}: device {a:?} vs host {:?}", b.map(|g| g.len())),
        }
    }
    // sevenn's reference structures (ASE/matscipy's edge counts), when the fixture is there
    for r in common::sevenn_references().unwrap_or_default() {
        let g = device_graph(&mut nl, &r.structure, 5.0);
        assert_eq!(g.len(), r.num_edges, "{}: sevenn's edge count", r.name);
        assert_same(&r.name, &g, &Graph::build(&r.structure, 5.0).unwrap());
        println!("{}: {} edges, as sevenn's", r.name, g.len());
    }
    // errors as the host's
    let si = si_diamond(1);
    for rc in [-1.0, f64::NAN, 0.0] {
        let a = nl.build(&si, rc).unwrap_err().to_string();
        assert_eq!(a, Graph::build(&si, rc).unwrap_err().to_string());
    }
    // positions already on the device
    let s = water_box(4, 3);
    let flat: Vec<f64> = s.positions.iter().flatten().copied().collect();
    let d = dev.upload(&flat).unwrap();
    nl.build_on_device(&d, s.positions.len(), s.cell, s.pbc, 5.0)
        .unwrap();
    assert_same(
        "water on device",
        &nl.download().unwrap(),
        &Graph::build(&s, 5.0).unwrap(),
    );
    assert!(nl
        .build_on_device(&d, s.positions.len() + 1, s.cell, s.pbc, 5.0)
        .is_err());
}

#[test]
fn device_list_through_an_md_run() {
    let Some(dev) = device() else { return };
    let mut nl = CudaNeighbourList::new(&dev).unwrap();
    let mut s = water_box(6, 11);
    let mut r = Lcg(3);
    let mut counts = Vec::new();
    for step in 0..30 {
        // thermal-like displacements; atoms leave the cell and are not wrapped back
        for p in s.positions.iter_mut() {
            for x in p.iter_mut() {
                *x += (r.next() - 0.5) * 0.3;
            }
        }
        let want = Graph::build(&s, 5.0).unwrap();
        assert_same(
            &format!("md step {step}"),
            &device_graph(&mut nl, &s, 5.0),
            &want,
        );
        counts.push(want.len());
    }
    // a second list on the device finds the module in memory: nothing compiles again
    let again = CudaNeighbourList::new(&dev).unwrap();
    assert_eq!(again.compile_level(), CacheLevel::Memory);
    counts.dedup();
    assert!(
        counts.len() > 10,
        "the edge count should change: {counts:?}"
    );
    println!(
        "30 steps, {} distinct edge counts, {} device bytes",
        counts.len(),
        nl.device_bytes()
    );
}

#[test]
fn large_si_equals_the_host_with_timings() {
    let Some(dev) = device() else { return };
    let mut nl = CudaNeighbourList::new(&dev).unwrap();
    for (name, s, rc) in [
        ("Si diamond 16^3 cells", si_diamond(16), 5.0),
        ("water 22^3 molecules", water_box(22, 5), 5.0),
    ] {
        let n = s.positions.len();
        let t = Instant::now();
        let want = Graph::build(&s, rc).unwrap();
        let host_ms = t.elapsed().as_secs_f64() * 1e3;
        let first = Instant::now();
        nl.build(&s, rc).unwrap();
        let first_ms = first.elapsed().as_secs_f64() * 1e3;
        assert_same(name, &nl.download().unwrap(), &want);
        let mut build = Vec::new();
        let mut with_download = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            nl.build(&s, rc).unwrap();
            dev.synchronize().unwrap();
            build.push(t.elapsed().as_secs_f64() * 1e3);
            let _ = nl.download().unwrap();
            with_download.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let med = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{name}: {n} atoms, {} edges, identical; host Graph::build {host_ms:.2} ms; \
             device build {:.3} ms (first call {first_ms:.2} ms), build + download to a Graph {:.3} ms",
            want.len(),
            med(build),
            med(with_download)
        );
    }
}

#[test]
fn cuda_evaluator_uses_the_device_list_for_large_systems() {
    let Some(dev) = device() else { return };
    drop(dev);
    let model = common::small_model("poly_cut", 5);
    let mut ev = equikern_model::Evaluator::new(
        &model,
        equikern_model::Target::Cuda,
        equikern_model::Dtype::F64,
    )
    .unwrap();
    let s = water_box(6, 2);
    ev.set_gpu_neighbour_list_min_atoms(None);
    assert_eq!(ev.neighbour_list_on(&s), "cpu");
    let (host, _) = ev.evaluate_profiled(&s).unwrap();
    ev.set_gpu_neighbour_list_min_atoms(Some(s.positions.len()));
    assert_eq!(ev.neighbour_list_on(&s), "cuda");
    assert_same(
        "evaluator list",
        &ev.neighbour_list(&s).unwrap(),
        &Graph::build(&s, ev.cutoff()).unwrap(),
    );
    let (gpu, prof) = ev.evaluate_profiled(&s).unwrap();
    assert!(prof.neighbour_list_s > 0.0);
    // the same graph, so the same (deterministic) step, bit for bit
    assert_eq!(gpu.energy.to_bits(), host.energy.to_bits());
    assert_eq!(gpu.forces, host.forces);
    assert_eq!(gpu.stress, host.stress);
    let small = water_box(2, 2);
    assert_eq!(ev.neighbour_list_on(&small), "cpu");
}
