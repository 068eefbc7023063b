//! No panics on bad input: arbitrary JSON text, random (often invalid) specs, and the oracle on
//! whatever builds.

mod oracle_common;

use equikern_core::spec::{ConnectionMode, Instruction};
use equikern_core::{load_suite, oracle, Irrep, Irreps, MulIr, Parity, TpSpec};
use proptest::prelude::*;

fn arb_irreps() -> impl Strategy<Value = Irreps> {
    prop::collection::vec((0usize..4, 0u32..4, any::<bool>()), 0..4).prop_map(|v| {
        Irreps(
            v.into_iter()
                .map(|(m, l, e)| {
                    MulIr::new(m, Irrep::new(l, if e { Parity::Even } else { Parity::Odd }))
                })
                .collect(),
        )
    })
}

fn arb_instruction() -> impl Strategy<Value = Instruction> {
    (
        0usize..4,
        0usize..4,
        0usize..4,
        0usize..8,
        any::<bool>(),
        -1.0f64..4.0,
    )
        .prop_map(|(a, b, o, m, w, pw)| {
            Instruction::new(a, b, o, ConnectionMode::ALL[m], w).with_path_weight(pw)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn json_never_panics(s in ".{0,200}") {
        let _ = TpSpec::from_json(&s);
        let _ = load_suite(&s);
    }

    #[test]
    fn json_like_never_panics(ins in "\\[[0-9\\-\" a-z<,.]{0,30}\\]", irr in "[0-9x eoy+]{0,12}") {
        let s = format!(r#"{{"irreps_in1": "{irr}", "irreps_in2": "0e+1o", "irreps_out": "{irr}", "instructions": [{ins}]}}"#);
        if let Ok(spec) = TpSpec::from_json(&s) {
            let _ = spec.build();
        }
    }

    #[test]
    fn build_and_oracle_never_panic(
        in1 in arb_irreps(), in2 in arb_irreps(), out in arb_irreps(),
        ins in prop::collection::vec(arb_instruction(), 0..5), shared in any::<bool>(), batch in 0usize..3,
    ) {
        let spec = TpSpec::new(in1, in2, out, ins, shared);
        if let Ok(tp) = spec.build() {
            prop_assert_eq!(tp.weight_numel, spec.weight_numel().unwrap());
            let x = vec![0.5; batch * tp.dim_in1];
            let y = vec![-0.25; batch * tp.dim_in2];
            let w = vec![1.5; tp.weight_len(batch).unwrap()];
            let z = oracle::forward(&tp, batch, &x, &y, &w).unwrap();
            prop_assert_eq!(z.len(), batch * tp.dim_out);
            let g = oracle::backward(&tp, batch, &x, &y, &w, &z).unwrap();
            prop_assert_eq!(g.gw.len(), w.len());
            // Wrong lengths are errors.
            prop_assert!(oracle::forward(&tp, batch + 1, &x, &y, &w).is_err() || tp.dim_in1 == 0);
        } else {
            prop_assert!(spec.validate().is_err() || spec.build().is_err());
        }
    }
}
