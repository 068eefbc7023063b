//! Plan statistics for the paper suite: `cargo run -p equikern-plan --example suite [json]`.

use equikern_plan::{lower, Capabilities, Direction, Dtype, Work};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1);
    let text = match path {
        Some(p) => std::fs::read_to_string(p)?,
        None => include_str!("../tests/data/paper_suite.json").to_string(),
    };
    let caps = Capabilities::webgpu_min();
    println!("problem dir kernels rows/sample terms/sample max_samples/dispatch chunk");
    for (label, spec) in equikern_core::spec::load_suite(&text)? {
        let tp = spec.build()?;
        for dir in [
            Direction::Forward,
            Direction::Backward,
            Direction::DoubleBackward,
        ] {
            let plan = lower(&tp, dir, Dtype::F32, &caps)?;
            let rows: Vec<String> = plan
                .kernels
                .iter()
                .filter_map(|k| match &k.work {
                    Work::Rows {
                        rows_per_sample, ..
                    } => Some(rows_per_sample.to_string()),
                    _ => None,
                })
                .collect();
            println!(
                "{label} {dir:?} {} {} {} {} {:?}",
                plan.kernels.len(),
                rows.join("+"),
                plan.terms_per_sample(),
                plan.max_samples_per_dispatch,
                plan.chunk_size()
            );
        }
    }
    Ok(())
}
