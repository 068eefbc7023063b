//! The torch.save-layout writer: what it writes, `Checkpoint` reads back exactly, and a random
//! SevenNet checkpoint builds the same model as its tensors say.

mod common;
use common::*;
use equikern_model::sevennet::Options;
use equikern_model::torch_save::{checkpoint_bytes, random_sevennet_checkpoint};
use equikern_model::{Checkpoint, SevenNet, Value};

#[test]
fn written_tensors_and_config_read_back() {
    let config = Value::Dict(vec![
        (Value::Str("cutoff".into()), Value::Float(4.5)),
        (Value::Str("n".into()), Value::Int(-3_000_000_000)),
        (
            Value::Str("list".into()),
            Value::List(vec![
                Value::Str("a b".into()),
                Value::Bool(false),
                Value::None,
            ]),
        ),
        (
            Value::Int(7),
            Value::Tuple(vec![Value::Int(1), Value::Float(-0.25)]),
        ),
    ]);
    let t = vec![
        (
            "a.weight".to_string(),
            vec![2, 3],
            vec![1.0, -2.0, 3.5, 4.0, 5.0, 1e-300],
        ),
        ("b".to_string(), vec![1], vec![std::f64::consts::PI]),
    ];
    let bytes = checkpoint_bytes(&t, &config).unwrap();
    let ck = Checkpoint::from_bytes(bytes).unwrap();
    assert_eq!(ck.config, config);
    for (k, shape, data) in &t {
        assert_eq!(&ck.tensor_f64(k, shape).unwrap(), data);
    }
    assert!(checkpoint_bytes(&[("x".into(), vec![2], vec![1.0])], &config).is_err());
}

#[test]
fn random_sevennet_checkpoint_loads_and_evaluates() {
    let config = small_config("XPLOR");
    let bytes = random_sevennet_checkpoint(&config, 9).unwrap();
    let ck = Checkpoint::from_bytes(bytes.clone()).unwrap();
    let m = SevenNet::from_checkpoint(&ck, Options::default()).unwrap();
    let p = m.evaluate(&molecule()).unwrap();
    assert!(p.energy.is_finite() && p.forces.iter().flatten().all(|x| x.is_finite()));
    // deterministic in the seed
    assert_eq!(random_sevennet_checkpoint(&config, 9).unwrap(), bytes);
    assert_ne!(random_sevennet_checkpoint(&config, 10).unwrap(), bytes);
    // a byte flipped in a storage fails the CRC check instead of loading wrong weights
    let mut bad = bytes;
    let at = bad.len() / 2;
    bad[at] ^= 0x10;
    assert!(Checkpoint::from_bytes(bad).is_err());
}
