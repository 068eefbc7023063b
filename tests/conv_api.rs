//! The facade's fused convolution ([`equikern::ConvOp`]) on the CPU oracle and on wgpu
//! (lavapipe in CI): every product × graph × direction against the f64 conv oracle,
//! bit-identical reruns, device buffers with poisoned outputs, and errors that name the bad
//! index, length or option before anything runs.

mod conv_support;
mod wgpu_support;

use conv_support::*;
use equikern::plan::{Direction, Tensor};
use equikern::{ConvGraph, ConvOp, ConvOptions, Device};

#[test]
fn cpu_matches_the_oracle() {
    let worst = check_host_f32(&Device::cpu(), ConvOptions::default(), 1e-6);
    println!("cpu: worst rel L2 {worst:.2e}");
}

#[test]
fn cpu_f64_and_errors() {
    let dev = Device::cpu();
    check_errors(&dev);
    // f64 host calls on the oracle
    let tp = conv_common::uvu_per_edge();
    let op = ConvOp::from_tensor_product(tp.clone(), &dev, ConvOptions::default()).unwrap();
    let (n, r, s) = conv_common::directed();
    let g = ConvGraph::new(&dev, n, &r, &s).unwrap();
    let i = inputs(&tp, n, g.edges(), 3);
    let csr = equikern::core::conv::Csr::build(n, &r, &s).unwrap();
    let want = equikern::plan::conv::reference(&tp, &csr, Direction::Forward, &i).unwrap();
    let z = op
        .forward_f64(&g, &i[&Tensor::X], &i[&Tensor::Y], &i[&Tensor::W])
        .unwrap();
    assert_eq!(z, want[&Tensor::Z]);
    // atomic on the CPU oracle: refused
    let m = ConvOp::from_tensor_product(tp, &dev, atomic())
        .unwrap_err()
        .to_string();
    assert!(m.contains("atomic needs float atomics"), "{m}");
}

#[test]
fn wgpu_matches_the_oracle() {
    let Some(dev) = wgpu_support::device(Default::default()) else {
        return;
    };
    let worst = check_host_f32(&dev, ConvOptions::default(), 1e-5);
    println!("wgpu csr: worst rel L2 {worst:.2e}");
    let worst = check_host_f32(&dev, pieces(5), 1e-5);
    println!("wgpu pieces(5): worst rel L2 {worst:.2e}");
}

/// The channel-fused backward (WGSL: barriers, `workgroupUniformLoad`, workgroup memory)
/// on lavapipe: CSR and pieces, against the oracle, poisoned outputs, bit-identical reruns;
/// and the same products with fusion off. Includes `x` blocks of different multiplicities
/// (guarded rows; barriers stay uniform for Tint), whose forward is fused too.
#[test]
fn wgpu_fused_backward_matches_the_oracle() {
    let Some(dev) = wgpu_support::device(Default::default()) else {
        return;
    };
    for (_, tp) in channel_products() {
        for opts in [ConvOptions::default(), pieces(5)] {
            let op = ConvOp::from_tensor_product(tp.clone(), &dev, opts).unwrap();
            let plan = op
                .plan(Direction::Backward, equikern::plan::Dtype::F32)
                .unwrap();
            assert!(
                matches!(plan.kernels[0].work, equikern::plan::Work::Channels(_)),
                "not fused:\n{plan}"
            );
            let off = op.with_channel_fusion(false);
            let plan = off
                .plan(Direction::Backward, equikern::plan::Dtype::F32)
                .unwrap();
            assert!(plan
                .kernels
                .iter()
                .all(|k| !matches!(k.work, equikern::plan::Work::Channels(_))));
        }
    }
    for (name, opts) in [("csr", ConvOptions::default()), ("pieces(5)", pieces(5))] {
        let w = check_host_f32_with(&dev, opts, 1e-5, channel_products(), true);
        println!("wgpu fused {name}: worst rel L2 {w:.2e}");
        let w = check_host_f32_with(&dev, opts, 1e-5, channel_products(), false);
        println!("wgpu rows {name}: worst rel L2 {w:.2e}");
    }
}

/// The channel-fused forward (WGSL, no barriers) on lavapipe: CSR and pieces, one and
/// several output groups, device buffers poisoned with NaN, against the f64 oracle; reruns
/// and the host-slice path bit-identical; the same results for every grouping. Includes
/// `x` blocks of different multiplicities (groups of their own widths).
#[test]
fn wgpu_fused_forward_matches_the_oracle() {
    let Some(dev) = wgpu_support::device(Default::default()) else {
        return;
    };
    let rt = dev.wgpu_runtime().unwrap().clone();
    let mut worst = 0f64;
    for (pn, tp) in channel_products() {
        for (gn, n, r, s) in graphs() {
            let g = ConvGraph::new(&dev, n, &r, &s).unwrap();
            let csr = equikern::core::conv::Csr::build(n, &r, &s).unwrap();
            let i = inputs(&tp, n, g.edges(), 21);
            let (x, y, w) = (
                f32v(&i[&Tensor::X]),
                f32v(&i[&Tensor::Y]),
                f32v(&i[&Tensor::W]),
            );
            let exact: std::collections::BTreeMap<Tensor, Vec<f64>> = [
                (Tensor::X, f64v(&x)),
                (Tensor::Y, f64v(&y)),
                (Tensor::W, f64v(&w)),
            ]
            .into();
            let want = equikern::plan::conv::reference(&tp, &csr, Direction::Forward, &exact)
                .unwrap()
                .remove(&Tensor::Z)
                .unwrap();
            for opts in [ConvOptions::default(), pieces(5)] {
                let mut first: Option<Vec<f32>> = None;
                for regs in [None, Some(8), Some(1)] {
                    let what = format!("{pn} {gn} {opts:?} {regs:?}");
                    let op = ConvOp::from_tensor_product(tp.clone(), &dev, opts)
                        .unwrap()
                        .with_conv_forward_regs(regs);
                    let plan = op
                        .plan(Direction::Forward, equikern::plan::Dtype::F32)
                        .unwrap();
                    let equikern::plan::Work::Channels(c) = &plan.kernels[0].work else {
                        assert!(forward_may_not_fuse(pn, regs), "{what}: not fused:\n{plan}");
                        continue;
                    };
                    let mixed = pn.contains("multi-mul") || pn.contains("sevennet");
                    assert_eq!(!c.uniform(), mixed, "{what}");
                    assert!(regs.is_none() || c.conv.as_ref().unwrap().groups.len() > 1);
                    let up = |t: &[f32]| rt.upload("in", t);
                    let (xb, yb, wb) = (up(&x), up(&y), up(&w));
                    let len = n * op.dim_out();
                    let zb = rt.create_storage("z", len as u64);
                    let nan: Vec<u8> = (0..len).flat_map(|_| f32::NAN.to_le_bytes()).collect();
                    rt.queue().write_buffer(&zb, 0, &nan);
                    op.forward_buffers(&g, &xb, &yb, &wb, &zb).unwrap();
                    let z = rt.read_f32_blocking(&zb, 0, len as u64).unwrap();
                    assert!(z.iter().all(|v| v.is_finite()), "{what}: unwritten z");
                    let e = conv_common::rel_l2(&f64v(&z), &want);
                    assert!(e <= 1e-5, "{what}: rel L2 {e:e}");
                    worst = worst.max(e);
                    let zh = op.forward(&g, &x, &y, &w).unwrap();
                    assert!(z == zh, "{what}: host path differs");
                    let again = op.forward(&g, &x, &y, &w).unwrap();
                    let bits = |a: &[f32], b: &[f32]| {
                        a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits())
                    };
                    assert!(bits(&zh, &again), "{what}: rerun differs");
                    match &first {
                        Some(f) => assert!(bits(f, &z), "{what}: grouping changed z"),
                        None => first = Some(z),
                    }
                }
            }
        }
    }
    println!("wgpu fused forward: worst rel L2 {worst:.2e}");
}

#[test]
fn cpu_channel_products_match_the_oracle() {
    let w = check_host_f32_with(
        &Device::cpu(),
        ConvOptions::default(),
        1e-6,
        channel_products(),
        true,
    );
    println!("cpu: worst rel L2 {w:.2e}");
}

#[test]
fn wgpu_errors_and_no_atomics() {
    let Some(dev) = wgpu_support::device(Default::default()) else {
        return;
    };
    check_errors(&dev);
    let m = ConvOp::from_tensor_product(conv_common::uvu_per_edge(), &dev, atomic())
        .unwrap_err()
        .to_string();
    assert!(m.contains("atomic needs float atomics"), "{m}");
    let op = ConvOp::from_tensor_product(conv_common::uvu_per_edge(), &dev, ConvOptions::default())
        .unwrap();
    let g = ConvGraph::new(&dev, 3, &[0u32, 1], &[1u32, 2]).unwrap();
    let x = vec![0.5f32; 3 * op.dim_in1()];
    let m = op
        .forward_f64(&g, &[0.0; 1], &[0.0; 1], &[0.0; 1])
        .unwrap_err()
        .to_string();
    assert!(m.contains("argument x") || m.contains("f64"), "{m}");
    let _ = x;
}

#[test]
fn wgpu_device_buffers_chain_and_match_host() {
    let Some(dev) = wgpu_support::device(Default::default()) else {
        return;
    };
    let rt = dev.wgpu_runtime().unwrap().clone();
    let tp = conv_common::uvu_per_edge();
    let op = ConvOp::from_tensor_product(tp.clone(), &dev, ConvOptions::default()).unwrap();
    let (_, n, r, s) = graphs().remove(1);
    let g = ConvGraph::new(&dev, n, &r, &s).unwrap();
    let i = inputs(&tp, n, g.edges(), 9);
    let up = |t: Tensor| rt.upload(&format!("{t:?}"), &f32v(&i[&t]));
    let (xb, yb, wb) = (up(Tensor::X), up(Tensor::Y), up(Tensor::W));
    let poison = |len: usize| {
        let b = rt.create_storage("out", len as u64);
        let nan = vec![f32::NAN; len];
        let bytes: Vec<u8> = nan.iter().flat_map(|v| v.to_le_bytes()).collect();
        rt.queue().write_buffer(&b, 0, &bytes);
        b
    };
    let zb = poison(n * op.dim_out());
    op.forward_buffers(&g, &xb, &yb, &wb, &zb).unwrap();
    // z, still on the device, is the backward's grad_z.
    let (gxb, gyb, gwb) = (
        poison(n * op.dim_in1()),
        poison(g.edges() * op.dim_in2()),
        poison(op.weight_len(g.edges()).unwrap()),
    );
    op.backward_buffers(&g, &xb, &yb, &wb, &zb, &gxb, &gyb, &gwb)
        .unwrap();
    let read = |b: &equikern::wgpu::Buffer| rt.read_f32_blocking(b, 0, b.size() / 4).unwrap();
    let (z, gx, gy, gw) = (read(&zb), read(&gxb), read(&gyb), read(&gwb));
    let x = f32v(&i[&Tensor::X]);
    let y = f32v(&i[&Tensor::Y]);
    let w = f32v(&i[&Tensor::W]);
    let zh = op.forward(&g, &x, &y, &w).unwrap();
    let gh = op.backward(&g, &x, &y, &w, &zh).unwrap();
    // Same kernels, same order: bit-identical to the host-slice path.
    assert_eq!(z, zh);
    assert_eq!(gx, gh.gx);
    assert_eq!(gy, gh.gy);
    assert_eq!(gw, gh.gw);
    // A too-short output buffer is refused before anything runs.
    let short = rt.create_storage("short", 3);
    let m = op
        .forward_buffers(&g, &xb, &yb, &wb, &short)
        .unwrap_err()
        .to_string();
    assert!(m.contains("argument z"), "{m}");
    println!("wgpu device buffers: ok ({} edges)", g.edges());
}

#[test]
fn wgpu_graph_built_on_the_device_matches_the_host_graph() {
    let Some(dev) = wgpu_support::device(Default::default()) else {
        return;
    };
    let rt = dev.wgpu_runtime().unwrap().clone();
    let idx = |v: &[u32]| {
        let bytes: Vec<u8> = v.iter().flat_map(|a| a.to_le_bytes()).collect();
        let b = rt
            .device()
            .create_buffer(&equikern::wgpu::BufferDescriptor {
                label: Some("index"),
                size: bytes.len().max(4) as u64,
                usage: equikern::wgpu::BufferUsages::STORAGE
                    | equikern::wgpu::BufferUsages::COPY_SRC
                    | equikern::wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
        rt.queue().write_buffer(&b, 0, &bytes);
        b
    };
    let tp = conv_common::uvu_per_edge();
    let op = ConvOp::from_tensor_product(tp.clone(), &dev, ConvOptions::default()).unwrap();
    for (name, n, r, s) in graphs() {
        let (r32, s32): (Vec<u32>, Vec<u32>) = (
            r.iter().map(|&a| a as u32).collect(),
            s.iter().map(|&a| a as u32).collect(),
        );
        let host = ConvGraph::new(&dev, n, &r32, &s32).unwrap();
        let gpu =
            ConvGraph::from_wgpu_buffers(&dev, n as u32, r32.len() as u32, idx(&r32), idx(&s32))
                .unwrap();
        assert!(gpu.csr().is_none());
        let i = inputs(&tp, n, r.len(), 21);
        let i32s: std::collections::BTreeMap<Tensor, Vec<f32>> =
            i.iter().map(|(t, v)| (*t, f32v(v))).collect();
        for d in [
            Direction::Forward,
            Direction::Backward,
            Direction::DoubleBackward,
        ] {
            let a = run_f32(&op, &host, d, &i32s).unwrap();
            let b = run_f32(&op, &gpu, d, &i32s).unwrap();
            assert_eq!(a, b, "{name} {d:?}: device-built graph differs");
        }
        println!("{name}: device-built graph bit-identical to the host graph");
    }
    // Errors: bad index (smallest bad position), pieces on a device-built graph.
    let m = ConvGraph::from_wgpu_buffers(&dev, 4, 3, idx(&[0, 9, 5]), idx(&[1, 2, 3]))
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("receiver[1] = 9") && m.contains("nodes = 4"),
        "{m}"
    );
    let gpu = ConvGraph::from_wgpu_buffers(&dev, 4, 3, idx(&[0, 1, 2]), idx(&[1, 2, 3])).unwrap();
    let pop = ConvOp::from_tensor_product(tp.clone(), &dev, pieces(2)).unwrap();
    let x = vec![0.5f32; 4 * tp.dim_in1];
    let y = vec![0.5f32; 3 * tp.dim_in2];
    let w = vec![0.5f32; 3 * tp.weight_numel];
    let m = pop.forward(&gpu, &x, &y, &w).unwrap_err().to_string();
    assert!(m.contains("pieces"), "{m}");
}

/// `ConvOp::new` / `with_auto_pieces(true)`: a graph with a hub (a node range longer than
/// `AUTO_PIECES_RANGE`) runs in pieces, others in the CSR mode; explicit options are kept;
/// results match the oracle and reruns are bit-identical (cpu, and wgpu where present).
#[test]
fn auto_pieces_on_a_hub() {
    let mut devs = vec![Device::cpu()];
    if let Some(d) = wgpu_support::device(Default::default()) {
        devs.push(d);
    }
    // 1 200 edges into node 0 (over the 512 threshold), 300 spread over the others.
    let n = 50usize;
    let e = 1500usize;
    let r: Vec<i64> = (0..e)
        .map(|i| if i < 1200 { 0 } else { (i % 49 + 1) as i64 })
        .collect();
    let s: Vec<i64> = (0..e).map(|i| ((i * 17 + 3) % n) as i64).collect();
    let (dn, dr, ds) = conv_common::directed();
    let tp = conv_common::uvu_per_edge();
    for dev in &devs {
        let op = ConvOp::from_tensor_product(tp.clone(), dev, ConvOptions::default())
            .unwrap()
            .with_auto_pieces(true);
        let hub = ConvGraph::new(dev, n, &r, &s).unwrap();
        let small = ConvGraph::new(dev, dn, &dr, &ds).unwrap();
        assert_eq!(
            op.options_for(&hub).max_piece_edges,
            Some(equikern::AUTO_PIECE_EDGES)
        );
        assert_eq!(op.options_for(&small), ConvOptions::default());
        let explicit = ConvOp::from_tensor_product(tp.clone(), dev, pieces(5))
            .unwrap()
            .with_auto_pieces(true);
        assert_eq!(explicit.options_for(&hub), pieces(5));
        let plain = ConvOp::from_tensor_product(tp.clone(), dev, ConvOptions::default()).unwrap();
        assert_eq!(plain.options_for(&hub), ConvOptions::default());

        let i = inputs(&tp, n, e, 5);
        let i32: std::collections::BTreeMap<Tensor, Vec<f32>> =
            i.iter().map(|(t, v)| (*t, f32v(v))).collect();
        let csr = equikern::core::conv::Csr::build(n, &r, &s).unwrap();
        for d in [Direction::Forward, Direction::Backward] {
            let want = equikern::plan::conv::reference(&tp, &csr, d, &i).unwrap();
            let got = run_f32(&op, &hub, d, &i32).unwrap();
            let again = run_f32(&op, &hub, d, &i32).unwrap();
            assert_eq!(got, again, "{d:?}: rerun differs");
            for (t, w) in &want {
                let g = f64v(&got[t]);
                let num: f64 = g.iter().zip(w).map(|(a, b)| (a - b) * (a - b)).sum();
                let den: f64 = w.iter().map(|b| b * b).sum();
                let err = (num / den.max(1e-300)).sqrt();
                assert!(err <= 1e-5, "{} {d:?} {t:?}: rel L2 {err:.2e}", dev.name());
            }
        }
    }
}
