//! Offline HIP check: the HIP text of every paper-suite problem compiles with clang-15 for
//! gfx90a (MI200, 64-wide wavefronts) to an AMDGPU ELF. Skips where the compiler or the ROCm
//! device libraries are missing, unless `REQUIRE_HIP_CHECK=1`.

mod common;

use equikern_emit::cuda::{emit_hip, emit_with, CudaOptions, Target};
use equikern_plan::{Capabilities, Direction, Dtype};
use std::path::Path;
use std::process::Command;

const BITCODE: &str = "/usr/lib/x86_64-linux-gnu/amdgcn/bitcode";

/// An MI250X-like CDNA2 target as the lowering sees it.
fn gfx90a_caps() -> Capabilities {
    Capabilities {
        subgroup_size: 64,
        subgroups: true,
        max_invocations_per_workgroup: 1024,
        max_workgroup_size_x: 1024,
        workgroup_memory_bytes: 65536,
        max_storage_binding_bytes: 64 << 30,
        max_workgroups_per_dim: 65535,
        max_storage_buffers_per_stage: 256,
        f64: true,
        float_atomics: true,
        warp_shuffles: true,
    }
}

fn skip_or_fail(why: &str) {
    if std::env::var("REQUIRE_HIP_CHECK").as_deref() == Ok("1") {
        panic!("HIP check required but {why}");
    }
    println!("SKIP: HIP compiler not installed ({why})");
}

fn compile(src: &str, dir: &Path, name: &str) -> Result<(), String> {
    let hip = dir.join(format!("{name}.hip"));
    let out = dir.join(format!("{name}.hsaco"));
    std::fs::write(&hip, src).map_err(|e| e.to_string())?;
    let o = Command::new("clang++-15")
        .args([
            "-x",
            "hip",
            "--cuda-device-only",
            "--no-gpu-bundle-output",
            "--offload-arch=gfx90a",
        ])
        .args([
            "-O3",
            "-std=c++14",
            "-Wall",
            "-Werror",
            "-munsafe-fp-atomics",
            "--rocm-path=/usr",
        ])
        .arg(format!("--rocm-device-lib-path={BITCODE}"))
        .args(["-include", "hip/hip_runtime.h", "-c"])
        .arg(&hip)
        .arg("-o")
        .arg(&out)
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr)
            .chars()
            .take(4000)
            .collect());
    }
    let elf = std::fs::read(&out).map_err(|e| e.to_string())?;
    if elf.len() < 20 || &elf[..4] != b"\x7fELF" || u16::from_le_bytes([elf[18], elf[19]]) != 0xE0 {
        return Err("output is not an AMDGPU ELF".into());
    }
    Ok(())
}

#[test]
fn paper_suite_hip_compiles_for_gfx90a() {
    let have = Command::new("clang++-15")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        return skip_or_fail("clang++-15 not found");
    }
    if !Path::new(BITCODE).exists() || !Path::new("/usr/include/hip/hip_runtime.h").exists() {
        return skip_or_fail("ROCm device libraries or HIP headers not found");
    }
    let dir = std::env::temp_dir().join(format!("equikern-hip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut jobs = Vec::new();
    for (label, tp) in common::paper_suite() {
        for (d, dt) in [
            (Direction::Forward, Dtype::F32),
            (Direction::Backward, Dtype::F32),
            (Direction::DoubleBackward, Dtype::F64),
        ] {
            let plan = equikern_plan::lower(&tp, d, dt, &gfx90a_caps()).unwrap();
            let src = emit_hip(&plan).unwrap().source;
            assert!(!src.contains("#include") && !src.contains("_sync("));
            jobs.push((
                format!("{label}-{d:?}-{dt:?}").replace(['=', '.'], "_"),
                src,
            ));
            if d == Direction::Backward {
                let tree = CudaOptions {
                    segment_tree: true,
                    ..Default::default()
                };
                let src = emit_with(&plan, Target::Hip, tree).unwrap().source;
                jobs.push((format!("{label}-tree").replace(['=', '.'], "_"), src));
            }
            // Staged stores apply to row kernels (a channel-fused forward stages by itself).
            let rows = plan
                .kernels
                .iter()
                .any(|k| matches!(k.work, equikern_plan::Work::Rows { .. }));
            if d == Direction::Forward && rows {
                let staged = CudaOptions {
                    staged_stores: true,
                    segment_tree: false,
                };
                let src = emit_with(&plan, Target::Hip, staged).unwrap().source;
                assert!(src.contains("ek_stage"));
                jobs.push((format!("{label}-staged").replace(['=', '.'], "_"), src));
            }
        }
    }
    // The channel-fused backward over x blocks of different multiplicities (guarded rows).
    for (dt, shared) in [(Dtype::F32, false), (Dtype::F64, true)] {
        let tp = common::uvu_mixed_spec(16, 8, 12, true, shared);
        let plan = equikern_plan::lower(&tp, Direction::Backward, dt, &gfx90a_caps()).unwrap();
        assert!(plan
            .kernels
            .iter()
            .any(|k| matches!(&k.work, equikern_plan::Work::Channels(c) if !c.uniform())));
        let src = emit_hip(&plan).unwrap().source;
        jobs.push((format!("mixed-muls-{dt:?}-shared{shared}"), src));
    }
    // Two compilers at a time (the CI machine has two cores).
    let failures: Vec<String> = std::thread::scope(|s| {
        let (a, b) = jobs.split_at(jobs.len() / 2);
        let dir = &dir;
        let run = move |part: &[(String, String)]| {
            part.iter()
                .filter_map(|(n, src)| compile(src, dir, n).err().map(|e| format!("{n}: {e}")))
                .collect::<Vec<_>>()
        };
        let h = s.spawn(move || run(a));
        let mut f = run(b);
        f.extend(h.join().unwrap());
        f
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!("{} HIP sources compiled for gfx90a", jobs.len());
}

/// The convolution forward and backward of the suite's message-passing products (NequIP,
/// MACE: the channel-fused kernels over the receiver / sender view where they qualify), CSR
/// and pieces, compiles as HIP for gfx90a.
#[test]
fn conv_backward_hip_compiles_for_gfx90a() {
    use equikern_plan::{lower_conv, ConvOptions, Work};
    let have = Command::new("clang++-15")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        return skip_or_fail("clang++-15 not found");
    }
    if !Path::new(BITCODE).exists() || !Path::new("/usr/include/hip/hip_runtime.h").exists() {
        return skip_or_fail("ROCm device libraries or HIP headers not found");
    }
    let dir = std::env::temp_dir().join(format!("equikern-hip-conv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut fused = 0;
    let mut jobs = vec![];
    for (label, tp) in common::paper_suite() {
        if !(label.starts_with("nequip") || label.starts_with("mace")) {
            continue;
        }
        for (mode, opts) in [
            ("csr", ConvOptions::default()),
            (
                "pieces",
                ConvOptions {
                    atomic: false,
                    max_piece_edges: Some(64),
                },
            ),
        ] {
            for dt in [Dtype::F32, Dtype::F64] {
                for dir in [Direction::Forward, Direction::Backward] {
                    let plan = lower_conv(&tp, dir, dt, &gfx90a_caps(), opts).unwrap();
                    if matches!(plan.kernels[0].work, Work::Channels(_)) {
                        fused += 1;
                    }
                    let src = emit_hip(&plan).unwrap().source;
                    jobs.push((
                        format!("conv-{label}-{mode}-{dt:?}-{dir:?}").replace(['=', '.'], "_"),
                        src,
                    ));
                }
            }
        }
    }
    // SevenNet-like: x blocks 128x0e+64x1o+32x2e, the fused backward with guarded rows and
    // the fused forward with groups of 128, 64 and 32 lanes per node (and, hand-made, every
    // block in one group: guarded rows).
    let tp = common::uvu_mixed_spec(128, 64, 32, true, false);
    for (mode, opts) in [
        ("csr", ConvOptions::default()),
        (
            "pieces",
            ConvOptions {
                atomic: false,
                max_piece_edges: Some(64),
            },
        ),
    ] {
        for dt in [Dtype::F32, Dtype::F64] {
            // Balanced lane groups (the default) and one lane per channel (guarded rows).
            for lanes in [true, false] {
                let lopts = equikern_plan::LowerOptions {
                    conv_backward_lanes: lanes,
                    ..Default::default()
                };
                let plan = equikern_plan::lower_conv_with(
                    &tp,
                    Direction::Backward,
                    dt,
                    &gfx90a_caps(),
                    opts,
                    lopts,
                )
                .unwrap();
                assert!(
                    matches!(&plan.kernels[0].work, Work::Channels(c)
                        if !c.uniform() && c.lane_groups().is_empty() != lanes),
                    "mixed multiplicities {mode} {dt:?} lanes {lanes}: not fused"
                );
                let src = emit_hip(&plan).unwrap().source;
                jobs.push((format!("conv-mixed-muls-{mode}-{dt:?}-lanes-{lanes}"), src));
            }
            let mut plan = lower_conv(&tp, Direction::Forward, dt, &gfx90a_caps(), opts).unwrap();
            assert!(
                matches!(&plan.kernels[0].work, Work::Channels(c) if !c.uniform() && c.lanes() == 224),
                "mixed multiplicities forward {mode} {dt:?}: not fused"
            );
            let src = emit_hip(&plan).unwrap().source;
            assert!(src.contains("lanes per unit"));
            jobs.push((format!("conv-mixed-muls-fwd-{mode}-{dt:?}"), src));
            let k = &mut plan.kernels[0];
            if let Work::Channels(c) = &mut k.work {
                c.conv.as_mut().unwrap().groups.clear();
                c.samples_per_group = 1;
                k.workgroup_size = c.lanes();
            }
            let src = emit_hip(&plan).unwrap().source;
            assert!(src.contains("if (ch < 64u)"));
            jobs.push((format!("conv-mixed-muls-fwd-span-{mode}-{dt:?}"), src));
        }
    }
    assert!(fused > 0, "no suite problem took the fused conv backward");
    let failures: Vec<String> = std::thread::scope(|s| {
        let (a, b) = jobs.split_at(jobs.len() / 2);
        let dir = &dir;
        let run = move |part: &[(String, String)]| {
            part.iter()
                .filter_map(|(n, src)| compile(src, dir, n).err().map(|e| format!("{n}: {e}")))
                .collect::<Vec<_>>()
        };
        let h = s.spawn(move || run(a));
        let mut f = run(b);
        f.extend(h.join().unwrap());
        f
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!(
        "{} conv HIP sources ({fused} fused) compiled for gfx90a",
        jobs.len()
    );
}
