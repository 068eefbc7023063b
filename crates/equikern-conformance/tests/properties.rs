//! Property tests and parser fuzzing, adding to what `equikern-core`'s `spec_fuzz.rs` and
//! `irreps_grammar.rs` already cover (arbitrary text as spec/suite JSON, grammar-like irreps
//! strings, random often-invalid specs through build + oracle):
//!
//! * random *valid* specs (every connection mode, mixed) pass the whole conformance check
//!   list on every backend present (cpu, wgpu on lavapipe in CI, cuda with the feature);
//! * structured JSON fuzzing: arbitrary JSON values in every field of a valid spec and of a
//!   suite file — parsers return errors, never panic; accepted specs round-trip;
//! * `Irrep`, connection-mode and normalisation parsers on arbitrary strings;
//! * the plan lowering and interpreter on arbitrary (also absurd) capabilities: errors only.

use std::collections::BTreeMap;

use equikern_conformance::corpus::{random_spec, RandomSpec};
use equikern_conformance::{available_backends, run, BackendKind, Case, Tolerances};
use equikern_core::{
    load_suite, ConnectionMode, Irrep, IrrepNormalization, Irreps, PathNormalization, TpSpec,
};
use equikern_plan::{interpret, lower, Capabilities, Direction, Dtype, Tensor};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

fn valid_spec(seed: u64, instructions: usize) -> TpSpec {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    random_spec(
        &mut rng,
        &RandomSpec {
            modes: &ConnectionMode::ALL,
            instructions,
            lmax: 2,
            muls: &[1, 2, 3],
            unwritten: 0.3,
        },
    )
    .expect("random spec")
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_valid_specs_conform_on_every_backend() {
    let (backends, skipped) = available_backends(&BackendKind::ALL);
    for (k, why) in &skipped {
        eprintln!("backend {} skipped: {why}", k.name());
    }
    let mut runner = TestRunner::new(Config::with_cases(cases(12)));
    let strategy = (
        any::<u64>(),
        1usize..5,
        0usize..6,
        prop::option::of(1u32..4),
    );
    runner
        .run(&strategy, |(seed, n, batch, split)| {
            let case = Case {
                name: format!("proptest/{seed:x}"),
                group: "proptest".into(),
                spec: valid_spec(seed, n),
                batch,
                split,
                seed,
            };
            let report = run(
                std::slice::from_ref(&case),
                &backends,
                &Tolerances::default(),
                &mut |_| {},
            );
            let fails: Vec<String> = report
                .failures()
                .iter()
                .map(|(_, r)| {
                    format!(
                        "{} {} {}: {:e} ({})",
                        r.backend, r.prec, r.check, r.rel_l2, r.note
                    )
                })
                .collect();
            prop_assert!(
                fails.is_empty(),
                "{}\n{}",
                case.spec.to_json(),
                fails.join("\n")
            );
            Ok(())
        })
        .unwrap();
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|v| serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)),
        "[0-9x eo+\\-uvw<]{0,12}".prop_map(Value::String),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..7).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_0-9]{0,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: [&str; 8] = [
    "irreps_in1",
    "irreps_in2",
    "irreps_out",
    "instructions",
    "shared_weights",
    "irrep_normalization",
    "path_normalization",
    "weight_numel",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(400)))]

    /// One field of a valid spec (or one element of one instruction) replaced by arbitrary
    /// JSON: an error or a spec that builds, never a panic; accepted specs round-trip.
    #[test]
    fn spec_fields_never_panic(seed in any::<u64>(), field in 0usize..9, ins_pos in 0usize..6, v in arb_json()) {
        let spec = valid_spec(seed, 2);
        let mut obj: Value = serde_json::from_str(&spec.to_json()).expect("to_json is JSON");
        if field < FIELDS.len() {
            obj[FIELDS[field]] = v;
        } else if let Some(Value::Array(ins)) = obj.get_mut("instructions") {
            if let Some(Value::Array(first)) = ins.first_mut() {
                let k = ins_pos.min(first.len().saturating_sub(1));
                if k < first.len() { first[k] = v; } else { first.push(v); }
            }
        }
        let text = obj.to_string();
        if let Ok(parsed) = TpSpec::from_json(&text) {
            if let Ok(tp) = parsed.build() {
                let again = TpSpec::from_json(&parsed.to_json());
                prop_assert_eq!(again.as_ref().ok(), Some(&parsed), "{}", text);
                for d in [Direction::Forward, Direction::Backward, Direction::DoubleBackward] {
                    let _ = lower(&tp, d, Dtype::F32, &Capabilities::webgpu_min());
                }
            }
        }
    }

    /// Suite files with arbitrary problems.
    #[test]
    fn suite_json_never_panics(seed in any::<u64>(), v in arb_json(), keep in any::<bool>()) {
        let spec: Value = serde_json::from_str(&valid_spec(seed, 1).to_json()).expect("json");
        let mut problems = vec![v.clone()];
        if keep { problems.push(spec); }
        let doc = serde_json::json!({"description": "fuzz", "problems": problems});
        let _ = load_suite(&doc.to_string());
        let _ = load_suite(&v.to_string());
    }

    /// Valid specs round-trip through JSON exactly.
    #[test]
    fn valid_specs_round_trip(seed in any::<u64>(), n in 1usize..6) {
        let spec = valid_spec(seed, n);
        let back = TpSpec::from_json(&spec.to_json());
        prop_assert_eq!(back.ok(), Some(spec));
    }

    /// Small parsers on arbitrary text.
    #[test]
    fn small_parsers_never_panic(s in ".{0,24}", t in "[0-9eoyx+<uvw \\-]{0,10}") {
        for x in [&s, &t] {
            let _ = Irrep::parse(x);
            let _ = Irreps::parse(x);
            let _ = ConnectionMode::parse(x);
            let _ = IrrepNormalization::parse(x);
            let _ = PathNormalization::parse(x);
        }
    }

    /// Lowering and interpreting under arbitrary capabilities: `Ok` or an error.
    #[test]
    fn lowering_never_panics_on_any_caps(
        seed in any::<u64>(),
        caps in (0u32..300, any::<bool>(), 0u32..300, 0u32..300, 0u32..70_000, 0u64..4096, 0u32..40, 0u32..12, any::<bool>()),
        batch in 0usize..5,
    ) {
        let spec = valid_spec(seed, 3);
        let tp = spec.build().expect("valid");
        let (sg, sgs, inv, wx, wgm, bind, wdim, nbuf, f64ok) = caps;
        let caps = Capabilities {
            subgroup_size: sg,
            subgroups: sgs,
            max_invocations_per_workgroup: inv,
            max_workgroup_size_x: wx,
            workgroup_memory_bytes: wgm,
            max_storage_binding_bytes: bind,
            max_workgroups_per_dim: wdim,
            max_storage_buffers_per_stage: nbuf,
            f64: f64ok,
            float_atomics: false,
            warp_shuffles: sgs,
        };
        for d in [Direction::Forward, Direction::Backward, Direction::DoubleBackward] {
            if let Ok(plan) = lower(&tp, d, Dtype::F64, &caps) {
                let mut inputs = BTreeMap::new();
                for k in &plan.kernels {
                    for &t in &k.inputs {
                        if t == Tensor::WPartial { continue; }
                        let n = plan.dims.buffer_len(t, batch as u64, plan.num_chunks(batch as u64));
                        inputs.insert(t, vec![0.5; n as usize]);
                    }
                }
                let _ = interpret(&plan, batch, &inputs);
            }
        }
    }
}
