//! Test corpus shared by the WGSL-writer and wgpu tests: the paper suite, every connection
//! mode, l up to 6, both weight sharings and all normalisations (built with `TpSpec::build`).
#![allow(dead_code)]

use equikern_core::{
    ConnectionMode, Instruction, Irrep, IrrepNormalization, Irreps, PathNormalization,
    TensorProduct, TpSpec,
};

/// The paper-suite problems as given (labels from the JSON).
pub fn paper_suite() -> Vec<(String, TpSpec)> {
    equikern_core::spec::load_suite(include_str!("../data/paper_suite.json"))
        .expect("paper suite parses")
}

pub const MODES: [&str; 8] = ["uvw", "uvu", "uvv", "uuw", "uuu", "uvuv", "uvu<v", "u<vw"];

/// Output multiplicity a mode needs for inputs of multiplicity `m` (both inputs).
fn out_mul(mode: ConnectionMode, m: usize) -> usize {
    use ConnectionMode::*;
    match mode {
        Uvw | Uuw | ULtVw => 2,
        Uvu | Uvv | Uuu => m,
        Uvuv => m * m,
        UvuLtV => m * (m - 1) / 2,
    }
}

/// Every allowed `(i1, i2, out)` instruction between the blocks, alternating weighted and
/// unweighted where the mode allows it.
pub fn spec_for_mode(mode: &str, in1: &str, in2: &str, out_irs: &[&str], shared: bool) -> TpSpec {
    let mode = ConnectionMode::parse(mode).expect("mode");
    let i1 = Irreps::parse(in1).expect("in1");
    let i2 = Irreps::parse(in2).expect("in2");
    let m = i1.0[0].mul;
    let mo = out_mul(mode, m);
    let out_s: Vec<String> = out_irs.iter().map(|s| format!("{mo}x{s}")).collect();
    let out = Irreps::parse(&out_s.join("+")).expect("out");
    let mut instructions = Vec::new();
    for (a, x) in i1.0.iter().enumerate() {
        for (b, y) in i2.0.iter().enumerate() {
            for (c, z) in out.0.iter().enumerate() {
                if x.ir.couples_to(y.ir, z.ir) {
                    let n = instructions.len();
                    let weighted =
                        mode.requires_weight() || mode == ConnectionMode::Uuw || n % 2 == 0;
                    instructions.push(
                        Instruction::new(a, b, c, mode, weighted)
                            .with_path_weight(1.0 + 0.25 * (n % 3) as f64),
                    );
                }
            }
        }
    }
    TpSpec {
        irreps_in1: i1,
        irreps_in2: i2,
        irreps_out: out,
        instructions,
        shared_weights: shared,
        irrep_normalization: IrrepNormalization::Component,
        path_normalization: PathNormalization::Element,
    }
}

/// Fully connected (`uvw`) with every coupling of `in1 x in2 -> out` (e.g. DiffDock shapes).
pub fn fully_connected(in1: &str, in2: &str, out: &str, shared: bool) -> TpSpec {
    let (i1, i2, o) = (
        Irreps::parse(in1).expect("in1"),
        Irreps::parse(in2).expect("in2"),
        Irreps::parse(out).expect("out"),
    );
    let mut instructions = Vec::new();
    for (a, x) in i1.0.iter().enumerate() {
        for (b, y) in i2.0.iter().enumerate() {
            for (c, z) in o.0.iter().enumerate() {
                if x.ir.couples_to(y.ir, z.ir) {
                    instructions.push(Instruction::new(a, b, c, ConnectionMode::Uvw, true));
                }
            }
        }
    }
    TpSpec {
        irreps_in1: i1,
        irreps_in2: i2,
        irreps_out: o,
        instructions,
        shared_weights: shared,
        irrep_normalization: IrrepNormalization::Component,
        path_normalization: PathNormalization::Element,
    }
}

/// One small problem per connection mode (l ≤ 2, multiplicity 3).
pub fn mode_specs(shared: bool) -> Vec<(String, TpSpec)> {
    MODES
        .iter()
        .map(|m| {
            (
                format!("mode-{m}"),
                spec_for_mode(
                    m,
                    "3x0e+3x1o+3x2e",
                    "3x0e+3x1o",
                    &["0e", "1o", "1e", "2e"],
                    shared,
                ),
            )
        })
        .collect()
}

/// High-l problems (l up to 6).
pub fn high_l_specs(shared: bool) -> Vec<(String, TpSpec)> {
    vec![
        (
            "l6-uvu".into(),
            spec_for_mode(
                "uvu",
                "2x5o+2x6e",
                "2x6e+2x1o",
                &["0e", "3o", "5e", "6e", "6o"],
                shared,
            ),
        ),
        (
            "l6-uvw".into(),
            spec_for_mode(
                "uvw",
                "1x6e+1x4o",
                "1x6e+1x2e",
                &["0e", "2e", "6e", "5o"],
                shared,
            ),
        ),
    ]
}

pub fn with_norms(mut s: TpSpec, irn: IrrepNormalization, pn: PathNormalization) -> TpSpec {
    s.irrep_normalization = irn;
    s.path_normalization = pn;
    s
}

pub const IRREP_NORMS: [IrrepNormalization; 3] = [
    IrrepNormalization::Component,
    IrrepNormalization::Norm,
    IrrepNormalization::None,
];
pub const PATH_NORMS: [PathNormalization; 3] = [
    PathNormalization::Element,
    PathNormalization::Path,
    PathNormalization::None,
];

pub fn build(s: &TpSpec) -> TensorProduct {
    s.build().unwrap_or_else(|e| panic!("build: {e}"))
}

pub fn set_shared(mut s: TpSpec, shared: bool) -> TpSpec {
    s.shared_weights = shared;
    s
}

/// Largest l in a spec.
pub fn max_l(s: &TpSpec) -> u32 {
    let l = |i: &Irreps| i.0.iter().map(|m| m.ir.l).max().unwrap_or(0);
    l(&s.irreps_in1).max(l(&s.irreps_in2)).max(l(&s.irreps_out))
}

pub fn _irrep(s: &str) -> Irrep {
    Irrep::parse(s).expect("irrep")
}
