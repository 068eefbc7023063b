//! CSR tables built on the device (`Runtime::build_csr_tables`) vs the CPU builder
//! (`Csr::packed`), element for element; bad indices reported with the smallest bad position;
//! a convolution on a device-built graph bit-identical to one on the host-built graph.

#[path = "../../equikern-core/tests/conv_common/mod.rs"]
mod conv_common;

use std::sync::Arc;

use conv_common::*;
use equikern_core::conv::{ConvError, Csr, End};
use equikern_core::graph::{diamond, radius_graph, random_skewed, SplitMix64, DIAMOND_A};
use equikern_plan::{lower_conv, ConvOptions, Direction, Dtype, Tensor};
use equikern_wgpu::{Runtime, RuntimeOptions, TensorBuffer, WgpuError, WgpuGraph};
use wgpu::util::DeviceExt;

fn runtime() -> Option<Runtime> {
    let opts = RuntimeOptions {
        poison_outputs: true,
        ..Default::default()
    };
    match Runtime::new_blocking(opts) {
        Ok(r) => Some(r),
        Err(e) => {
            println!("SKIP: no wgpu adapter ({e})");
            None
        }
    }
}

fn index_buffer(rt: &Runtime, v: &[u32]) -> wgpu::Buffer {
    let pad = [0u32];
    let data: &[u32] = if v.is_empty() { &pad } else { v };
    rt.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("index"),
            contents: bytemuck::cast_slice(data),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
}

/// (name, nodes, receiver, sender): directed, skewed (a hub), a radius graph, the same
/// shuffled, isolated nodes, no edges at all.
fn graphs() -> Vec<(&'static str, usize, Vec<u32>, Vec<u32>)> {
    let (n, r, s) = directed();
    let u = |v: Vec<i64>| v.into_iter().map(|a| a as u32).collect::<Vec<u32>>();
    let (rr, ss) = random_skewed(300, 7000, 1.3, 11).unwrap();
    let d = radius_graph(&diamond([3, 3, 3], DIAMOND_A), 3.0).unwrap();
    let mut idx: Vec<usize> = (0..d.receiver.len()).collect();
    let mut rng = SplitMix64(5);
    for i in (1..idx.len()).rev() {
        idx.swap(i, rng.below(i + 1));
    }
    let shuf = |v: &[u32]| idx.iter().map(|&i| v[i]).collect::<Vec<u32>>();
    vec![
        ("directed", n, u(r), u(s)),
        ("skewed", 300, rr, ss),
        ("diamond", 216, d.receiver.clone(), d.sender.clone()),
        ("diamond shuffled", 216, shuf(&d.receiver), shuf(&d.sender)),
        ("isolated", 20, vec![3, 3, 1, 7, 3], vec![1, 7, 7, 3, 3]),
        ("empty", 4, vec![], vec![]),
    ]
}

#[test]
fn device_tables_equal_the_cpu_builder() {
    let Some(rt) = runtime() else { return };
    for (name, n, r, s) in graphs() {
        let want = Csr::build(n, &r, &s).unwrap();
        let (rb, sb) = (index_buffer(&rt, &r), index_buffer(&rt, &s));
        let t = rt
            .build_csr_tables_blocking(n as u32, r.len() as u32, &rb, &sb)
            .unwrap();
        let len = (n + 1 + 2 * r.len()) as u64;
        let recv = pollster::block_on(rt.read_u32(&t.recv, len)).unwrap();
        let send = pollster::block_on(rt.read_u32(&t.send, len)).unwrap();
        assert_eq!(recv, want.packed(End::Receiver), "{name}: receiver view");
        assert_eq!(send, want.packed(End::Sender), "{name}: sender view");
        println!("{name}: {n} nodes, {} edges: both views equal", r.len());
    }
}

#[test]
fn device_builder_names_the_first_bad_index() {
    let Some(rt) = runtime() else { return };
    let n = 10u32;
    let mut r: Vec<u32> = (0..400).map(|e| e % n).collect();
    let mut s: Vec<u32> = (0..400).map(|e| (e * 7 + 3) % n).collect();
    r[377] = 12;
    r[91] = n;
    let e = rt
        .build_csr_tables_blocking(n, 400, &index_buffer(&rt, &r), &index_buffer(&rt, &s))
        .err()
        .expect("bad receiver accepted");
    match e {
        WgpuError::Conv(ConvError::Index {
            array,
            position,
            value,
            nodes,
        }) => {
            assert_eq!((array, position, value, nodes), ("receiver", 91, 10, 10));
        }
        other => panic!("{other}"),
    }
    r[91] = 0;
    r[377] = 0;
    s[250] = u32::MAX - 1;
    let m = rt
        .build_csr_tables_blocking(n, 400, &index_buffer(&rt, &r), &index_buffer(&rt, &s))
        .err()
        .expect("bad sender accepted")
        .to_string();
    assert!(m.contains("sender[250] = 4294967294"), "{m}");
    // A buffer shorter than the edge count is refused before anything runs.
    let m = rt
        .build_csr_tables_blocking(n, 401, &index_buffer(&rt, &r), &index_buffer(&rt, &s))
        .err()
        .expect("short buffer accepted")
        .to_string();
    assert!(m.contains("receiver"), "{m}");
}

#[test]
fn conv_on_a_device_built_graph_is_bit_identical() {
    let Some(rt) = runtime() else { return };
    let tp = uvu_per_edge();
    let (_, n, r, s) = graphs().remove(3); // shuffled radius graph
    let e = r.len();
    let host = WgpuGraph::new(Arc::new(Csr::build(n, &r, &s).unwrap()));
    let (rb, sb) = (index_buffer(&rt, &r), index_buffer(&rt, &s));
    let t = rt
        .build_csr_tables_blocking(n as u32, e as u32, &rb, &sb)
        .unwrap();
    let device = WgpuGraph::from_device(t, rb, sb);
    let mut g = rng(4);
    let f = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect::<Vec<f32>>();
    let x = rt.upload("x", &f(randv(&mut g, n * tp.dim_in1)));
    let y = rt.upload("y", &f(randv(&mut g, e * tp.dim_in2)));
    let w = rt.upload("w", &f(randv(&mut g, e * tp.weight_numel)));
    let gz = rt.upload("gz", &f(randv(&mut g, n * tp.dim_out)));
    for d in [Direction::Forward, Direction::Backward] {
        let plan = lower_conv(
            &tp,
            d,
            Dtype::F32,
            &rt.capabilities(),
            ConvOptions::default(),
        )
        .unwrap();
        let c = rt.prepare_blocking(&plan).unwrap();
        let outs = equikern_wgpu::conv_outputs(&plan);
        let mut results = vec![];
        for graph in [&host, &device] {
            let gs = graph.graph_size(&plan).unwrap();
            let ob: Vec<(Tensor, wgpu::Buffer)> = outs
                .iter()
                .map(|&t| (t, rt.create_storage("out", plan.conv_buffer_len(t, &gs))))
                .collect();
            let mut tb = vec![
                TensorBuffer::new(Tensor::X, &x),
                TensorBuffer::new(Tensor::Y, &y),
                TensorBuffer::new(Tensor::W, &w),
                TensorBuffer::new(Tensor::GZ, &gz),
            ];
            tb.extend(ob.iter().map(|(t, b)| TensorBuffer::new(*t, b)));
            rt.dispatch_conv(&c, graph, &tb).unwrap();
            let v: Vec<Vec<u32>> = ob
                .iter()
                .map(|(_, b)| pollster::block_on(rt.read_u32(b, b.size() / 4)).unwrap())
                .collect();
            results.push(v);
        }
        assert_eq!(results[0], results[1], "{d:?}: device-built graph differs");
        assert!(results[0]
            .iter()
            .flatten()
            .all(|b| f32::from_bits(*b).is_finite()));
    }
    // Pieces need the host-built graph.
    let plan = lower_conv(
        &tp,
        Direction::Forward,
        Dtype::F32,
        &rt.capabilities(),
        ConvOptions {
            atomic: false,
            max_piece_edges: Some(4),
        },
    )
    .unwrap();
    let m = device.graph_size(&plan).err().unwrap().to_string();
    assert!(m.contains("pieces"), "{m}");
}
