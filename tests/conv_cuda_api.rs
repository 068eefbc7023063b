//! The facade's fused convolution on CUDA: deterministic (CSR, pieces) and atomic modes, f32
//! and f64, host slices and `CudaSlice`s, against the f64 conv oracle. Prints "skipped: …"
//! and passes where CUDA is not available.

mod conv_support;

use conv_support::*;
use equikern::plan::{Direction, Tensor};
use equikern::{Backend, ConvGraph, ConvOp, ConvOptions, Device, Error};

fn device() -> Option<Device> {
    match Device::new(Backend::Cuda) {
        Ok(d) => Some(d),
        Err(e) => {
            assert!(
                matches!(
                    e,
                    Error::Unavailable {
                        backend: "cuda",
                        ..
                    }
                ),
                "{e}"
            );
            println!("skipped: {e}");
            None
        }
    }
}

#[test]
fn cuda_matches_the_oracle_in_every_mode() {
    let Some(dev) = device() else { return };
    for (name, opts, tol) in [
        ("csr", ConvOptions::default(), 1e-5),
        ("pieces(5)", pieces(5), 1e-5),
        ("atomic", atomic(), 1e-5),
    ] {
        let worst = check_host_f32(&dev, opts, tol);
        println!("cuda {name}: worst rel L2 {worst:.2e}");
    }
}

#[test]
fn cuda_errors() {
    let Some(dev) = device() else { return };
    check_errors(&dev);
}

#[test]
fn cuda_f64_and_device_buffers() {
    let Some(dev) = device() else { return };
    let cd = dev.cuda_device().unwrap().clone();
    let tp = conv_common::uvu_per_edge();
    for opts in [ConvOptions::default(), atomic()] {
        let op = ConvOp::from_tensor_product(tp.clone(), &dev, opts).unwrap();
        let (_, n, r, s) = graphs().remove(1);
        let g = ConvGraph::new(&dev, n, &r, &s).unwrap();
        let csr = equikern::core::conv::Csr::build(n, &r, &s).unwrap();
        let i = inputs(&tp, n, g.edges(), 5);
        let v = |t: Tensor| &i[&t][..];
        // f64 host calls
        let want = equikern::plan::conv::reference(&tp, &csr, Direction::Backward, &i).unwrap();
        let b = op
            .backward_f64(&g, v(Tensor::X), v(Tensor::Y), v(Tensor::W), v(Tensor::GZ))
            .unwrap();
        for (got, t) in [
            (&b.gx, Tensor::GX),
            (&b.gy, Tensor::GY),
            (&b.gw, Tensor::GW),
        ] {
            let e = conv_common::rel_l2(got, &want[&t]);
            assert!(e < 1e-12, "{opts:?} f64 {t:?}: {e:e}");
        }
        // f32 device buffers, outputs poisoned with NaN
        let up = |t: Tensor| cd.upload(&f32v(&i[&t])).unwrap();
        let (x, y, w, gz) = (up(Tensor::X), up(Tensor::Y), up(Tensor::W), up(Tensor::GZ));
        let nan = |len: usize| cd.upload(&vec![f32::NAN; len]).unwrap();
        let mut z = nan(n * op.dim_out());
        op.forward_cuda(&g, &x, &y, &w, &mut z).unwrap();
        let (mut gx, mut gy, mut gw) = (
            nan(n * op.dim_in1()),
            nan(g.edges() * op.dim_in2()),
            nan(op.weight_len(g.edges()).unwrap()),
        );
        op.backward_cuda(&g, &x, &y, &w, &gz, &mut gx, &mut gy, &mut gw)
            .unwrap();
        let i32r: std::collections::BTreeMap<Tensor, Vec<f64>> =
            i.iter().map(|(t, v)| (*t, f64v(&f32v(v)))).collect();
        let wf = equikern::plan::conv::reference(&tp, &csr, Direction::Forward, &i32r).unwrap();
        let wb = equikern::plan::conv::reference(&tp, &csr, Direction::Backward, &i32r).unwrap();
        let dl = |b: &equikern::CudaSlice<f32>| f64v(&cd.download(b, b.len()).unwrap());
        for (got, want, t) in [
            (dl(&z), &wf[&Tensor::Z], "z"),
            (dl(&gx), &wb[&Tensor::GX], "gx"),
            (dl(&gy), &wb[&Tensor::GY], "gy"),
            (dl(&gw), &wb[&Tensor::GW], "gw"),
        ] {
            let e = conv_common::rel_l2(&got, want);
            assert!(e < 1e-5, "{opts:?} buffers {t}: {e:e}");
        }
        // A short buffer is refused before anything runs.
        let mut short = cd.zeros::<f32>(2).unwrap();
        let m = op
            .forward_cuda(&g, &x, &y, &w, &mut short)
            .unwrap_err()
            .to_string();
        assert!(m.contains("argument z"), "{m}");
        println!("cuda {opts:?}: f64 and device buffers ok");
    }
}

/// CSR views built on the GPU (`ConvGraph::from_cuda_slices`) equal the host builder's, and
/// convolutions on them are bit-identical (det) to those on the host-built graph; the first
/// bad index is named.
#[test]
fn cuda_graph_built_on_the_device() {
    let Some(dev) = device() else { return };
    let cd = dev.cuda_device().unwrap().clone();
    let tp = conv_common::uvu_per_edge();
    let up = |v: &[u32]| {
        let mut d = cd.stream().alloc_zeros::<u32>(v.len().max(1)).unwrap();
        if !v.is_empty() {
            cd.stream()
                .memcpy_htod(v, &mut d.slice_mut(0..v.len()))
                .unwrap();
        }
        d
    };
    for opts in [ConvOptions::default(), atomic()] {
        let op = ConvOp::from_tensor_product(tp.clone(), &dev, opts).unwrap();
        for (name, n, r, s) in graphs() {
            let r32: Vec<u32> = r.iter().map(|&a| a as u32).collect();
            let s32: Vec<u32> = s.iter().map(|&a| a as u32).collect();
            // the tables themselves
            let t = cd
                .build_csr_tables(n as u32, r32.len() as u32, &up(&r32), &up(&s32))
                .unwrap();
            let want = equikern::core::conv::Csr::build(n, &r32, &s32).unwrap();
            let len = n + 1 + 2 * r32.len();
            use equikern::core::conv::End;
            assert_eq!(
                cd.stream().clone_dtoh(&t.recv.slice(0..len)).unwrap(),
                want.packed(End::Receiver),
                "{name}"
            );
            assert_eq!(
                cd.stream().clone_dtoh(&t.send.slice(0..len)).unwrap(),
                want.packed(End::Sender),
                "{name}"
            );
            // conv on the device-built graph
            let host = ConvGraph::new(&dev, n, &r32, &s32).unwrap();
            let gpu =
                ConvGraph::from_cuda_slices(&dev, n as u32, r32.len() as u32, up(&r32), up(&s32))
                    .unwrap();
            let i = inputs(&tp, n, r.len(), 8);
            let i32s: std::collections::BTreeMap<Tensor, Vec<f32>> =
                i.iter().map(|(t, v)| (*t, f32v(v))).collect();
            for d in [
                Direction::Forward,
                Direction::Backward,
                Direction::DoubleBackward,
            ] {
                let a = run_f32(&op, &host, d, &i32s).unwrap();
                let b = run_f32(&op, &gpu, d, &i32s).unwrap();
                if opts.atomic {
                    for (t, v) in &a {
                        let e = conv_common::rel_l2(&f64v(&b[t]), &f64v(v));
                        assert!(e < 1e-5, "{name} {d:?} {t:?}: {e:e}");
                    }
                } else {
                    assert_eq!(a, b, "{name} {d:?}: device-built graph differs");
                }
            }
        }
    }
    // The grow-only pool: graph after graph (larger, smaller) into the same buffers, each
    // equal to the host builder's and running bit-identical convolutions; a graph still
    // alive blocks the next build.
    let mut pool = equikern::cuda_runtime::CsrPool::new(&cd).unwrap();
    let op = ConvOp::from_tensor_product(tp.clone(), &dev, ConvOptions::default()).unwrap();
    for (name, n, r, s) in graphs().into_iter().chain(graphs().into_iter().rev()) {
        let r32: Vec<u32> = r.iter().map(|&a| a as u32).collect();
        let s32: Vec<u32> = s.iter().map(|&a| a as u32).collect();
        let (rb, sb) = (up(&r32), up(&s32));
        let e = r32.len();
        let g = ConvGraph::from_cuda_pool(
            &dev,
            &mut pool,
            n as u32,
            e as u32,
            &rb.slice(0..e),
            &sb.slice(0..e),
        )
        .unwrap();
        let want = equikern::core::conv::Csr::build(n, &r32, &s32).unwrap();
        use equikern::core::conv::End;
        let len = n + 1 + 2 * e;
        for (t, end) in [
            (Tensor::RecvCsr, End::Receiver),
            (Tensor::SendCsr, End::Sender),
        ] {
            let got = g.cuda_table(t).unwrap();
            assert_eq!(
                cd.stream().clone_dtoh(&got.slice(0..len)).unwrap(),
                want.packed(end),
                "pool {name} {t:?}"
            );
        }
        let host = ConvGraph::new(&dev, n, &r32, &s32).unwrap();
        let i = inputs(&tp, n, r.len(), 8);
        let i32s: std::collections::BTreeMap<Tensor, Vec<f32>> =
            i.iter().map(|(t, v)| (*t, f32v(v))).collect();
        for d in [Direction::Forward, Direction::Backward] {
            let a = run_f32(&op, &host, d, &i32s).unwrap();
            let b = run_f32(&op, &g, d, &i32s).unwrap();
            assert_eq!(a, b, "pool {name} {d:?}: differs from the host-built graph");
        }
        let again = ConvGraph::from_cuda_pool(
            &dev,
            &mut pool,
            n as u32,
            e as u32,
            &rb.slice(0..e),
            &sb.slice(0..e),
        );
        assert!(
            again.is_err_and(|m| m.to_string().contains("still alive")),
            "pool {name}: a build while the last graph lives"
        );
        drop(g);
    }
    let m = ConvGraph::from_cuda_slices(&dev, 4, 3, up(&[0, 9, 5]), up(&[1, 2, 3]))
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("receiver[1] = 9") && m.contains("nodes = 4"),
        "{m}"
    );
    println!("cuda device-built graphs: ok");
}

/// The channel-fused backward over the sender view (NequIP/MACE-shaped products): CUDA plans
/// take it; f32 host calls (CSR, pieces) against the oracle with bit-identical reruns, the
/// same with fusion off, and f64 to 1e-12; f32 device outputs poisoned with NaN.
#[test]
fn cuda_fused_backward_matches_the_oracle() {
    let Some(dev) = device() else { return };
    use equikern::plan::{Dtype, Work};
    for (pname, tp) in channel_products() {
        for opts in [ConvOptions::default(), pieces(5)] {
            let op = ConvOp::from_tensor_product(tp.clone(), &dev, opts).unwrap();
            let plan = op.plan(Direction::Backward, Dtype::F32).unwrap();
            assert!(
                matches!(plan.kernels[0].work, Work::Channels(_)),
                "{pname}: not fused"
            );
            for (_, n, r, s) in graphs() {
                let g = ConvGraph::new(&dev, n, &r, &s).unwrap();
                let csr = equikern::core::conv::Csr::build(n, &r, &s).unwrap();
                let i = inputs(&tp, n, g.edges(), 9);
                let v = |t: Tensor| &i[&t][..];
                let want =
                    equikern::plan::conv::reference(&tp, &csr, Direction::Backward, &i).unwrap();
                let b = op
                    .backward_f64(&g, v(Tensor::X), v(Tensor::Y), v(Tensor::W), v(Tensor::GZ))
                    .unwrap();
                let mut got = vec![(&b.gx, Tensor::GX), (&b.gy, Tensor::GY)];
                if tp.weight_numel > 0 {
                    got.push((&b.gw, Tensor::GW));
                }
                for (g64, t) in got {
                    let e = conv_common::rel_l2(g64, &want[&t]);
                    assert!(e < 1e-12, "{pname} {opts:?} f64 {t:?}: {e:e}");
                }
                // f32 device buffers, outputs poisoned with NaN.
                let cd = dev.cuda_device().unwrap().clone();
                let up = |t: Tensor| cd.upload(&f32v(&i[&t])).unwrap();
                let (x, y, w, gz) = (up(Tensor::X), up(Tensor::Y), up(Tensor::W), up(Tensor::GZ));
                let nan = |len: usize| cd.upload(&vec![f32::NAN; len]).unwrap();
                let mut gx = nan(n * op.dim_in1());
                let mut gy = nan(g.edges() * op.dim_in2());
                let mut gw = nan(op.weight_len(g.edges()).unwrap().max(1));
                op.backward_cuda(&g, &x, &y, &w, &gz, &mut gx, &mut gy, &mut gw)
                    .unwrap();
                let down =
                    |b: &equikern::CudaSlice<f32>, len: usize| f64v(&cd.download(b, len).unwrap());
                let e = conv_common::rel_l2(&down(&gx, n * op.dim_in1()), &want[&Tensor::GX]);
                assert!(e < 1e-5, "{pname} {opts:?} device gx: {e:e}");
                let e =
                    conv_common::rel_l2(&down(&gy, g.edges() * op.dim_in2()), &want[&Tensor::GY]);
                assert!(e < 1e-5, "{pname} {opts:?} device gy: {e:e}");
            }
        }
    }
    for (name, opts) in [("csr", ConvOptions::default()), ("pieces(5)", pieces(5))] {
        for fusion in [true, false] {
            let w = check_host_f32_with(&dev, opts, 1e-5, channel_products(), fusion);
            println!("cuda {name} fusion {fusion}: worst rel L2 {w:.2e}");
        }
    }
}

/// The channel-fused forward over the receiver view (NequIP/MACE-shaped products, and `x`
/// blocks of different multiplicities incl. SevenNet-like): CUDA plans take it; f64 to 1e-12 and f32 device buffers poisoned with NaN to 1e-5, CSR and
/// pieces, one and several output groups; reruns and every grouping bit-identical.
#[test]
fn cuda_fused_forward_matches_the_oracle() {
    let Some(dev) = device() else { return };
    use equikern::plan::{Dtype, Work};
    for (pname, tp) in channel_products() {
        for (_, n, r, s) in graphs() {
            let g = ConvGraph::new(&dev, n, &r, &s).unwrap();
            let csr = equikern::core::conv::Csr::build(n, &r, &s).unwrap();
            let i = inputs(&tp, n, g.edges(), 13);
            let v = |t: Tensor| &i[&t][..];
            let want = equikern::plan::conv::reference(&tp, &csr, Direction::Forward, &i)
                .unwrap()
                .remove(&Tensor::Z)
                .unwrap();
            for opts in [ConvOptions::default(), pieces(5)] {
                let mut first: Option<Vec<f32>> = None;
                for regs in [None, Some(8), Some(1)] {
                    let what = format!("{pname} {opts:?} {regs:?}");
                    let op = ConvOp::from_tensor_product(tp.clone(), &dev, opts)
                        .unwrap()
                        .with_conv_forward_regs(regs);
                    let plan = op.plan(Direction::Forward, Dtype::F32).unwrap();
                    let Work::Channels(c) = &plan.kernels[0].work else {
                        assert!(forward_may_not_fuse(pname, regs), "{what}: not fused");
                        continue;
                    };
                    // The mixed-multiplicity products: groups of their own widths.
                    let mixed = pname.contains("multi-mul") || pname.contains("sevennet");
                    assert_eq!(!c.uniform(), mixed, "{what}");
                    let z64 = op
                        .forward_f64(&g, v(Tensor::X), v(Tensor::Y), v(Tensor::W))
                        .unwrap();
                    let e = conv_common::rel_l2(&z64, &want);
                    assert!(e < 1e-12, "{what} f64: {e:e}");
                    let cd = dev.cuda_device().unwrap().clone();
                    let up = |t: Tensor| cd.upload(&f32v(&i[&t])).unwrap();
                    let (x, y, w) = (up(Tensor::X), up(Tensor::Y), up(Tensor::W));
                    let len = n * op.dim_out();
                    let mut z = cd.upload(&vec![f32::NAN; len]).unwrap();
                    op.forward_cuda(&g, &x, &y, &w, &mut z).unwrap();
                    let z = cd.download(&z, len).unwrap();
                    let e = conv_common::rel_l2(&f64v(&z), &want);
                    assert!(e < 1e-5, "{what} device z: {e:e}");
                    let mut again = cd.upload(&vec![f32::NAN; len]).unwrap();
                    op.forward_cuda(&g, &x, &y, &w, &mut again).unwrap();
                    let again = cd.download(&again, len).unwrap();
                    let bits = |a: &[f32], b: &[f32]| {
                        a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits())
                    };
                    assert!(bits(&z, &again), "{what}: rerun differs");
                    match &first {
                        Some(f) => assert!(bits(f, &z), "{what}: grouping changed z"),
                        None => first = Some(z),
                    }
                }
            }
        }
    }
}
