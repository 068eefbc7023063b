//! Checkpoint reader: the real SevenNet-0 file (when fetched) and hand-built pickles.

use equikern_model::checkpoint::{unpickle, Checkpoint, DType, TensorData, Value};
use std::collections::HashMap;
use std::path::PathBuf;

pub fn checkpoint_path() -> Option<PathBuf> {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/checkpoint_sevennet_0.pth");
    if p.exists() {
        Some(p)
    } else {
        println!(
            "SKIP: {} absent (run crates/equikern-model/fetch_checkpoint.sh)",
            p.display()
        );
        None
    }
}

#[test]
fn real_sevennet0_checkpoint() {
    let Some(path) = checkpoint_path() else {
        return;
    };
    let ck = Checkpoint::load(&path).unwrap();
    assert_eq!(ck.parameter_count(), 842_623);
    let shape = |k: &str| ck.tensor(k).unwrap().shape.clone();
    assert_eq!(shape("edge_embedding.basis_function.coeffs"), vec![8]);
    assert_eq!(shape("onehot_to_feature_x.linear.weight"), vec![89 * 128]);
    assert_eq!(
        shape("0_convolution.weight_nn.layer2.weight"),
        vec![64, 384]
    );
    assert_eq!(
        shape("1_convolution.weight_nn.layer2.weight"),
        vec![64, 960]
    );
    assert_eq!(
        shape("4_convolution.weight_nn.layer2.weight"),
        vec![64, 224]
    );
    assert_eq!(shape("1_self_interaction_2.linear.weight"), vec![86016]);
    assert_eq!(shape("rescale_atomic_energy.shift"), vec![89]);
    let den = ck.tensor("0_convolution.denominator").unwrap().to_f64()[0];
    assert!((den - 35.99).abs() < 0.01, "{den}");
    let scale = ck.tensor("rescale_atomic_energy.scale").unwrap().to_f64();
    assert!(scale.iter().all(|&s| (s - 1.73).abs() < 1e-6));
    assert!(matches!(
        ck.tensor("0_convolution.denominator").unwrap().data,
        TensorData::F32(_)
    ));
    // config
    assert_eq!(ck.config_field("cutoff").unwrap().as_f64(), Some(5.0));
    assert_eq!(
        ck.config_field("num_convolution_layer").unwrap().as_i64(),
        Some(5)
    );
    assert_eq!(
        ck.config_field("_number_of_species").unwrap().as_i64(),
        Some(89)
    );
    assert_eq!(ck.config_field("is_parity").unwrap().as_bool(), Some(false));
    let manual = ck.config_field("irreps_manual").unwrap().as_seq().unwrap();
    assert_eq!(manual[1].as_str(), Some("128x0e+64x1e+32x2e"));
    // numpy arrays in the config decode
    let shift_cp = ck.config_field("shift").unwrap().as_f64_vec().unwrap();
    assert_eq!(shift_cp.len(), 89);
    let json = ck.config.to_json();
    assert_eq!(json["cutoff_function"]["cutoff_function_name"], "XPLOR");
    // a non-contiguous saved view: e3nn's compiled w3j buffers have permuted strides;
    // they must equal equikern's wigner_3j (row-major after the gather)
    let t = ck
        .tensor("1_convolution.convolution._compiled_main_left_right._w3j_1_1_2")
        .unwrap();
    assert_eq!(t.shape, vec![3, 3, 5]);
    assert_eq!(t.strides, vec![5, 15, 1]);
    let w = equikern_core::so3::wigner_3j(1, 1, 2).unwrap();
    let v = t.to_f64();
    for i in 0..3 {
        for j in 0..3 {
            for k in 0..5 {
                let ours = w.get(i, j, k);
                assert!((v[(i * 3 + j) * 5 + k] - ours).abs() < 1e-7, "{i}{j}{k}");
            }
        }
    }
}

/// Protocol-2 pickle builder for tests.
struct P(Vec<u8>);
impl P {
    fn op(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn s(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn int(&mut self, i: u8) -> &mut Self {
        self.op(&[b'K', i])
    }
    fn global(&mut self, m: &str, n: &str) -> &mut Self {
        self.0.push(b'c');
        self.0.extend_from_slice(format!("{m}\n{n}\n").as_bytes());
        self
    }
}

fn hand_built(stride_t: bool) -> Vec<u8> {
    let mut p = P(vec![0x80, 2]);
    p.op(b"}").op(b"(").s("model_state_dict");
    p.global("collections", "OrderedDict").op(b")R");
    p.op(b"(").s("w");
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.op(b"((").s("storage");
    p.global("torch", "FloatStorage");
    p.s("0").s("cpu").int(6).op(b"t").op(b"Q"); // persistent id
    p.int(0); // offset
    p.int(2).int(3).op(&[0x86]); // size (2,3)
    if stride_t {
        p.int(1).int(2).op(&[0x86]); // transposed view of a 3x2 storage
    } else {
        p.int(3).int(1).op(&[0x86]);
    }
    p.op(&[0x89]); // requires_grad False
    p.global("collections", "OrderedDict").op(b")R");
    p.op(b"tR"); // args tuple, REDUCE
    p.op(b"u"); // SETITEMS into the OrderedDict
    p.s("config").op(b"}").op(b"(");
    p.s("cutoff").op(b"G").op(&5.0f64.to_be_bytes());
    p.s("flag").op(&[0x88]);
    p.s("list").op(b"]").op(b"(").int(1).s("x").op(b"e");
    p.int(7).s("int-key");
    p.op(b"u");
    p.op(b"u.");
    p.0
}

#[test]
fn hand_built_pickle() {
    let mut st = HashMap::new();
    let vals: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    st.insert("0".to_string(), vals);
    let root = unpickle("test.pkl", &hand_built(false), &st).unwrap();
    let ck = Checkpoint::from_value(root).unwrap();
    let t = ck.tensor("w").unwrap();
    assert_eq!((t.shape.clone(), t.dtype), (vec![2, 3], DType::F32));
    assert_eq!(t.to_f64(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(ck.config.get("cutoff"), Some(&Value::Float(5.0)));
    assert_eq!(ck.config.get("flag"), Some(&Value::Bool(true)));
    assert_eq!(ck.config.get("list").unwrap().as_seq().unwrap().len(), 2);
    assert_eq!(ck.config.to_json()["7"], "int-key");
    // strided view: storage [[1,2],[3,4],[5,6]] seen transposed
    let root = unpickle("test.pkl", &hand_built(true), &st).unwrap();
    let ck = Checkpoint::from_value(root).unwrap();
    assert_eq!(
        ck.tensor("w").unwrap().to_f64(),
        vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]
    );
    // errors name what is wrong
    let e = ck.tensor_f64("w", &[3, 2]).unwrap_err().to_string();
    assert!(e.contains("\"w\"") && e.contains("shape"), "{e}");
    assert!(ck
        .tensor("missing.key")
        .unwrap_err()
        .to_string()
        .contains("missing.key"));
    let mut bad = hand_built(false);
    bad[20] = 0xfe; // corrupt an opcode position inside the first string's length → error, no panic
    assert!(unpickle("bad.pkl", &bad, &st).is_err());
    let short = &hand_built(false)[..40];
    assert!(unpickle("short.pkl", short, &st).is_err());
    let mut missing = HashMap::new();
    missing.insert("1".to_string(), vec![0u8; 24]);
    assert!(unpickle("t.pkl", &hand_built(false), &missing).is_err());
    // not a zip
    assert!(Checkpoint::from_bytes(vec![0u8; 100]).is_err());
}

#[test]
fn unpickle_never_panics_on_truncation() {
    let mut st = HashMap::new();
    st.insert("0".to_string(), vec![0u8; 24]);
    let full = hand_built(false);
    for n in 0..full.len() {
        let _ = unpickle("t.pkl", &full[..n], &st);
        let mut flipped = full.clone();
        flipped[n] ^= 0x5a;
        let _ = unpickle("t.pkl", &flipped, &st);
    }
}

#[test]
fn old_checkpoint_convolution_is_resorted() {
    let Some(path) = checkpoint_path() else {
        return;
    };
    let ck = Checkpoint::load(&path).unwrap();
    assert_eq!(ck.config_field("version").unwrap().as_str(), Some("0.9.1"));
    let m = equikern_model::SevenNet::from_checkpoint(&ck, Default::default()).unwrap();
    let raw = ck
        .tensor("1_convolution.weight_nn.layer2.weight")
        .unwrap()
        .to_f64();
    let used = &m.layers[1].weight_nn.layers[2].2;
    assert_eq!(raw.len(), used.len());
    let same = raw.iter().zip(used).filter(|(a, b)| a == b).count();
    let negated = raw
        .iter()
        .zip(used)
        .filter(|(a, b)| **a == -**b && **a != 0.0)
        .count();
    println!(
        "layer 1 radial weights: {same} in place of {}, {negated} negated in place",
        raw.len()
    );
    assert!(same < raw.len(), "old instruction order must be re-sorted");
}
