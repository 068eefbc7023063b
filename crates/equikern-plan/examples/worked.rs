//! Prints the plans of WORKED_EXAMPLE.md: `cargo run -p equikern-plan --example worked`.

use equikern_core::TpSpec;
use equikern_plan::{lower, Capabilities, Direction, Dtype};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = TpSpec::from_json(
        r#"{"irreps_in1": "2x0e+2x1o", "irreps_in2": "1x0e+3x1o", "irreps_out": "2x1o+2x0e+1x2e",
            "instructions": [[0, 1, 0, "uvu", true, 1.0], [1, 1, 1, "uvw", true, 1.0]],
            "shared_weights": false}"#,
    )?;
    let tp = spec.build()?;
    for dir in [Direction::Forward, Direction::Backward] {
        println!(
            "{}",
            lower(&tp, dir, Dtype::F32, &Capabilities::webgpu_min())?
        );
    }
    Ok(())
}
