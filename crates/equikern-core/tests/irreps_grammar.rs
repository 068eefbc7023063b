//! Irreps grammar, repr, simplify/sort and the selection rule vs the conventions notes §1.

use equikern_core::{Irrep, Irreps, IrrepsError, MulIr, Parity};
use proptest::prelude::*;

fn ir(l: u32, p: Parity) -> Irrep {
    Irrep::new(l, p)
}
use Parity::{Even as E, Odd as O};

fn parse(s: &str) -> Irreps {
    Irreps::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

#[test]
fn parses_e3nn_examples() {
    type Entries = &'static [(usize, u32, Parity)];
    let cases: &[(&str, Entries)] = &[
        ("16x0e + 8x1o", &[(16, 0, E), (8, 1, O)]),
        ("16x0e+8x1o", &[(16, 0, E), (8, 1, O)]),
        ("0e", &[(1, 0, E)]),
        ("1o", &[(1, 1, O)]),
        ("1x1o", &[(1, 1, O)]),
        ("2x1e+3x2o", &[(2, 1, E), (3, 2, O)]),
        ("32 x 2o", &[(32, 2, O)]),
        ("16x1e + 32 x 2o", &[(16, 1, E), (32, 2, O)]),
        ("1y", &[(1, 1, O)]),
        ("2y", &[(1, 2, E)]),
        ("10o", &[(1, 10, O)]),
        ("01e", &[(1, 1, E)]),
        ("1 o", &[(1, 1, O)]),
        ("0x2e", &[(0, 2, E)]),
        ("1e + 0x0e + 1e", &[(1, 1, E), (0, 0, E), (1, 1, E)]),
        ("", &[]),
        ("   ", &[]),
    ];
    for (s, expect) in cases {
        let got = parse(s);
        let want = Irreps(
            expect
                .iter()
                .map(|&(m, l, p)| MulIr::new(m, ir(l, p)))
                .collect(),
        );
        assert_eq!(got, want, "{s:?}");
    }
    assert_eq!(
        "1y".parse::<Irrep>().unwrap(),
        "1o".parse::<Irrep>().unwrap()
    );
    assert_eq!(
        "2y".parse::<Irrep>().unwrap(),
        "2e".parse::<Irrep>().unwrap()
    );
}

#[test]
fn rejects_e3nn_error_examples_naming_the_token() {
    let cases = [
        ("1x", "1x"),
        ("x1o", "x1o"),
        ("16X0e", "16X0e"),
        ("1x1o+", "+"),
        ("+1o", "+"),
        ("1x1x1o", "1x1x1o"),
        ("-1x1e", "-1x1e"),
        ("1x-1e", "-1e"),
        ("bla", "bla"),
        ("1E", "1E"),
        ("1", "1"),
        ("-1e", "-1e"),
        ("1 6x0e", "1 6x0e"),
    ];
    for (s, token) in cases {
        match Irreps::parse(s) {
            Err(IrrepsError::BadToken {
                input,
                token: t,
                why,
            }) => {
                assert_eq!(input, s);
                assert_eq!(t.trim(), token, "{s:?}: {why}");
                let msg = Irreps::parse(s).unwrap_err().to_string();
                assert!(msg.contains(s), "{msg}");
            }
            Ok(v) => panic!("{s:?} parsed as {v}"),
        }
    }
}

#[test]
fn repr_round_trips() {
    assert_eq!(parse("16x0e + 8x1o").to_string(), "16x0e+8x1o");
    assert_eq!(parse("0e").to_string(), "1x0e");
    assert_eq!(parse("1y + 2y").to_string(), "1x1o+1x2e");
    assert_eq!(parse("").to_string(), "");
    for s in ["16x0e+8x1o", "0x2e+1x0o", "3x10e"] {
        assert_eq!(parse(&parse(s).to_string()), parse(s));
    }
    // Structural equality.
    assert_ne!(parse("1o+1o"), parse("2x1o"));
    assert_eq!(parse("1o"), parse("1x1o"));
}

#[test]
fn sizes_and_queries() {
    let a = parse("2x0e + 1e + 0x3o + 3x1e");
    assert_eq!(a.dim(), 2 + 3 + 9);
    assert_eq!(a.num_irreps(), 6);
    assert_eq!(a.ls(), vec![0, 0, 1, 1, 1, 1]);
    assert_eq!(a.lmax(), Some(1));
    assert_eq!(Irreps::default().lmax(), None);
    assert_eq!(a.count(ir(1, E)), 4);
    assert!(a.contains(ir(3, O)));
    assert!(!a.contains(ir(3, E)));
    assert_eq!(parse("2x0e + 1e").slices(), vec![0..2, 2..5]);
    assert_eq!(a.slices(), vec![0..2, 2..5, 5..5, 5..14]);
    assert_eq!(&parse("0e") + &parse("1o"), parse("0e+1o"));
    assert_eq!(parse("0e") + parse("1o"), parse("0e+1o"));
    assert_eq!(parse("0e+1o").repeat(2), parse("0e+1o+0e+1o"));
    assert_eq!(Irreps::spherical_harmonics(3), parse("0e+1o+2e+3o"));
    assert_eq!(
        Irreps::spherical_harmonics_with_parity(2, E),
        parse("0e+1e+2e")
    );
    assert_eq!(
        parse("0e+0x1o+2x2e").remove_zero_multiplicities(),
        parse("0e+2x2e")
    );
}

#[test]
fn simplify_matches_notes() {
    assert_eq!(parse("1e + 1e + 0e").simplify().to_string(), "2x1e+1x0e");
    assert_eq!(
        parse("1e + 1e + 0e + 1e").simplify().to_string(),
        "2x1e+1x0e+1x1e"
    );
    assert_eq!(parse("1e + 0x0e + 1e").simplify().to_string(), "2x1e");
    assert_eq!(parse("").simplify(), Irreps::default());
}

#[test]
fn sort_matches_notes() {
    let s = parse("2o + 1e + 0e + 1e").sort();
    assert_eq!(s.irreps.to_string(), "1x0e+1x1e+1x1e+1x2o");
    assert_eq!(s.p, vec![3, 1, 0, 2]);
    assert_eq!(s.inv, vec![2, 1, 3, 0]);
    assert_eq!(
        parse("0e + 0o + 1e + 1o").sort().irreps.to_string(),
        "1x0o+1x0e+1x1o+1x1e"
    );
    assert_eq!(
        parse("2o + 1e + 0e + 1e").regroup().to_string(),
        "1x0e+2x1e+1x2o"
    );
    // Irrep order: odd before even at equal l.
    assert!(ir(0, O) < ir(0, E) && ir(0, E) < ir(1, O) && ir(1, O) < ir(1, E));
}

#[test]
fn selection_rule() {
    let (o1, e1) = (ir(1, O), ir(1, E));
    assert!(o1.couples_to(o1, e1)); // cross product
    assert!(!o1.couples_to(o1, o1));
    assert!(o1.couples_to(o1, ir(0, E)));
    assert!(o1.couples_to(o1, ir(2, E)));
    assert!(!o1.couples_to(o1, ir(3, E)));
    assert!(!ir(2, E).couples_to(ir(0, E), ir(1, E)));
    let prod: Vec<String> = ir(1, O).product(ir(2, E)).map(|i| i.to_string()).collect();
    assert_eq!(prod, ["1o", "2o", "3o"]);
    // The product iterator and couples_to agree.
    for l1 in 0..4 {
        for l2 in 0..4 {
            for p1 in [O, E] {
                for p2 in [O, E] {
                    let (a, b) = (ir(l1, p1), ir(l2, p2));
                    let prod: Vec<Irrep> = a.product(b).collect();
                    for lo in 0..8 {
                        for po in [O, E] {
                            let o = ir(lo, po);
                            assert_eq!(a.couples_to(b, o), prod.contains(&o));
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn huge_values_do_not_panic() {
    for s in [
        "99999999999999999999999x0e",
        "0x99999999999e",
        "4294967295e",
        "4294967296e",
        "18446744073709551615x4294967295o",
        "1_0x1_1e",
        "1__0x1e",
    ] {
        if let Ok(irreps) = Irreps::parse(s) {
            let _ = (
                irreps.dim(),
                irreps.checked_dim(),
                irreps.slices(),
                irreps.simplify(),
                irreps.lmax(),
            );
        }
    }
    let big = parse("4294967295e");
    assert_eq!(big.0[0].ir.l, u32::MAX);
    assert!(!big.0[0].ir.couples_to(big.0[0].ir, Irrep::new(0, O)));
    assert_eq!(parse("1_0x1e").0[0].mul, 10);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_arbitrary_strings(s in ".{0,40}") {
        let _ = Irreps::parse(&s);
        let _ = s.parse::<Irrep>();
    }

    #[test]
    fn never_panics_on_grammar_like_strings(s in "[0-9xeoy+ \\-_Xa]{0,24}") {
        if let Ok(v) = Irreps::parse(&s) {
            prop_assert_eq!(Irreps::parse(&v.to_string()).unwrap(), v);
        }
    }

    #[test]
    fn repr_round_trip(entries in prop::collection::vec((0usize..50, 0u32..12, any::<bool>()), 0..8)) {
        let v = Irreps(entries.iter().map(|&(m, l, e)| MulIr::new(m, Irrep::new(l, if e { E } else { O }))).collect());
        prop_assert_eq!(Irreps::parse(&v.to_string()).unwrap(), v.clone());
        let s = v.sort();
        for (old, &new) in s.p.iter().enumerate() {
            prop_assert_eq!(s.inv[new], old);
            prop_assert_eq!(s.irreps.0[new], v.0[old]);
        }
        prop_assert!(s.irreps.0.windows(2).all(|w| w[0].ir <= w[1].ir));
        prop_assert_eq!(v.simplify().dim(), v.dim());
    }
}
