//! Every WGSL module printed for the whole corpus (paper suite, every connection mode, l up
//! to 6, forward/backward/double backward, shared and per-sample weights) parses and validates
//! with naga, under WebGPU's minimum limits and H100-like limits.

mod common;
#[path = "../../../tests/wgpu_support/corpus.rs"]
mod corpus;

use common::toy::h100_caps;
use equikern_emit::emit_wgsl;
use equikern_plan::{lower, Capabilities, Direction, Dtype};

fn validate(src: &str, name: &str) {
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{name}: parse: {}", e.emit_to_string(src)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{name}: validate: {e:?}"));
}

fn check_all(specs: Vec<(String, equikern_core::TpSpec)>) -> (usize, usize) {
    let (mut modules, mut bytes) = (0, 0);
    for (label, spec) in specs {
        for shared in [false, true] {
            let tp = corpus::build(&corpus::set_shared(spec.clone(), shared));
            for (cname, caps) in [
                ("webgpu_min", Capabilities::webgpu_min()),
                ("h100", h100_caps()),
            ] {
                for dir in [
                    Direction::Forward,
                    Direction::Backward,
                    Direction::DoubleBackward,
                ] {
                    let plan = match lower(&tp, dir, Dtype::F32, &caps) {
                        Ok(p) => p,
                        // Too many bindings for the target is a lowering verdict, not ours.
                        Err(e) => {
                            println!("{label} {dir:?} {cname}: not lowered: {e}");
                            continue;
                        }
                    };
                    let ks = emit_wgsl(&plan).unwrap_or_else(|e| panic!("{label} {dir:?}: {e}"));
                    for k in ks {
                        validate(
                            &k.source,
                            &format!("{label} shared={shared} {cname} {dir:?} {}", k.name),
                        );
                        modules += 1;
                        bytes += k.source.len();
                    }
                }
            }
        }
    }
    (modules, bytes)
}

#[test]
fn paper_suite_validates() {
    let (n, b) = check_all(corpus::paper_suite());
    println!("{n} modules, {b} bytes of WGSL");
}

#[test]
fn modes_and_high_l_validate() {
    let mut specs = corpus::mode_specs(false);
    specs.extend(corpus::high_l_specs(false));
    let (n, b) = check_all(specs);
    println!("{n} modules, {b} bytes of WGSL");
}

/// Products whose `x` blocks have different multiplicities (the channel backward with
/// guarded rows: naga's uniformity analysis must accept its barriers), including an output
/// block no instruction writes with more rows than the kernel has channels; their CUDA
/// text prints too.
#[test]
fn mixed_multiplicities_validate() {
    use equikern_core::spec::builders::channelwise;
    use equikern_core::{Irreps, MulIr};
    let ir = |s: &str| Irreps::parse(s).unwrap();
    let mut specs = vec![
        (
            "sevennet-like".to_string(),
            channelwise(
                &ir("128x0e+64x1e+32x2e"),
                &ir("1x0e+1x1e+1x2e"),
                &ir("0e+1e+2e"),
                false,
            ),
        ),
        (
            "multi-mul".to_string(),
            channelwise(
                &ir("16x0e+8x1o+12x2e"),
                &ir("2x0e+1x1o+1x2e"),
                &ir("0e+1o+1e+2e+2o"),
                false,
            ),
        ),
    ];
    let mut unused = specs[1].1.clone();
    unused
        .irreps_out
        .0
        .push(MulIr::new(40, equikern_core::Irrep::parse("0e").unwrap()));
    specs.push(("multi-mul + unused 40x0e".to_string(), unused));
    for (label, spec) in &specs {
        let tp = corpus::build(spec);
        let plan = lower(&tp, Direction::Backward, Dtype::F32, &h100_caps()).unwrap();
        assert!(
            plan.kernels.iter().any(|k| matches!(
                &k.work,
                equikern_plan::Work::Channels(c) if !c.uniform()
            )),
            "{label}: backward not fused\n{plan}"
        );
        let cuda = equikern_emit::cuda::emit_with(
            &plan,
            equikern_emit::cuda::Target::Cuda,
            Default::default(),
        )
        .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert!(cuda.source.contains("if (ch < "), "{label}: no guard");
    }
    let (n, b) = check_all(specs);
    println!("{n} modules, {b} bytes of WGSL");
}

/// The convolution forward over `x` blocks of different multiplicities (SevenNet-like and a
/// smaller one): the lowered plan (groups of their own widths: a lane decode by group) and,
/// hand-made, every block in one group (guarded rows), CSR and pieces, WebGPU's minimum and
/// H100-like limits: every WGSL module validates with naga; the CUDA text prints the same
/// structure.
#[test]
fn conv_forward_mixed_multiplicities_validate() {
    use equikern_core::spec::builders::channelwise;
    use equikern_core::Irreps;
    use equikern_plan::{lower_conv, ConvOptions, Work};
    let ir = |s: &str| Irreps::parse(s).unwrap();
    let specs = [
        (
            "sevennet-like",
            channelwise(
                &ir("128x0e+64x1e+32x2e"),
                &ir("1x0e+1x1e+1x2e"),
                &ir("0e+1e+2e"),
                false,
            ),
        ),
        (
            "multi-mul",
            channelwise(
                &ir("16x0e+8x1o+12x2e"),
                &ir("2x0e+1x1o+1x2e"),
                &ir("0e+1o+1e+2e+2o"),
                false,
            ),
        ),
    ];
    let mut n = 0;
    for (label, spec) in &specs {
        let tp = corpus::build(spec);
        for (cname, caps) in [
            ("webgpu_min", Capabilities::webgpu_min()),
            ("h100", h100_caps()),
        ] {
            for opts in [
                ConvOptions::default(),
                ConvOptions {
                    atomic: false,
                    max_piece_edges: Some(16),
                },
            ] {
                let plan = lower_conv(&tp, Direction::Forward, Dtype::F32, &caps, opts).unwrap();
                let Work::Channels(c) = &plan.kernels[0].work else {
                    panic!("{label} {cname}: forward not fused\n{plan}");
                };
                assert!(!c.uniform(), "{label}");
                let mut span = plan.clone();
                let k = &mut span.kernels[0];
                if let Work::Channels(c) = &mut k.work {
                    c.conv.as_mut().unwrap().groups.clear();
                    c.samples_per_group = 1;
                    k.workgroup_size = c.lanes();
                }
                for (what, p, needle) in [
                    ("groups", &plan, "lanes per unit"),
                    ("one group", &span, "if (ch < "),
                ] {
                    let ks = emit_wgsl(p).unwrap_or_else(|e| panic!("{label} {what}: {e}"));
                    assert!(ks[0].source.contains(needle), "{label} {what}");
                    for k in ks {
                        validate(
                            &k.source,
                            &format!("{label} {cname} {opts:?} {what} {}", k.name),
                        );
                        n += 1;
                    }
                    let cuda = equikern_emit::cuda::emit_with(
                        p,
                        equikern_emit::cuda::Target::Cuda,
                        Default::default(),
                    )
                    .unwrap_or_else(|e| panic!("{label} {what}: {e}"));
                    assert!(cuda.source.contains(needle), "{label} {what}: CUDA");
                }
            }
        }
    }
    println!("{n} conv forward modules validated");
}

/// The mixed-multiplicity conv backward with lane groups (SevenNet-like: 256 lanes on
/// WebGPU's minimum limits, 384 on H100-like ones; multi-mul: a partial last 32-lane chunk)
/// and without them (`conv_backward_lanes: false`, guarded rows), CSR and pieces, f32: every
/// WGSL module validates with naga; the CUDA text prints the same structure.
#[test]
fn conv_backward_lane_groups_validate() {
    use equikern_core::spec::builders::channelwise;
    use equikern_core::Irreps;
    use equikern_plan::{lower_conv_with, ConvOptions, LowerOptions, Work};
    let ir = |s: &str| Irreps::parse(s).unwrap();
    let specs = [
        (
            "sevennet-like",
            channelwise(
                &ir("128x0e+64x1e+32x2e"),
                &ir("1x0e+1x1e+1x2e"),
                &ir("0e+1e+2e"),
                false,
            ),
        ),
        (
            "multi-mul",
            channelwise(
                &ir("16x0e+8x1o+12x2e"),
                &ir("2x0e+1x1o+1x2e"),
                &ir("0e+1o+1e+2e+2o"),
                false,
            ),
        ),
    ];
    let mut n = 0;
    for (label, spec) in &specs {
        let tp = corpus::build(spec);
        for (cname, caps) in [
            ("webgpu_min", Capabilities::webgpu_min()),
            ("h100", h100_caps()),
        ] {
            for opts in [
                ConvOptions::default(),
                ConvOptions {
                    atomic: false,
                    max_piece_edges: Some(16),
                },
            ] {
                for lanes in [true, false] {
                    let lopts = LowerOptions {
                        conv_backward_lanes: lanes,
                        ..Default::default()
                    };
                    let plan =
                        lower_conv_with(&tp, Direction::Backward, Dtype::F32, &caps, opts, lopts)
                            .unwrap();
                    let Work::Channels(c) = &plan.kernels[0].work else {
                        panic!("{label} {cname}: backward not fused\n{plan}");
                    };
                    assert_eq!(!c.lane_groups().is_empty(), lanes, "{label} {cname}");
                    let needle = if lanes { "grp = " } else { "if (ch < " };
                    let what = format!("{label} {cname} {opts:?} lanes {lanes}");
                    let ks = emit_wgsl(&plan).unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert!(ks[0].source.contains(needle), "{what}");
                    for k in ks {
                        validate(&k.source, &format!("{what} {}", k.name));
                        n += 1;
                    }
                    let cuda = equikern_emit::cuda::emit_with(
                        &plan,
                        equikern_emit::cuda::Target::Cuda,
                        Default::default(),
                    )
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert!(cuda.source.contains(needle), "{what}: CUDA");
                }
            }
        }
    }
    println!("{n} conv backward modules validated");
}
