//! Every module the WGSL writer prints for hand-built plans parses and validates with naga.

mod common;
use common::toy::{h100_caps, Toy, ToyPath};
use equikern_emit::{emit_wgsl, EmitError};
use equikern_plan::{Capabilities, Dtype};

pub fn validate(src: &str, name: &str) {
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{name}: parse: {}\n{src}", e.emit_to_string(src)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{name}: validate: {e:?}\n{src}"));
}

fn toy() -> Toy {
    Toy::new(
        vec![
            ToyPath {
                mul1: 4,
                l1: 1,
                mul2: 2,
                l2: 1,
                lo: 1,
            },
            ToyPath {
                mul1: 3,
                l1: 6,
                mul2: 1,
                l2: 6,
                lo: 6,
            },
            ToyPath {
                mul1: 5,
                l1: 0,
                mul2: 3,
                l2: 2,
                lo: 2,
            },
        ],
        false,
    )
}

#[test]
fn toy_plans_validate() {
    for caps in [Capabilities::webgpu_min(), h100_caps()] {
        for shared in [false, true] {
            let mut t = toy();
            t.dims.shared_weights = shared;
            let t = Toy::new(t.paths.clone(), shared);
            for plan in [t.forward(caps), t.weight_grad(caps, 16)] {
                let ks = emit_wgsl(&plan).unwrap();
                for k in &ks {
                    validate(&k.source, &k.name);
                }
            }
        }
    }
}

#[test]
fn f64_rejected() {
    let mut plan = toy().forward(h100_caps());
    plan.dtype = Dtype::F64;
    let e = emit_wgsl(&plan).unwrap_err();
    assert!(matches!(e, EmitError::UnsupportedDtype { .. }));
    assert!(
        e.to_string().contains("WGSL backend supports f32 only"),
        "{e}"
    );
}

#[test]
fn literals_round_trip() {
    for v in [1.0f32, -0.5, 0.70710677, 1e-7, 3.4e38, 1.1754944e-38, 0.1] {
        let s = equikern_emit::wgsl::f32_literal(v);
        assert!(s.ends_with('f') && s.contains(['.', 'e']), "{s}");
        assert_eq!(s.trim_end_matches('f').parse::<f32>().unwrap(), v);
    }
}

#[test]
fn bad_plans_are_errors_not_panics() {
    let mut plan = toy().forward(h100_caps());
    if let equikern_plan::Work::Rows { segments, .. } = &mut plan.kernels[0].work {
        segments[0].contributions[0].terms[0].comps[0] = 99;
    }
    assert!(matches!(
        emit_wgsl(&plan),
        Err(EmitError::InvalidPlan { .. })
    ));
    let mut plan = toy().forward(Capabilities::webgpu_min());
    plan.kernels[0].workgroup_size = 1024;
    assert!(emit_wgsl(&plan).is_err());
}

#[test]
fn print_one() {
    let plan = toy().weight_grad(h100_caps(), 8);
    let t = Toy::new(toy().paths, true);
    let plan2 = t.weight_grad(h100_caps(), 8);
    let k = emit_wgsl(&plan).unwrap();
    let k2 = emit_wgsl(&plan2).unwrap();
    let f = emit_wgsl(&toy().forward(h100_caps())).unwrap();
    if std::env::var("EQUIKERN_PRINT").is_ok() {
        println!(
            "{}\n{}\n{}\n{}",
            f[0].source, k[0].source, k2[0].source, k2[1].source
        );
    }
}
