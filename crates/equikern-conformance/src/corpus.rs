//! The conformance corpus: the paper suite, e3nn-style builders over seeded random irreps,
//! every connection mode alone and mixed, and edge cases. Everything derives from one seed.

use equikern_core::spec::builders::{channelwise, elementwise, full, fully_connected};
use equikern_core::{
    load_suite, ConnectionMode, Instruction, Irrep, IrrepNormalization, Irreps, MulIr, Parity,
    PathNormalization, TpSpec,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::{Error, Result};

const PAPER_SUITE: &str = include_str!("../../../benches/paper_suite.json");

/// Which corpus to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CorpusSize {
    /// CI: small batches, a sample of everything (a few minutes on lavapipe, 2 cores).
    Quick,
    /// GPU host: the whole paper suite, more random specs, larger batches.
    Full,
}

/// One tensor product with its batch and options.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    /// `paper`, `builder`, `mode`, `mixed`, `edge`, `proptest`, …
    pub group: String,
    pub spec: TpSpec,
    pub batch: usize,
    /// Force batch splitting: at most this many samples per dispatch.
    pub split: Option<u32>,
    /// Seed of the case's inputs and transformations.
    pub seed: u64,
}

struct Builder {
    rng: ChaCha8Rng,
    seed: u64,
    cases: Vec<Case>,
}

impl Builder {
    fn push(&mut self, group: &str, name: &str, spec: TpSpec, batch: usize, split: Option<u32>) {
        let seed = self
            .seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(self.cases.len() as u64);
        self.cases.push(Case {
            name: format!("{group}/{name}"),
            group: group.to_string(),
            spec,
            batch,
            split,
            seed,
        });
    }
}

fn irreps(s: &str) -> Result<Irreps> {
    Irreps::parse(s).map_err(|e| Error::Corpus(format!("{s:?}: {e}")))
}

fn parity(rng: &mut ChaCha8Rng) -> Parity {
    if rng.random_bool(0.5) {
        Parity::Even
    } else {
        Parity::Odd
    }
}

/// `n ∈ blocks` blocks with multiplicities from `muls` and `l <= lmax`.
pub fn random_irreps(
    rng: &mut ChaCha8Rng,
    blocks: std::ops::RangeInclusive<usize>,
    lmax: u32,
    muls: &[usize],
) -> Irreps {
    let n = rng.random_range(blocks);
    Irreps(
        (0..n)
            .map(|_| {
                let mul = muls[rng.random_range(0..muls.len())];
                MulIr::new(mul, Irrep::new(rng.random_range(0..=lmax), parity(rng)))
            })
            .collect(),
    )
}

fn irrep_norm(rng: &mut ChaCha8Rng) -> IrrepNormalization {
    [
        IrrepNormalization::Component,
        IrrepNormalization::Norm,
        IrrepNormalization::None,
    ][rng.random_range(0..3)]
}

fn path_norm(rng: &mut ChaCha8Rng) -> PathNormalization {
    [
        PathNormalization::Element,
        PathNormalization::Path,
        PathNormalization::None,
    ][rng.random_range(0..3)]
}

/// Options of [`random_spec`].
#[derive(Clone, Debug)]
pub struct RandomSpec<'a> {
    pub modes: &'a [ConnectionMode],
    pub instructions: usize,
    pub lmax: u32,
    pub muls: &'a [usize],
    /// Probability of an extra output block that no instruction writes.
    pub unwritten: f64,
}

/// A random valid spec: random input irreps, `instructions` instructions with modes drawn
/// from `modes` (multiplicities chosen to satisfy each mode), outputs sometimes shared by
/// several paths, random normalisations, path weights, shared or per-sample weights.
pub fn random_spec(rng: &mut ChaCha8Rng, o: &RandomSpec<'_>) -> Result<TpSpec> {
    for _attempt in 0..200 {
        let in1 = random_irreps(rng, 1..=3, o.lmax, o.muls);
        let in2 = random_irreps(rng, 1..=3, o.lmax, o.muls);
        let mut out: Vec<MulIr> = Vec::new();
        let mut ins = Vec::new();
        for _ in 0..o.instructions * 20 {
            if ins.len() == o.instructions {
                break;
            }
            let (i1, i2) = (
                rng.random_range(0..in1.len()),
                rng.random_range(0..in2.len()),
            );
            let (a, b) = (in1.0[i1], in2.0[i2]);
            let mode = o.modes[rng.random_range(0..o.modes.len())];
            let (m1, m2) = (a.mul, b.mul);
            let same = matches!(
                mode,
                ConnectionMode::Uuw
                    | ConnectionMode::Uuu
                    | ConnectionMode::UvuLtV
                    | ConnectionMode::ULtVw
            );
            if (same && m1 != m2) || (mode == ConnectionMode::UvuLtV && m1 < 2) {
                continue;
            }
            if mode == ConnectionMode::ULtVw && m1 < 2 {
                continue;
            }
            let irs: Vec<Irrep> = a.ir.product(b.ir).filter(|ir| ir.l <= o.lmax + 1).collect();
            if irs.is_empty() {
                continue;
            }
            let ir = irs[rng.random_range(0..irs.len())];
            let has_weight = mode.requires_weight() || rng.random_bool(0.7);
            let mo = match mode {
                ConnectionMode::Uvw | ConnectionMode::ULtVw => {
                    o.muls[rng.random_range(0..o.muls.len())]
                }
                ConnectionMode::Uuw if has_weight => o.muls[rng.random_range(0..o.muls.len())],
                ConnectionMode::Uuw => 1,
                ConnectionMode::Uvu | ConnectionMode::Uuu => m1,
                ConnectionMode::Uvv => m2,
                ConnectionMode::Uvuv => m1 * m2,
                ConnectionMode::UvuLtV => m1 * (m1 - 1) / 2,
            };
            let reuse = out
                .iter()
                .position(|m| m.ir == ir && m.mul == mo)
                .filter(|_| rng.random_bool(0.4));
            let i_out = match reuse {
                Some(k) => k,
                None => {
                    out.push(MulIr::new(mo, ir));
                    out.len() - 1
                }
            };
            let pw = [1.0, 0.5, 2.0][rng.random_range(0..3)];
            ins.push(Instruction::new(i1, i2, i_out, mode, has_weight).with_path_weight(pw));
        }
        if ins.len() < o.instructions {
            continue;
        }
        if rng.random_bool(o.unwritten) {
            let at = rng.random_range(0..=out.len());
            out.insert(
                at,
                MulIr::new(2, Irrep::new(rng.random_range(0..=2), parity(rng))),
            );
            for i in &mut ins {
                if i.i_out >= at {
                    i.i_out += 1;
                }
            }
        }
        let mut spec = TpSpec::new(in1, in2, Irreps(out), ins, rng.random_bool(0.3));
        spec.irrep_normalization = irrep_norm(rng);
        spec.path_normalization = path_norm(rng);
        if spec.build().is_ok() {
            return Ok(spec);
        }
    }
    Err(Error::Corpus("could not draw a valid random spec".into()))
}

fn paper(b: &mut Builder, size: CorpusSize) -> Result<()> {
    let suite = load_suite(PAPER_SUITE).map_err(|e| Error::Corpus(format!("paper suite: {e}")))?;
    let quick = [
        "nequip-water",
        "DiffDock-L=1",
        "tetris-poly-1",
        "tetris-poly-2",
    ];
    for (label, spec) in suite {
        match size {
            CorpusSize::Quick if quick.contains(&label.as_str()) => {
                b.push("paper", &label, spec, 2, None)
            }
            CorpusSize::Quick => {}
            CorpusSize::Full => {
                b.push("paper", &label, spec.clone(), 16, None);
                b.push("paper", &format!("{label}-split"), spec, 37, Some(8));
            }
        }
    }
    Ok(())
}

fn builders(b: &mut Builder, size: CorpusSize) -> Result<()> {
    let (n, batch, muls): (usize, usize, &[usize]) = match size {
        CorpusSize::Quick => (2, 3, &[1, 2, 3]),
        CorpusSize::Full => (8, 9, &[1, 2, 4, 8, 16]),
    };
    for k in 0..n {
        let rng = &mut b.rng;
        let lmax = rng.random_range(1..=3);
        let in1 = random_irreps(rng, 1..=3, lmax, muls);
        let sh = Irreps::spherical_harmonics(rng.random_range(1..=3));
        let target = random_irreps(rng, 4..=4, lmax + 1, &[1]);
        let mace = rng.random_bool(0.5);
        let cw = channelwise(&in1, &sh, &target, mace);
        if cw.build().is_ok() && !cw.instructions.is_empty() {
            b.push("builder", &format!("channelwise-{k}"), cw, batch, None);
        }
        let rng = &mut b.rng;
        let a = random_irreps(rng, 1..=3, lmax, muls);
        let c = random_irreps(rng, 1..=2, lmax, muls);
        let o = random_irreps(rng, 2..=4, lmax + 1, muls);
        let (inorm, pnorm) = (irrep_norm(rng), path_norm(rng));
        let fc = fully_connected(&a, &c, &o, inorm, pnorm);
        if fc.build().is_ok() && !fc.instructions.is_empty() {
            b.push("builder", &format!("fully_connected-{k}"), fc, batch, None);
        }
        let rng = &mut b.rng;
        let e1 = random_irreps(rng, 1..=3, lmax, muls);
        // Same number of irreps, grouped differently.
        let total = e1.num_irreps();
        let mut e2 = Vec::new();
        let mut left = total;
        while left > 0 {
            let m = rng.random_range(1..=left);
            e2.push(MulIr::new(
                m,
                Irrep::new(rng.random_range(0..=lmax), parity(rng)),
            ));
            left -= m;
        }
        let inorm = irrep_norm(rng);
        if let Ok(ew) = elementwise(&e1, &Irreps(e2), None, inorm) {
            if ew.build().is_ok() && !ew.instructions.is_empty() {
                b.push("builder", &format!("elementwise-{k}"), ew, batch, None);
            }
        }
        let rng = &mut b.rng;
        let f1 = random_irreps(rng, 1..=2, lmax, &[1, 2]);
        let f2 = random_irreps(rng, 1..=2, lmax, &[1, 2]);
        let inorm = irrep_norm(rng);
        let ft = full(&f1, &f2, None, inorm);
        if ft.build().is_ok() && !ft.instructions.is_empty() {
            b.push("builder", &format!("full-{k}"), ft, batch, None);
        }
    }
    Ok(())
}

fn modes(b: &mut Builder, size: CorpusSize) -> Result<()> {
    let (mixed, batch, muls): (usize, usize, &[usize]) = match size {
        CorpusSize::Quick => (4, 3, &[1, 2, 3]),
        CorpusSize::Full => (24, 7, &[1, 2, 3, 5, 8]),
    };
    for mode in ConnectionMode::ALL {
        let o = RandomSpec {
            modes: &[mode],
            instructions: 3,
            lmax: 2,
            muls,
            unwritten: 0.0,
        };
        let spec = random_spec(&mut b.rng, &o)?;
        b.push("mode", mode.as_str(), spec, batch, None);
    }
    for k in 0..mixed {
        let o = RandomSpec {
            modes: &ConnectionMode::ALL,
            instructions: if size == CorpusSize::Quick {
                5
            } else {
                4 + k % 8
            },
            lmax: if size == CorpusSize::Quick { 2 } else { 3 },
            muls,
            unwritten: 0.3,
        };
        let spec = random_spec(&mut b.rng, &o)?;
        b.push("mixed", &format!("{k}"), spec, batch, None);
    }
    Ok(())
}

fn spec_of(
    in1: &str,
    in2: &str,
    out: &str,
    ins: &[(usize, usize, usize, &str, bool)],
) -> Result<TpSpec> {
    let instructions = ins
        .iter()
        .map(|&(a, b, c, m, w)| {
            let mode =
                ConnectionMode::parse(m).ok_or_else(|| Error::Corpus(format!("mode {m}")))?;
            Ok(Instruction::new(a, b, c, mode, w))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(TpSpec::new(
        irreps(in1)?,
        irreps(in2)?,
        irreps(out)?,
        instructions,
        false,
    ))
}

fn edge(b: &mut Builder, size: CorpusSize) -> Result<()> {
    let full_size = size == CorpusSize::Full;
    let batch = if full_size { 7 } else { 3 };
    // High l.
    let t = irreps("8e+6e+10e")?;
    b.push(
        "edge",
        "l8",
        channelwise(&irreps("1x8e")?, &irreps("1x0e+1x2e")?, &t, false),
        batch,
        None,
    );
    if full_size {
        let t = irreps("8e+13o+3o+5e")?;
        let cw = channelwise(&irreps("2x8e+1x3o")?, &irreps("1x0e+1x5o")?, &t, false);
        b.push("edge", "l13", cw, batch, None);
        let s = spec_of(
            "1x12e",
            "1x4e",
            "1x16e+1x8e",
            &[(0, 0, 0, "uvw", true), (0, 0, 1, "uvu", true)],
        )?;
        b.push("edge", "l16", s, 3, None);
    }
    // Multiplicities 1 and >= 256.
    let ones = irreps("1x0e+1x1o+1x2e+1x1e")?;
    let fc = fully_connected(
        &irreps("1x0e+1x1o+1x2e")?,
        &irreps("1x1o")?,
        &ones,
        IrrepNormalization::Component,
        PathNormalization::Element,
    );
    b.push("edge", "mul1", fc, batch, None);
    let big = channelwise(
        &irreps("256x0e+256x1o")?,
        &irreps("1x0e+1x1o")?,
        &irreps("0e+1o+1e")?,
        false,
    );
    b.push(
        "edge",
        "mul256-uvu",
        big,
        if full_size { 9 } else { 2 },
        None,
    );
    if full_size {
        let s = spec_of(
            "300x0e+2x1o",
            "1x0e+1x1o",
            "4x0e+4x1o",
            &[
                (0, 0, 0, "uvw", true),
                (0, 1, 1, "uvw", true),
                (1, 1, 0, "uvw", true),
            ],
        )?;
        b.push("edge", "mul300-uvw", s, 5, None);
    }
    // One instruction; >= 50 instructions.
    let s = spec_of("3x1o", "2x1o", "4x0e", &[(0, 0, 0, "uvw", true)])?;
    b.push("edge", "one-instruction", s, batch, None);
    let fc = fully_connected(
        &irreps("1x0e+1x1o+1x2e+1x1e+1x2o+1x0o")?,
        &irreps("1x0e+1x1o+1x2e+1x1e+1x0o")?,
        &irreps("1x0e+1x1o+1x2e+1x1e+1x2o+1x0o+1x3o+1x3e")?,
        IrrepNormalization::Component,
        PathNormalization::Element,
    );
    b.push("edge", "many-instructions", fc, batch, None);
    // Unweighted paths of every mode that allows them.
    let s = spec_of(
        "2x0e+2x1o",
        "2x1o+1x0e",
        "2x1o+2x0e+4x1e+1x1e+1x0e+2x1e",
        &[
            (0, 0, 0, "uvu", false),
            (0, 0, 0, "uvv", false),
            (1, 0, 1, "uuu", false),
            (1, 0, 2, "uvuv", false),
            (1, 0, 3, "uvu<v", false),
            (1, 0, 4, "uuw", false),
            (0, 0, 0, "uuw", true),
            (1, 0, 5, "u<vw", true),
        ],
    )?;
    b.push("edge", "unweighted", s, batch, None);
    // Shared weights, channelwise.
    let mut cw = channelwise(
        &irreps("4x0e+4x1o")?,
        &irreps("1x0e+1x1o")?,
        &irreps("0e+1o+1e")?,
        false,
    );
    cw.shared_weights = true;
    b.push("edge", "shared-weights", cw.clone(), batch, None);
    // Outputs no instruction writes, inputs no instruction reads.
    let s = spec_of(
        "2x0e+3x2o+2x1o",
        "1x1o+2x3e",
        "3x4e+2x1o+2x0o+2x2e",
        &[(0, 0, 1, "uvu", true), (2, 0, 3, "uvu", true)],
    )?;
    b.push("edge", "unwritten-outputs", s.clone(), batch, None);
    // Batches 0 and 1, per-sample and shared; batches that need several dispatches.
    b.push("edge", "batch0", s.clone(), 0, None);
    b.push("edge", "batch0-shared", cw.clone(), 0, None);
    b.push("edge", "batch1", s.clone(), 1, None);
    b.push("edge", "batch1-shared", cw.clone(), 1, None);
    b.push(
        "edge",
        "split",
        s,
        if full_size { 101 } else { 13 },
        Some(4),
    );
    b.push(
        "edge",
        "split-shared",
        cw,
        if full_size { 150 } else { 40 },
        Some(16),
    );
    Ok(())
}

/// Build the corpus for `size` from `seed`.
pub fn corpus(size: CorpusSize, seed: u64) -> Result<Vec<Case>> {
    let mut b = Builder {
        rng: ChaCha8Rng::seed_from_u64(seed),
        seed,
        cases: Vec::new(),
    };
    paper(&mut b, size)?;
    builders(&mut b, size)?;
    modes(&mut b, size)?;
    edge(&mut b, size)?;
    Ok(b.cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpora_build_and_cover_the_edges() {
        for size in [CorpusSize::Quick, CorpusSize::Full] {
            let cases = corpus(size, 1).expect("corpus");
            eprintln!("{size:?}: {} cases", cases.len());
            for c in &cases {
                c.spec.build().unwrap_or_else(|e| panic!("{}: {e}", c.name));
            }
            let get = |n: &str| {
                cases
                    .iter()
                    .find(|c| c.name == n)
                    .unwrap_or_else(|| panic!("{n} missing"))
            };
            assert!(get("edge/many-instructions").spec.instructions.len() >= 50);
            assert_eq!(get("edge/one-instruction").spec.instructions.len(), 1);
            assert!(get("edge/mul256-uvu")
                .spec
                .irreps_in1
                .iter()
                .any(|m| m.mul >= 256));
            assert!(get("edge/l8").spec.irreps_out.lmax() >= Some(8));
            assert_eq!(get("edge/batch0").batch, 0);
            assert_eq!(get("edge/batch1-shared").batch, 1);
            let s = get("edge/split-shared");
            assert!(s.spec.shared_weights && s.batch > 2 * s.split.unwrap_or(0) as usize);
            for m in ConnectionMode::ALL {
                let c = get(&format!("mode/{}", m.as_str()));
                assert!(c.spec.instructions.iter().all(|i| i.mode == m));
            }
            // Deterministic in the seed.
            let again = corpus(size, 1).expect("corpus");
            assert!(cases
                .iter()
                .zip(&again)
                .all(|(a, b)| a.spec == b.spec && a.seed == b.seed));
        }
    }
}
