//! The spec's JSON form (see the module docs of [`crate::spec`]) and the problem-suite loader.

use super::{
    ConnectionMode, Instruction, IrrepNormalization, PathNormalization, SpecError, TpSpec,
};
use crate::irreps::Irreps;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Wire form. Instructions stay raw JSON so errors can name the instruction index.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    irreps_in1: String,
    irreps_in2: String,
    irreps_out: String,
    instructions: Vec<Value>,
    #[serde(default)]
    shared_weights: bool,
    #[serde(default = "default_irrep_norm")]
    irrep_normalization: String,
    #[serde(default = "default_path_norm")]
    path_normalization: String,
    /// Any JSON number; must equal the instructions' weight count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weight_numel: Option<serde_json::Number>,
}

fn default_irrep_norm() -> String {
    "component".into()
}
fn default_path_norm() -> String {
    "element".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteJson {
    #[serde(default)]
    #[allow(dead_code)] // documentation only
    description: Option<String>,
    problems: Vec<SpecJson>,
}

fn field_err(field: &str, why: impl Into<String>) -> SpecError {
    SpecError::Field {
        field: field.into(),
        why: why.into(),
    }
}

fn parse_instruction(index: usize, v: &Value) -> Result<Instruction, SpecError> {
    let err = |why: String| SpecError::Instruction {
        index,
        instruction: v.to_string(),
        why,
    };
    let a = v.as_array().ok_or_else(|| {
        err("expected an array [i_in1, i_in2, i_out, mode, has_weight(, path_weight)]".into())
    })?;
    if a.len() != 5 && a.len() != 6 {
        return Err(err(format!("expected 5 or 6 entries, got {}", a.len())));
    }
    let idx = |k: usize, name: &str| -> Result<usize, SpecError> {
        a[k].as_u64()
            .and_then(|i| usize::try_from(i).ok())
            .ok_or_else(|| err(format!("{name} must be a non-negative integer")))
    };
    let mode_str = a[3]
        .as_str()
        .ok_or_else(|| err("mode must be a string".into()))?;
    let mode = ConnectionMode::parse(mode_str).ok_or_else(|| {
        err(format!(
            "unknown connection mode {mode_str:?} (expected one of uvw uvu uvv uuw uuu uvuv uvu<v u<vw)"
        ))
    })?;
    let has_weight = a[4]
        .as_bool()
        .ok_or_else(|| err("has_weight must be true or false".into()))?;
    let path_weight = match a.get(5) {
        None => 1.0,
        Some(p) => p
            .as_f64()
            .ok_or_else(|| err("path_weight must be a number".into()))?,
    };
    Ok(Instruction {
        i_in1: idx(0, "i_in1")?,
        i_in2: idx(1, "i_in2")?,
        i_out: idx(2, "i_out")?,
        mode,
        has_weight,
        path_weight,
    })
}

impl TryFrom<SpecJson> for TpSpec {
    type Error = SpecError;
    fn try_from(j: SpecJson) -> Result<TpSpec, SpecError> {
        let irreps =
            |s: &str, field: &str| Irreps::parse(s).map_err(|e| field_err(field, e.to_string()));
        let spec = TpSpec {
            irreps_in1: irreps(&j.irreps_in1, "irreps_in1")?,
            irreps_in2: irreps(&j.irreps_in2, "irreps_in2")?,
            irreps_out: irreps(&j.irreps_out, "irreps_out")?,
            instructions: j
                .instructions
                .iter()
                .enumerate()
                .map(|(k, v)| parse_instruction(k, v))
                .collect::<Result<_, _>>()?,
            shared_weights: j.shared_weights,
            irrep_normalization: IrrepNormalization::parse(&j.irrep_normalization).ok_or_else(
                || {
                    field_err(
                        "irrep_normalization",
                        format!(
                            "{:?} is not one of \"component\", \"norm\", \"none\"",
                            j.irrep_normalization
                        ),
                    )
                },
            )?,
            path_normalization: PathNormalization::parse(&j.path_normalization).ok_or_else(
                || {
                    field_err(
                        "path_normalization",
                        format!(
                            "{:?} is not one of \"element\", \"path\", \"none\"",
                            j.path_normalization
                        ),
                    )
                },
            )?,
        };
        if let Some(given) = j.weight_numel {
            let actual = spec.weight_numel()?;
            if given.as_f64() != Some(actual as f64) {
                return Err(field_err(
                    "weight_numel",
                    format!("given {given} but the instructions have {actual} weights"),
                ));
            }
        }
        Ok(spec)
    }
}

impl From<&TpSpec> for SpecJson {
    fn from(s: &TpSpec) -> SpecJson {
        SpecJson {
            label: None,
            irreps_in1: s.irreps_in1.to_string(),
            irreps_in2: s.irreps_in2.to_string(),
            irreps_out: s.irreps_out.to_string(),
            instructions: s
                .instructions
                .iter()
                .map(|i| {
                    serde_json::json!([
                        i.i_in1,
                        i.i_in2,
                        i.i_out,
                        i.mode.as_str(),
                        i.has_weight,
                        i.path_weight
                    ])
                })
                .collect(),
            shared_weights: s.shared_weights,
            irrep_normalization: s.irrep_normalization.as_str().into(),
            path_normalization: s.path_normalization.as_str().into(),
            weight_numel: None,
        }
    }
}

impl TpSpec {
    /// Parses the JSON form (unknown fields rejected; `weight_numel`, if present, checked).
    pub fn from_json(s: &str) -> Result<TpSpec, SpecError> {
        let j: SpecJson = serde_json::from_str(s).map_err(|e| SpecError::Json(e.to_string()))?;
        TpSpec::try_from(j)
    }

    /// The canonical JSON form (all fields explicit, e3nn `repr` irreps strings).
    pub fn to_json(&self) -> String {
        // Serialising plain strings, numbers and bools cannot fail.
        serde_json::to_string(&SpecJson::from(self)).unwrap_or_default()
    }

    /// As [`TpSpec::to_json`] with a `label` and the `weight_numel` (when it is computable).
    pub fn to_json_labeled(&self, label: &str) -> String {
        let mut j = SpecJson::from(self);
        j.label = Some(label.to_string());
        j.weight_numel = self.weight_numel().ok().map(|n| (n as u64).into());
        serde_json::to_string(&j).unwrap_or_default()
    }
}

impl Serialize for TpSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SpecJson::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for TpSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        TpSpec::try_from(SpecJson::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Loads `{"description": ..., "problems": [{"label": ..., <spec fields>, "weight_numel": ...}]}`.
/// Problems without a label are named `problem<i>`. Errors name the problem.
pub fn load_suite(s: &str) -> Result<Vec<(String, TpSpec)>, SpecError> {
    let suite: SuiteJson = serde_json::from_str(s).map_err(|e| SpecError::Json(e.to_string()))?;
    suite
        .problems
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let label = p.label.clone().unwrap_or_else(|| format!("problem{i}"));
            let spec = TpSpec::try_from(p)
                .map_err(|e| field_err(&format!("problems[{i}] ({label})"), e.to_string()))?;
            Ok((label, spec))
        })
        .collect()
}
