//! The facade's CUDA backend: a clean "CUDA not available" error on machines without CUDA;
//! where a GPU is present, host f32/f64 calls and `CudaSlice` calls agree with the f64 oracle.
//! Also the f64 host entry points on the CPU oracle, and their refusal on wgpu.

use equikern::{Backend, Device, Error, TensorProductOp, TpSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SPEC: &str = r#"{"irreps_in1": "4x0e+4x1o", "irreps_in2": "0e+1o",
  "irreps_out": "4x0e+4x1o", "instructions": [[0,0,0,"uvu",true],[1,1,0,"uvu",true],
  [0,1,1,"uvu",true],[1,0,1,"uvu",true]], "shared_weights": false}"#;

fn rnd(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

#[test]
fn cuda_device_or_clean_error() {
    let spec = TpSpec::from_json(SPEC).unwrap();
    let dev = match Device::new(Backend::Cuda) {
        Ok(d) => d,
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
            assert!(e.to_string().contains("CUDA not available"), "{e}");
            eprintln!("skipped: {e}");
            return;
        }
    };
    assert_eq!(dev.backend(), Backend::Cuda);
    let op = TensorProductOp::new(&spec, &dev).unwrap();
    let cpu = TensorProductOp::new(&spec, &Device::cpu()).unwrap();
    let b = 37;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = rnd(&mut rng, b * op.dim_in1());
    let y = rnd(&mut rng, b * op.dim_in2());
    let w = rnd(&mut rng, op.weight_len(b).unwrap());
    let gz = rnd(&mut rng, b * op.dim_out());
    let want = cpu.forward_f64(b, &x, &y, &w).unwrap();
    // f64 host call
    let z64 = op.forward_f64(b, &x, &y, &w).unwrap();
    assert!(rel(&z64, &want) < 1e-12);
    // f32 host call
    let f = |v: &[f64]| v.iter().map(|a| *a as f32).collect::<Vec<f32>>();
    let z32 = op.forward(b, &f(&x), &f(&y), &f(&w)).unwrap();
    let z32: Vec<f64> = z32.iter().map(|a| *a as f64).collect();
    assert!(rel(&z32, &want) < 1e-5);
    let g = op.backward_f64(b, &x, &y, &w, &gz).unwrap();
    let gw = cpu.backward_f64(b, &x, &y, &w, &gz).unwrap();
    assert!(rel(&g.gx, &gw.gx) < 1e-12 && rel(&g.gy, &gw.gy) < 1e-12 && rel(&g.gw, &gw.gw) < 1e-12);
    // device buffers
    let cd = dev.cuda_device().unwrap();
    let (dx, dy, dw) = (
        cd.upload(&x).unwrap(),
        cd.upload(&y).unwrap(),
        cd.upload(&w).unwrap(),
    );
    let mut dz = cd.zeros::<f64>(b * op.dim_out()).unwrap();
    op.forward_cuda(b, &dx, &dy, &dw, &mut dz).unwrap();
    let z = cd.download(&dz, b * op.dim_out()).unwrap();
    assert!(rel(&z, &want) < 1e-12);
}

#[test]
fn f64_host_calls_on_the_oracle_and_not_on_wgpu() {
    let spec = TpSpec::from_json(SPEC).unwrap();
    let cpu = TensorProductOp::new(&spec, &Device::cpu()).unwrap();
    let b = 3;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let x = rnd(&mut rng, b * cpu.dim_in1());
    let y = rnd(&mut rng, b * cpu.dim_in2());
    let w = rnd(&mut rng, cpu.weight_len(b).unwrap());
    let z = cpu.forward_f64(b, &x, &y, &w).unwrap();
    assert_eq!(z.len(), b * cpu.dim_out());
    let e = cpu.forward_f64(b, &x[1..], &y, &w).unwrap_err();
    assert!(matches!(e, Error::Length { arg: "x", .. }), "{e}");
    if let Ok(dev) = Device::new(Backend::Wgpu) {
        let op = TensorProductOp::new(&spec, &dev).unwrap();
        let e = op.forward_f64(b, &x, &y, &w).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("f64"), "{e}");
    }
}
