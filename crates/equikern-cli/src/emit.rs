//! `equikern emit`: print the kernel plan or the source a backend would compile for a spec.

use crate::error::{CliError, Result};
use clap::{Args, ValueEnum};
use equikern::plan::{lower, Capabilities, Direction, Dtype};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EmitTarget {
    Wgsl,
    Cuda,
    Hip,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EmitDirection {
    Forward,
    Backward,
    DoubleBackward,
}

/// Print the emitted source (or, with --plan, the kernel plan) for a spec.
///
/// Capabilities: wgsl uses WebGPU's guaranteed minimums (what runs anywhere, browsers
/// included); cuda an sm_90 (H100) device; hip a gfx90a device (64-wide wavefronts). The
/// runtimes lower with the capabilities of the real device, so their plans may differ.
#[derive(Args, Debug)]
pub struct EmitArgs {
    /// Tensor-product spec (JSON).
    #[arg(long, value_name = "SPEC.json")]
    spec: PathBuf,
    #[arg(long, value_enum, default_value = "wgsl")]
    target: EmitTarget,
    #[arg(long, value_enum, default_value = "forward")]
    direction: EmitDirection,
    /// f64 is available for cuda and hip only.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f64"])]
    dtype: String,
    /// Print the kernel plan instead of source.
    #[arg(long)]
    plan: bool,
}

pub fn run(args: &EmitArgs) -> Result<()> {
    let tp = crate::tp::load_tp(&args.spec)?;
    let direction = match args.direction {
        EmitDirection::Forward => Direction::Forward,
        EmitDirection::Backward => Direction::Backward,
        EmitDirection::DoubleBackward => Direction::DoubleBackward,
    };
    let dtype = if args.dtype == "f64" {
        Dtype::F64
    } else {
        Dtype::F32
    };
    if matches!(args.target, EmitTarget::Wgsl) && dtype == Dtype::F64 {
        return Err(CliError::input(
            "--dtype f64: the WGSL target supports f32 only",
        ));
    }
    let caps = match args.target {
        EmitTarget::Wgsl => Capabilities::webgpu_min(),
        EmitTarget::Cuda => Capabilities::cuda_sm90(),
        EmitTarget::Hip => Capabilities::hip_gfx90a(),
    };
    let plan = lower(&tp, direction, dtype, &caps)
        .map_err(|e| CliError::input(format!("--spec {}: {e}", args.spec.display())))?;
    if args.plan {
        print!("{plan}");
        return Ok(());
    }
    let emit_err = |e: equikern::emit::EmitError| CliError::runtime(format!("emit: {e}"));
    match args.target {
        EmitTarget::Wgsl => {
            for k in equikern::emit::wgsl::emit_wgsl(&plan).map_err(emit_err)? {
                println!("// ---- kernel {} (entry point {})", k.name, k.entry_point);
                println!("{}", k.source);
            }
        }
        EmitTarget::Cuda => print!(
            "{}",
            equikern::emit::cuda::emit_cuda(&plan)
                .map_err(emit_err)?
                .source
        ),
        EmitTarget::Hip => print!(
            "{}",
            equikern::emit::cuda::emit_hip(&plan)
                .map_err(emit_err)?
                .source
        ),
    }
    Ok(())
}
