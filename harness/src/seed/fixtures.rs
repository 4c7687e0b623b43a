//! JSON keyspace fixtures (format: fixtures/README.md).
//!
//! ```json
//! {"description": "...", "keys": [
//!   {"key": "okx:positions:fx-1", "type": "string", "json": [{"instId": "BTC-USDT-SWAP"}]},
//!   {"key": "okx:user:fx-1", "type": "hash", "value": {"name": "A"}, "ttl_ms": 300000}
//! ]}
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::model::{KeyEntry, KeyValue, Keyspace};
use super::SeedError;

/// The files of `dir` named `*.{extension}`, sorted by file name (data
/// directories: fixtures, scenarios).
pub fn files_with_extension(dir: &Path, extension: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut files = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<PathBuf>>>()?;
    files.retain(|p| p.is_file() && p.extension().is_some_and(|x| x == extension));
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// Reads and parses one fixture file.
pub fn load_fixture_file(path: impl AsRef<Path>) -> Result<Keyspace, SeedError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| SeedError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_fixture(path, &text)
}

/// Loads every `*.json` file of `dir`, sorted by file name, into one
/// keyspace. A key defined in two files is an error naming both.
pub fn load_fixture_dir(dir: impl AsRef<Path>) -> Result<Keyspace, SeedError> {
    let dir = dir.as_ref();
    let io = |source| SeedError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let files = files_with_extension(dir, "json").map_err(io)?;
    let mut owner: HashMap<String, PathBuf> = HashMap::new();
    let mut all = Keyspace::new();
    for file in files {
        let ks = load_fixture_file(&file)?;
        for e in &ks.entries {
            if let Some(first) = owner.insert(e.key.clone(), file.clone()) {
                return Err(SeedError::DuplicateFixtureKey {
                    key: e.key.clone(),
                    first,
                    second: file,
                });
            }
        }
        all.extend(ks);
    }
    Ok(all)
}

/// Parses fixture text; `file` only names the source in errors.
pub fn parse_fixture(file: &Path, text: &str) -> Result<Keyspace, SeedError> {
    let err = |index: Option<usize>, message: String| SeedError::Fixture {
        file: file.to_path_buf(),
        index,
        message,
    };
    let doc: Value =
        serde_json::from_str(text).map_err(|e| err(None, format!("not valid JSON: {e}")))?;
    let Value::Object(top) = doc else {
        return Err(err(None, "the top level must be an object".into()));
    };
    if let Some(k) = top
        .keys()
        .find(|k| !["description", "keys"].contains(&k.as_str()))
    {
        return Err(err(None, format!("unknown top-level field {k:?}")));
    }
    match top.get("description") {
        None | Some(Value::String(_)) => {}
        Some(_) => return Err(err(None, "\"description\" must be a string".into())),
    }
    let Some(Value::Array(keys)) = top.get("keys") else {
        return Err(err(None, "\"keys\" must be an array".into()));
    };
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut ks = Keyspace::new();
    for (i, item) in keys.iter().enumerate() {
        let entry = parse_entry(item).map_err(|m| err(Some(i), m))?;
        if let Some(j) = seen.insert(item["key"].as_str().unwrap_or_default(), i) {
            return Err(err(
                Some(i),
                format!("key {:?} already defined at keys[{j}]", entry.key),
            ));
        }
        ks.push(entry);
    }
    Ok(ks)
}

fn parse_entry(item: &Value) -> Result<KeyEntry, String> {
    let Value::Object(obj) = item else {
        return Err("an entry must be an object".into());
    };
    const FIELDS: [&str; 6] = ["key", "type", "value", "json", "hex", "ttl_ms"];
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!("unknown field {k:?}"));
    }
    let key = match obj.get("key") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        _ => return Err("\"key\" must be a non-empty string".into()),
    };
    let at = |m: String| format!("{key:?}: {m}");
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        _ => {
            return Err(at(
                "\"type\" must be one of string, hash, list, set, zset".into()
            ))
        }
    };
    let ttl_ms = match obj.get("ttl_ms") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(t) if t > 0 => Some(t),
            _ => return Err(at("\"ttl_ms\" must be a positive integer".into())),
        },
    };
    let value = if kind == "string" {
        parse_string(obj).map_err(at)?
    } else {
        if obj.contains_key("json") || obj.contains_key("hex") {
            return Err(at(format!("\"json\"/\"hex\" are for strings, not {kind}")));
        }
        let v = obj
            .get("value")
            .ok_or_else(|| at("\"value\" is missing".into()))?;
        parse_collection(kind, v).map_err(at)?
    };
    if value.is_empty_collection() {
        return Err(at(format!("an empty {kind} cannot exist in Redis")));
    }
    Ok(KeyEntry { key, value, ttl_ms })
}

fn parse_string(obj: &Map<String, Value>) -> Result<KeyValue, String> {
    let given: Vec<&str> = ["value", "json", "hex"]
        .into_iter()
        .filter(|f| obj.contains_key(*f))
        .collect();
    if given.len() != 1 {
        return Err("a string takes exactly one of \"value\", \"json\", \"hex\"".into());
    }
    let bytes = match given[0] {
        "value" => match &obj["value"] {
            Value::String(s) => s.clone().into_bytes(),
            _ => {
                return Err(
                    "\"value\" of a string must be a JSON string (use \"json\" for JSON)".into(),
                )
            }
        },
        // serde_json's compact print; preserve_order keeps object keys in order.
        "json" => serde_json::to_vec(&obj["json"]).map_err(|e| e.to_string())?,
        _ => match &obj["hex"] {
            Value::String(h) => decode_hex(h)?,
            _ => return Err("\"hex\" must be a string of hex digits".into()),
        },
    };
    Ok(KeyValue::String(bytes))
}

fn decode_hex(h: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = h.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err("\"hex\" must have an even number of digits".into());
    }
    digits
        .chunks(2)
        .map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .ok_or_else(|| {
                    format!(
                        "\"hex\": {:?} is not a hex byte",
                        String::from_utf8_lossy(p)
                    )
                })
        })
        .collect()
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, String> {
    let Value::Array(items) = v else {
        return Err(format!("\"value\" of a {what} must be an array of strings"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, x)| match x {
            Value::String(s) => Ok(s.clone()),
            _ => Err(format!("value[{i}] of a {what} must be a string")),
        })
        .collect()
}

fn parse_collection(kind: &str, v: &Value) -> Result<KeyValue, String> {
    Ok(match kind {
        "hash" => {
            let Value::Object(m) = v else {
                return Err("\"value\" of a hash must be an object of field -> string".into());
            };
            let mut fields = Vec::with_capacity(m.len());
            for (f, x) in m {
                match x {
                    Value::String(s) => fields.push((f.clone(), s.clone())),
                    _ => return Err(format!("hash field {f:?} must be a string")),
                }
            }
            KeyValue::Hash(fields)
        }
        "list" => KeyValue::List(strings(v, "list")?),
        "set" => KeyValue::Set(strings(v, "set")?),
        "zset" => {
            let Value::Array(items) = v else {
                return Err("\"value\" of a zset must be an array of [member, score]".into());
            };
            let mut members = Vec::with_capacity(items.len());
            for (i, x) in items.iter().enumerate() {
                let pair = match x {
                    Value::Array(p) if p.len() == 2 => (p[0].as_str(), score(&p[1])),
                    _ => (None, None),
                };
                match pair {
                    (Some(m), Some(s)) => members.push((m.to_owned(), s)),
                    _ => {
                        return Err(format!(
                            "value[{i}] of a zset must be [member string, score number or \"inf\"/\"-inf\"]"
                        ))
                    }
                }
            }
            KeyValue::ZSet(members)
        }
        other => {
            return Err(format!(
                "unknown type {other:?} (string, hash, list, set, zset)"
            ))
        }
    })
}

fn score(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "inf" | "+inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Keyspace, SeedError> {
        parse_fixture(Path::new("t.json"), text)
    }

    fn msg(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_every_type() {
        let ks = parse(
            r#"{"description": "d", "keys": [
              {"key": "s", "type": "string", "value": "not json {"},
              {"key": "j", "type": "string", "json": [{"instId": "X", "b": 1, "a": [], "f": 3.5}], "ttl_ms": 5},
              {"key": "x", "type": "string", "hex": "ff00 41"},
              {"key": "h", "type": "hash", "value": {"z": "1", "a": "2"}},
              {"key": "l", "type": "list", "value": ["b", "a", "b"]},
              {"key": "t", "type": "set", "value": ["a"]},
              {"key": "z", "type": "zset", "value": [["m", 1.5], ["n", "-inf"]]}
            ]}"#,
        )
        .unwrap();
        assert_eq!(ks.len(), 7);
        assert_eq!(
            ks.entries[0].value,
            KeyValue::String(b"not json {".to_vec())
        );
        assert_eq!(
            ks.entries[1].value,
            KeyValue::String(br#"[{"instId":"X","b":1,"a":[],"f":3.5}]"#.to_vec())
        );
        assert_eq!(ks.entries[1].ttl_ms, Some(5));
        assert_eq!(ks.entries[2].value, KeyValue::String(vec![0xff, 0, 0x41]));
        assert_eq!(
            ks.entries[3].value,
            KeyValue::Hash(vec![("z".into(), "1".into()), ("a".into(), "2".into())])
        );
        assert_eq!(
            ks.entries[6].value,
            KeyValue::ZSet(vec![("m".into(), 1.5), ("n".into(), f64::NEG_INFINITY)])
        );
    }

    #[test]
    fn json_strings_are_serde_json_compact_print() {
        let ks = parse(r#"{"keys": [{"key": "n", "type": "string", "json": [1e3, 2.5e-5, 1.50, -0, "é\u0041"]}]}"#)
            .unwrap();
        assert_eq!(
            ks.entries[0].value,
            KeyValue::String("[1000.0,0.000025,1.5,-0.0,\"éA\"]".as_bytes().to_vec())
        );
    }

    #[test]
    fn errors_name_file_and_entry() {
        let m = msg(
            r#"{"keys": [{"key": "a", "type": "string", "value": "x"}, {"key": "b", "type": "hash", "value": {"f": 1}}]}"#,
        );
        assert!(m.starts_with("t.json: keys[1]:"), "{m}");
        assert!(m.contains("\"f\""), "{m}");
        let m = msg(
            r#"{"keys": [{"key": "a", "type": "string", "value": "x"}, {"key": "a", "type": "string", "value": "y"}]}"#,
        );
        assert!(m.contains("keys[1]") && m.contains("keys[0]"), "{m}");
        assert!(msg("{").starts_with("t.json: not valid JSON"));
        assert!(msg(r#"{"keys": [], "extra": 1}"#).contains("unknown top-level field"));
    }

    #[test]
    fn rejects_bad_entries() {
        let bad = [
            r#"{"key": "a", "type": "string"}"#,
            r#"{"key": "a", "type": "string", "value": "x", "json": 1}"#,
            r#"{"key": "a", "type": "string", "value": 1}"#,
            r#"{"key": "a", "type": "string", "hex": "abc"}"#,
            r#"{"key": "a", "type": "stream", "value": []}"#,
            r#"{"key": "a", "type": "list", "value": []}"#,
            r#"{"key": "a", "type": "hash", "value": {}}"#,
            r#"{"key": "a", "type": "set", "value": [1]}"#,
            r#"{"key": "a", "type": "zset", "value": [["m"]]}"#,
            r#"{"key": "a", "type": "list", "json": ["x"]}"#,
            r#"{"key": "a", "type": "string", "value": "x", "ttl_ms": 0}"#,
            r#"{"key": "a", "type": "string", "value": "x", "ttl_ms": -5}"#,
            r#"{"key": "a", "type": "string", "value": "x", "ttl": 5}"#,
            r#"{"key": "", "type": "string", "value": "x"}"#,
            r#"["key"]"#,
        ];
        for entry in bad {
            let m = msg(&format!(r#"{{"keys": [{entry}]}}"#));
            assert!(m.starts_with("t.json: keys[0]:"), "{entry}: {m}");
        }
    }

    #[test]
    fn dir_rejects_a_key_in_two_files() {
        let dir = tempfile::tempdir().unwrap();
        let one = r#"{"keys": [{"key": "k", "type": "string", "value": "1"}]}"#;
        std::fs::write(dir.path().join("b.json"), one).unwrap();
        std::fs::write(dir.path().join("a.json"), one).unwrap();
        std::fs::write(dir.path().join("README.md"), "not a fixture").unwrap();
        let m = load_fixture_dir(dir.path()).unwrap_err().to_string();
        assert!(m.contains("a.json") && m.contains("b.json"), "{m}");
        assert!(m.find("a.json") < m.find("b.json"), "sorted by name: {m}");
    }
}
