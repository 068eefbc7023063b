//! The facade API on wgpu: device-buffer calls (chaining on the device, poisoned outputs),
//! CPU backend, and errors that name the bad argument.

mod wgpu_support;
use equikern::{Backend, Device, Error, TensorProductOp};
use rand::SeedableRng;
use wgpu_support::{corpus, device, rand_vec, rel_l2};

fn spec(shared: bool) -> equikern::TpSpec {
    corpus::spec_for_mode("uvu", "4x0e+4x1o", "1x0e+1x1o", &["0e", "1o", "1e"], shared)
}

#[test]
fn device_buffers_chain_and_match_host() {
    let Some(dev) = device(Default::default()) else {
        return;
    };
    let rt = dev.wgpu_runtime().unwrap().clone();
    for shared in [false, true] {
        let op = TensorProductOp::new(&spec(shared), &dev).unwrap();
        let batch = 9;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let x = rand_vec(&mut rng, batch * op.dim_in1());
        let y = rand_vec(&mut rng, batch * op.dim_in2());
        let w = rand_vec(&mut rng, op.weight_len(batch).unwrap());
        let (xb, yb, wb) = (rt.upload("x", &x), rt.upload("y", &y), rt.upload("w", &w));
        let poison = |n: usize| {
            let b = rt.create_storage("out", n as u64);
            rt.queue()
                .write_buffer(&b, 0, bytemuck_f32(&vec![f32::NAN; n]));
            b
        };
        let zb = poison(batch * op.dim_out());
        op.forward_buffers(batch, &xb, &yb, &wb, &zb).unwrap();
        // Chain: z (still on the device) is the next call's grad_z.
        let (gxb, gyb) = (poison(x.len()), poison(y.len()));
        let gwb = poison(w.len());
        op.backward_buffers(batch, &xb, &yb, &wb, &zb, &gxb, &gyb, &gwb)
            .unwrap();
        let z = rt.read_f32_blocking(&zb, 0, zb.size() / 4).unwrap();
        let gx = rt.read_f32_blocking(&gxb, 0, gxb.size() / 4).unwrap();
        let gw = rt.read_f32_blocking(&gwb, 0, gwb.size() / 4).unwrap();

        let cpu = TensorProductOp::new(&spec(shared), &Device::cpu()).unwrap();
        let zc = cpu.forward(batch, &x, &y, &w).unwrap();
        let gc = cpu.backward(batch, &x, &y, &w, &zc).unwrap();
        let f = |v: &[f32]| v.iter().map(|a| *a as f64).collect::<Vec<_>>();
        assert!(rel_l2(&z, &f(&zc)) < 1e-5);
        assert!(rel_l2(&gx, &f(&gc.gx)) < 1e-5);
        assert!(rel_l2(&gw, &f(&gc.gw)) < 1e-5);
        println!("device buffers shared={shared}: ok");
    }
}

fn bytemuck_f32(v: &[f32]) -> &[u8] {
    // Plain reinterpretation of f32s as bytes for queue writes.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

#[test]
fn errors_name_the_argument() {
    let cpu = Device::new(Backend::Cpu).unwrap();
    let mut devs = vec![cpu];
    if let Some(d) = device(Default::default()) {
        devs.push(d);
    }
    for dev in &devs {
        let op = TensorProductOp::new(&spec(false), dev).unwrap();
        let b = 2;
        let x = vec![0.5; b * op.dim_in1()];
        let y = vec![0.5; b * op.dim_in2()];
        let w = vec![0.5; op.weight_len(b).unwrap()];
        let e = op.forward(b, &x[1..], &y, &w).unwrap_err();
        assert!(matches!(e, Error::Length { arg: "x", .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("argument x") && msg.contains(&format!("{}", x.len())),
            "{msg}"
        );
        let e = op.forward(b, &x, &y, &w[1..]).unwrap_err();
        assert!(e.to_string().contains("argument w"), "{e}");
        let e = op.backward(b, &x, &y, &w, &[1.0]).unwrap_err();
        assert!(e.to_string().contains("argument grad_z"), "{e}");
        let e = op
            .double_backward(b, &x, &y, &w, &vec![0.5; b * op.dim_out()], &x, &[], &w)
            .unwrap_err();
        assert!(e.to_string().contains("argument hy"), "{e}");
        println!("{}: {e}", dev.name());
    }
    if let Some(dev) = devs.get(1) {
        let rt = dev.wgpu_runtime().unwrap();
        let op = TensorProductOp::new(&spec(false), dev).unwrap();
        let small = rt.create_storage("small", 3);
        let e = op
            .forward_buffers(4, &small, &small, &small, &rt.create_storage("z", 1))
            .unwrap_err();
        println!("{e}");
        assert!(
            e.to_string().contains("tensor X") && e.to_string().contains("too small"),
            "{e}"
        );
        let cpu_op = TensorProductOp::new(&spec(false), &devs[0]).unwrap();
        let e = cpu_op
            .forward_buffers(1, &small, &small, &small, &small)
            .unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
    }
    let e = TensorProductOp::from_json("{\"irreps_in1\": \"2x9q\"}", &devs[0]).unwrap_err();
    println!("{e}");
}

#[test]
fn empty_batch() {
    let Some(dev) = device(Default::default()) else {
        return;
    };
    let op = TensorProductOp::new(&spec(true), &dev).unwrap();
    let w = vec![0.5; op.weight_numel()];
    let z = op.forward(0, &[], &[], &w).unwrap();
    assert!(z.is_empty());
    let g = op.backward(0, &[], &[], &w, &[]).unwrap();
    assert_eq!(g.gw, vec![0.0; op.weight_numel()]);
}
