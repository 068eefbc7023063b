//! Constructors mirroring e3nn's derived tensor products (conventions notes §6).

use super::{
    ConnectionMode, Instruction, IrrepNormalization, PathNormalization, SpecError, TpSpec,
};
use crate::irreps::{Irrep, Irreps, MulIr};

/// e3nn's `FullyConnectedTensorProduct`: a weighted `uvw` path for every `(i1, i2, i_out)`
/// (loop order i1, i2, i_out) allowed by the selection rule. No irreps are simplified.
/// Shared weights (e3nn's default).
pub fn fully_connected(
    in1: &Irreps,
    in2: &Irreps,
    out: &Irreps,
    irrep_normalization: IrrepNormalization,
    path_normalization: PathNormalization,
) -> TpSpec {
    let mut instructions = Vec::new();
    for (i1, a) in in1.iter().enumerate() {
        for (i2, b) in in2.iter().enumerate() {
            for (io, o) in out.iter().enumerate() {
                if a.ir.couples_to(b.ir, o.ir) {
                    instructions.push(Instruction::new(i1, i2, io, ConnectionMode::Uvw, true));
                }
            }
        }
    }
    TpSpec {
        irreps_in1: in1.clone(),
        irreps_in2: in2.clone(),
        irreps_out: out.clone(),
        instructions,
        shared_weights: true,
        irrep_normalization,
        path_normalization,
    }
}

/// The NequIP/MACE channelwise (`uvu`) convolution product (§6).
///
/// For every `(i, mul x ir_in)` of `in1`, every `(j, ir_edge)` of `in2` and every `ir_out` in
/// `ir_in ⊗ ir_edge` (ascending l) that occurs in `target`, append an output block
/// `mul x ir_out` and a weighted `uvu` instruction. The output irreps (`irreps_mid`) are then
/// sorted (not simplified) and instruction outputs remapped. With
/// `sort_instructions_by_output` (MACE) the instructions are also stably sorted by output,
/// which changes the weight layout relative to NequIP. Per-sample weights (`shared_weights =
/// false`), component/element normalisation.
pub fn channelwise(
    in1: &Irreps,
    in2: &Irreps,
    target: &Irreps,
    sort_instructions_by_output: bool,
) -> TpSpec {
    let mut mid = Vec::new();
    let mut instructions = Vec::new();
    for (i, a) in in1.iter().enumerate() {
        for (j, b) in in2.iter().enumerate() {
            for ir_out in a.ir.product(b.ir) {
                if target.contains(ir_out) {
                    mid.push(MulIr::new(a.mul, ir_out));
                    let k = mid.len() - 1;
                    instructions.push(Instruction::new(i, j, k, ConnectionMode::Uvu, true));
                }
            }
        }
    }
    let sorted = Irreps(mid).sort();
    for ins in &mut instructions {
        ins.i_out = sorted.p[ins.i_out];
    }
    if sort_instructions_by_output {
        instructions.sort_by_key(|ins| ins.i_out); // stable
    }
    TpSpec::new(in1.clone(), in2.clone(), sorted.irreps, instructions, false)
}

/// e3nn's `ElementwiseTensorProduct`: both inputs simplified, blocks split so multiplicities
/// align one to one, then an unweighted `uuu` path per aligned pair and per `ir_out` in the
/// product (ascending l, kept if `filter` is `None` or contains it). Output not sorted.
/// Errors if the inputs have different `num_irreps`.
pub fn elementwise(
    in1: &Irreps,
    in2: &Irreps,
    filter: Option<&[Irrep]>,
    irrep_normalization: IrrepNormalization,
) -> Result<TpSpec, SpecError> {
    let (mut a, mut b) = (in1.simplify().0, in2.simplify().0);
    if in1.num_irreps() != in2.num_irreps() {
        return Err(SpecError::Field {
            field: "irreps_in2".into(),
            why: format!(
                "elementwise product needs equal num_irreps: {in1} has {}, {in2} has {}",
                in1.num_irreps(),
                in2.num_irreps()
            ),
        });
    }
    // Split the larger of each aligned pair so both have the smaller multiplicity.
    let mut i = 0;
    while i < a.len() && i < b.len() {
        let (ma, mb) = (a[i].mul, b[i].mul);
        if ma < mb {
            b[i].mul = ma;
            b.insert(i + 1, MulIr::new(mb - ma, b[i].ir));
        } else if mb < ma {
            a[i].mul = mb;
            a.insert(i + 1, MulIr::new(ma - mb, a[i].ir));
        }
        i += 1;
    }
    let mut out = Vec::new();
    let mut instructions = Vec::new();
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        for ir in x.ir.product(y.ir) {
            if filter.is_none_or(|f| f.contains(&ir)) {
                out.push(MulIr::new(x.mul, ir));
                instructions.push(Instruction::new(
                    k,
                    k,
                    out.len() - 1,
                    ConnectionMode::Uuu,
                    false,
                ));
            }
        }
    }
    let mut spec = TpSpec::new(Irreps(a), Irreps(b), Irreps(out), instructions, true);
    spec.irrep_normalization = irrep_normalization;
    Ok(spec)
}

/// e3nn's `FullTensorProduct`: inputs simplified; an unweighted `uvuv` path into a new block
/// `(m1·m2) x ir_out` for every `(i1, i2, ir_out ∈ ir1 ⊗ ir2)` (filtered), then the output
/// irreps sorted (not simplified) and instruction outputs remapped.
pub fn full(
    in1: &Irreps,
    in2: &Irreps,
    filter: Option<&[Irrep]>,
    irrep_normalization: IrrepNormalization,
) -> TpSpec {
    let (a, b) = (in1.simplify(), in2.simplify());
    let mut out = Vec::new();
    let mut instructions = Vec::new();
    for (i1, x) in a.iter().enumerate() {
        for (i2, y) in b.iter().enumerate() {
            for ir in x.ir.product(y.ir) {
                if filter.is_none_or(|f| f.contains(&ir)) {
                    out.push(MulIr::new(x.mul.saturating_mul(y.mul), ir));
                    instructions.push(Instruction::new(
                        i1,
                        i2,
                        out.len() - 1,
                        ConnectionMode::Uvuv,
                        false,
                    ));
                }
            }
        }
    }
    let sorted = Irreps(out).sort();
    for ins in &mut instructions {
        ins.i_out = sorted.p[ins.i_out];
    }
    let mut spec = TpSpec::new(a, b, sorted.irreps, instructions, true);
    spec.irrep_normalization = irrep_normalization;
    spec
}
