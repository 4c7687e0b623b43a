//! A scenario's dataset as one keyspace: generated users, fixture files
//! (relative to the scenario file), inline keys in the fixture format, and
//! bulk legacy arrays made on the fly. Pure apart from reading fixtures.

use std::path::{Path, PathBuf};

use keyshift_engine::keys::{LegacyPositionsKey, OrderPlacedKey, DEFAULT_EXCHANGES};
use serde_json::{json, Value};

use super::model::{MigrationName, Scenario, ScenarioError};
use crate::seed::{self, generate, load_fixture_file, parse_fixture, Generated, Keyspace};

pub struct Dataset {
    pub keyspace: Keyspace,
    pub generated: Option<Generated>,
    pub seed: Option<u64>,
}

impl Dataset {
    /// Legacy keys of `migration` in the dataset: as many as the journal
    /// holds when a run has settled every one (progress fractions are of
    /// this).
    pub fn legacy_key_names(&self, migration: MigrationName) -> Vec<String> {
        self.keyspace
            .entries
            .iter()
            .filter(|e| match migration {
                MigrationName::GridPositions => {
                    LegacyPositionsKey::parse(&e.key, &DEFAULT_EXCHANGES).is_some()
                }
                MigrationName::OrderPlaced => {
                    OrderPlacedKey::parse(&e.key, &DEFAULT_EXCHANGES).is_some()
                }
            })
            .map(|e| e.key.clone())
            .collect()
    }
}

/// Builds the keyspace a scenario seeds; every key is defined once.
pub fn build(s: &Scenario) -> Result<Dataset, ScenarioError> {
    let invalid = |field: &str, message: String| ScenarioError::Invalid {
        file: s.file.clone(),
        field: field.to_owned(),
        message,
    };
    let mut keyspace = Keyspace::new();
    let generator = s.generator()?;
    let generated = generator.as_ref().map(generate);
    if let Some(g) = &generated {
        keyspace.extend(g.keyspace.clone());
    }
    let base = s.file.parent().unwrap_or(Path::new("."));
    for (i, f) in s.dataset.fixtures.iter().enumerate() {
        let path: PathBuf = base.join(f);
        let ks = load_fixture_file(&path)
            .map_err(|e| invalid(&format!("dataset.fixtures[{i}]"), e.to_string()))?;
        keyspace.extend(ks);
    }
    if !s.dataset.keys.is_empty() {
        let keys = serde_json::to_value(&s.dataset.keys)
            .map_err(|e| invalid("dataset.keys", e.to_string()))?;
        let label = PathBuf::from(format!("{} (dataset.keys)", s.file.display()));
        let ks = parse_fixture(&label, &json!({ "keys": keys }).to_string())
            .map_err(|e| invalid("dataset.keys", e.to_string()))?;
        keyspace.extend(ks);
    }
    for b in &s.dataset.bulk {
        keyspace.push(seed::KeyEntry::new(
            b.key.clone(),
            seed::KeyValue::String(bulk_array(b.positions).into_bytes()),
        ));
    }
    seed::validate(&keyspace).map_err(|e| invalid("dataset", e.to_string()))?;
    Ok(Dataset {
        keyspace,
        generated,
        seed: generator.map(|g| g.seed),
    })
}

/// A legacy array of `n` open positions on `n` distinct instruments,
/// alternating long and short (long/short mode: a short has a positive pos).
pub fn bulk_array(n: usize) -> String {
    let positions: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "instType": "SWAP",
                "instId": format!("C{i:05}-USDT-SWAP"),
                "posSide": if i % 2 == 0 { "long" } else { "short" },
                "pos": format!("{}", 1 + i % 7),
                "avgPx": format!("{}.5", 100 + i),
                "lever": "10",
            })
        })
        .collect();
    Value::Array(positions).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(extra: &str) -> Scenario {
        let text = format!("name = \"t\"\nreplays = \"r\"\n[[run]]\nexit = 0\n[dataset]\n{extra}");
        Scenario::parse(Path::new("/nonexistent/x.toml"), &text).unwrap()
    }

    #[test]
    fn bulk_arrays_hold_distinct_positions() {
        let v: Vec<Value> = serde_json::from_str(&bulk_array(10_000)).unwrap();
        assert_eq!(v.len(), 10_000);
        let ids: std::collections::HashSet<&str> =
            v.iter().map(|p| p["instId"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 10_000);
        assert_eq!(v[1]["posSide"], "short");
    }

    #[test]
    fn inline_keys_use_the_fixture_format_and_count_as_legacy() {
        let s = scenario(
            "[[dataset.keys]]\nkey = \"okx:positions:u*1\"\ntype = \"string\"\njson = [{ instId = \"BTC-USDT-SWAP\", pos = \"1\" }]\n[[dataset.keys]]\nkey = \"okx:user:u1\"\ntype = \"hash\"\nvalue = { a = \"1\" }\n[[dataset.bulk]]\nkey = \"okx:positions:whale\"\npositions = 3\n",
        );
        let d = build(&s).unwrap();
        assert_eq!(d.keyspace.len(), 3);
        assert_eq!(d.legacy_key_names(MigrationName::GridPositions).len(), 2);
        assert!(d.legacy_key_names(MigrationName::OrderPlaced).is_empty());
        let seed::KeyValue::String(v) = &d.keyspace.get("okx:positions:u*1").unwrap().value else {
            panic!("a string")
        };
        let v: Value = serde_json::from_slice(v).unwrap();
        assert_eq!(v[0]["instId"], "BTC-USDT-SWAP");
    }

    #[test]
    fn a_bad_inline_key_names_the_field() {
        let s = scenario("[[dataset.keys]]\nkey = \"k\"\ntype = \"blob\"\nvalue = \"x\"\n");
        let e = build(&s).err().unwrap().to_string();
        assert!(e.contains("dataset.keys") && e.contains("keys[0]"), "{e}");
    }

    #[test]
    fn a_key_defined_twice_is_refused() {
        let s = scenario(
            "[[dataset.keys]]\nkey = \"okx:positions:w\"\ntype = \"string\"\nvalue = \"[]\"\n[[dataset.bulk]]\nkey = \"okx:positions:w\"\npositions = 1\n",
        );
        let e = build(&s).err().unwrap().to_string();
        assert!(
            e.contains("okx:positions:w") && e.contains("more than once"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_fixture_names_its_index() {
        let s = scenario("fixtures = [\"nope.json\"]\n");
        let e = build(&s).err().unwrap().to_string();
        assert!(
            e.contains("dataset.fixtures[0]") && e.contains("nope.json"),
            "{e}"
        );
    }
}
