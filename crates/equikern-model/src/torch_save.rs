//! A small writer of `torch.save`'s zip layout (`archive/data.pkl` + `archive/data/<key>`
//! storages, stored uncompressed, protocol-2 pickle): a dict with `model_state_dict` (an
//! `OrderedDict` of contiguous f64 tensors) and `config` (plain values). It exists so tests
//! and tools can make SevenNet-format checkpoints with random weights
//! ([`random_sevennet_checkpoint`]) that [`crate::Checkpoint::load`] reads like real ones —
//! e.g. to drive `equikern eval` on machines without the real checkpoint.

use crate::checkpoint::Value;
use crate::error::{ModelError, Result};
use crate::sevennet::{Options, SevenNet};

/// A named tensor to save: `(key, shape, row-major data)`.
pub type NamedTensor = (String, Vec<usize>, Vec<f64>);

struct Pickler(Vec<u8>);

impl Pickler {
    fn op(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, i: i64) {
        if let Ok(v) = i32::try_from(i) {
            self.0.push(b'J');
            self.0.extend_from_slice(&v.to_le_bytes());
        } else {
            self.op(&[0x8a, 8]);
            self.0.extend_from_slice(&i.to_le_bytes());
        }
    }
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn value(&mut self, v: &Value) -> Result<()> {
        match v {
            Value::None => self.op(b"N"),
            Value::Bool(true) => self.op(&[0x88]),
            Value::Bool(false) => self.op(&[0x89]),
            Value::Int(i) => self.int(*i),
            Value::Float(x) => {
                self.op(b"G");
                self.0.extend_from_slice(&x.to_be_bytes());
            }
            Value::Str(s) => self.str(s),
            Value::List(items) => {
                self.op(b"](");
                for x in items {
                    self.value(x)?;
                }
                self.op(b"e");
            }
            Value::Tuple(items) => {
                self.op(b"(");
                for x in items {
                    self.value(x)?;
                }
                self.op(b"t");
            }
            Value::Dict(items) => {
                self.op(b"}(");
                for (k, x) in items {
                    self.value(k)?;
                    self.value(x)?;
                }
                self.op(b"u");
            }
            other => {
                return Err(ModelError::input(
                    "config",
                    format!("cannot save {other:?}: only None/bool/int/float/str/list/tuple/dict"),
                ))
            }
        }
        Ok(())
    }
    fn tensor(&mut self, storage_key: &str, shape: &[usize]) {
        let numel: usize = shape.iter().product();
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(b"((");
        self.str("storage");
        self.global("torch", "DoubleStorage");
        self.str(storage_key);
        self.str("cpu");
        self.int(numel as i64);
        self.op(b"tQ"); // persistent id
        self.int(0); // storage offset
        self.op(b"(");
        for &d in shape {
            self.int(d as i64);
        }
        self.op(b"t(");
        let mut stride = 1;
        let mut strides = vec![0; shape.len()];
        for k in (0..shape.len()).rev() {
            strides[k] = stride;
            stride *= shape[k];
        }
        for s in strides {
            self.int(s as i64);
        }
        self.op(b"t");
        self.op(&[0x89]); // requires_grad = False
        self.global("collections", "OrderedDict");
        self.op(b")R"); // backward hooks
        self.op(b"tR");
    }
}

fn zip_stored(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let off = out.len() as u32;
        let crc = crc32fast::hash(data);
        let (n, len) = (name.len() as u16, data.len() as u32);
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, method, time, date
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // made by, needed, flags, method, time, date
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&len.to_le_bytes());
        central.extend_from_slice(&len.to_le_bytes());
        central.extend_from_slice(&n.to_le_bytes());
        central.extend_from_slice(&[0; 12]); // extra, comment, disk, internal attrs, external attrs
        central.extend_from_slice(&off.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_off = out.len() as u32;
    let cd_len = central.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    let count = entries.len() as u16;
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&cd_len.to_le_bytes());
    out.extend_from_slice(&cd_off.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// The bytes of a checkpoint `{"model_state_dict": OrderedDict(tensors), "config": config}`.
pub fn checkpoint_bytes(state_dict: &[NamedTensor], config: &Value) -> Result<Vec<u8>> {
    let mut p = Pickler(vec![0x80, 2]);
    p.op(b"}(");
    p.str("model_state_dict");
    p.global("collections", "OrderedDict");
    p.op(b")R(");
    let mut entries = Vec::new();
    for (k, (name, shape, data)) in state_dict.iter().enumerate() {
        if shape.iter().product::<usize>() != data.len() {
            return Err(ModelError::input(
                format!("state_dict[{name}]"),
                format!("shape {shape:?} does not match {} values", data.len()),
            ));
        }
        p.str(name);
        p.tensor(&k.to_string(), shape);
        entries.push((
            format!("archive/data/{k}"),
            data.iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>(),
        ));
    }
    p.op(b"u");
    p.str("config");
    p.value(config)?;
    p.op(b"u.");
    let mut all = vec![
        ("archive/data.pkl".to_string(), p.0),
        ("archive/byteorder".to_string(), b"little".to_vec()),
    ];
    all.extend(entries);
    all.push(("archive/version".to_string(), b"3\n".to_vec()));
    Ok(zip_stored(&all))
}

/// A SevenNet checkpoint of the architecture `config` describes, with the pseudo-random
/// weights of [`SevenNet::random`]'s kind (uniform in [−0.5, 0.5); denominators in [2, 4),
/// scales in [0.5, 1.5), Bessel frequencies near nπ/r_c).
pub fn random_sevennet_checkpoint(config: &Value, seed: u64) -> Result<Vec<u8>> {
    let mut state = seed ^ 0x5851_f42d_4c95_7f2d;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 11) as f64) / ((1u64 << 53) as f64) * 2.0 - 1.0
    };
    let cutoff = config.get("cutoff").and_then(Value::as_f64).unwrap_or(5.0);
    let mut tensors: Vec<NamedTensor> = Vec::new();
    SevenNet::build(config, Options::default(), &mut |key, shape| {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|i| {
                let u = next();
                if key.ends_with("denominator") {
                    3.0 + u
                } else if key.ends_with(".scale") {
                    1.0 + 0.5 * u
                } else if key.ends_with("coeffs") {
                    (i + 1) as f64 * std::f64::consts::PI / cutoff * (1.0 + 0.05 * u)
                } else {
                    0.5 * u
                }
            })
            .collect();
        if !tensors.iter().any(|t| t.0 == key) {
            tensors.push((key.to_string(), shape.to_vec(), v.clone()));
        }
        Ok(v)
    })?;
    checkpoint_bytes(&tensors, config)
}
