//! The keyspace schema: the key patterns of DESIGN §1 as data, built in
//! (`builtin.toml`) or loaded from a TOML file. Pure code apart from
//! [`Schema::load`].
//!
//! - `pattern`: templates, segments and placeholder constraints.
//! - `parse`: the file format and its checks.
//! - [`Schema::classify`] names the one pattern a key matches;
//!   [`Schema::ambiguities`] proves no key can match two (a schema where
//!   one could does not load).

mod parse;
pub mod pattern;

#[cfg(test)]
mod keys_agreement;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use pattern::Segment;

/// The schema of DESIGN §1, the default of every command that takes
/// `--schema FILE`.
pub const BUILTIN_TOML: &str = include_str!("builtin.toml");

/// What a pattern's keys are to the migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The new layout; never deleted by a cleanup.
    Standard,
    /// The old layout; validate fails while any remain.
    Legacy,
    /// A copy kept by a migration; never a legacy key.
    Backup,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Standard => "standard",
            Kind::Legacy => "legacy",
            Kind::Backup => "backup",
        })
    }
}

/// The Redis type a pattern's keys hold, as `TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisType {
    String,
    Hash,
    List,
    Set,
    Zset,
    /// Not checked.
    Any,
}

impl RedisType {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisType::String => "string",
            RedisType::Hash => "hash",
            RedisType::List => "list",
            RedisType::Set => "set",
            RedisType::Zset => "zset",
            RedisType::Any => "any",
        }
    }

    /// Whether a `TYPE` reply fits (`none`, a vanished key, never does).
    pub fn admits(self, actual: &str) -> bool {
        actual != "none" && (self == RedisType::Any || self.as_str() == actual)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub id: String,
    /// Groups a legacy pattern with its standard successors and backups.
    pub family: String,
    pub kind: Kind,
    pub template: String,
    pub redis_type: RedisType,
    /// `keyshift cleanup-legacy` may delete these keys (legacy only).
    pub cleanup: bool,
    pub description: Option<String>,
    segments: Vec<Segment>,
}

impl Pattern {
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The placeholder values of `parts` (a key split at `:`), if they match.
    fn captures<'s, 'k>(&'s self, parts: &[&'k str]) -> Option<Vec<(&'s str, &'k str)>> {
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut captures = Vec::new();
        for (seg, part) in self.segments.iter().zip(parts) {
            if !seg.accepts(part) {
                return None;
            }
            if let Segment::Placeholder { name, .. } = seg {
                captures.push((name.as_str(), *part));
            }
        }
        Some(captures)
    }
}

/// The one pattern a key matches, and its placeholder values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match<'s, 'k> {
    /// Position of the pattern in [`Schema::patterns`].
    pub index: usize,
    pub pattern_id: &'s str,
    pub kind: Kind,
    pub captures: Vec<(&'s str, &'k str)>,
}

impl<'k> Match<'_, 'k> {
    pub fn get(&self, placeholder: &str) -> Option<&'k str> {
        self.captures
            .iter()
            .find(|(n, _)| *n == placeholder)
            .map(|(_, v)| *v)
    }
}

/// Two patterns one key can match, and such a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ambiguity {
    pub first: String,
    pub second: String,
    pub example: String,
}

impl fmt::Display for Ambiguity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} and {} both match {:?}",
            self.first, self.second, self.example
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Not TOML, or not this format; toml's message names line and column.
    #[error("{0}")]
    Toml(String),
    #[error("line {line}: {field}: {message}")]
    Invalid {
        line: usize,
        field: String,
        message: String,
    },
    #[error("ambiguous schema, a key could match two patterns: {}. Make their literals or placeholder constraints disjoint", list(.0))]
    Ambiguous(Vec<Ambiguity>),
    #[error("cannot read schema file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("schema file {}: {source}", path.display())]
    InFile {
        path: PathBuf,
        source: Box<SchemaError>,
    },
}

fn list(a: &[Ambiguity]) -> String {
    a.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, Clone)]
pub struct Schema {
    exchanges: Vec<String>,
    patterns: Vec<Pattern>,
    /// Segment count -> patterns with that many segments.
    by_len: HashMap<usize, Vec<usize>>,
}

impl Schema {
    /// The schema of DESIGN §1.
    pub fn builtin() -> Schema {
        Schema::from_toml(BUILTIN_TOML).expect("the built-in schema is valid (tested)")
    }

    /// Parses and checks a schema; an ambiguous one is an error listing
    /// every ambiguous pair.
    pub fn from_toml(src: &str) -> Result<Schema, SchemaError> {
        let parsed = parse::parse(src)?;
        let schema = Schema::new(parsed.exchanges, parsed.patterns);
        let ambiguities = schema.ambiguities();
        if ambiguities.is_empty() {
            Ok(schema)
        } else {
            Err(SchemaError::Ambiguous(ambiguities))
        }
    }

    /// [`Schema::from_toml`] on a file; errors name the file.
    pub fn load(path: &Path) -> Result<Schema, SchemaError> {
        let src = std::fs::read_to_string(path).map_err(|source| SchemaError::Io {
            path: path.to_owned(),
            source,
        })?;
        Schema::from_toml(&src).map_err(|e| SchemaError::InFile {
            path: path.to_owned(),
            source: Box::new(e),
        })
    }

    fn new(exchanges: Vec<String>, patterns: Vec<Pattern>) -> Schema {
        let mut by_len: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, p) in patterns.iter().enumerate() {
            by_len.entry(p.segments.len()).or_default().push(i);
        }
        Schema {
            exchanges,
            patterns,
            by_len,
        }
    }

    pub fn exchanges(&self) -> &[String] {
        &self.exchanges
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    pub fn pattern(&self, id: &str) -> Option<&Pattern> {
        self.patterns.iter().find(|p| p.id == id)
    }

    /// The pattern `key` matches, or `None` for an unknown key.
    pub fn classify<'s, 'k>(&'s self, key: &'k str) -> Option<Match<'s, 'k>> {
        let parts: Vec<&str> = key.split(':').collect();
        self.by_len.get(&parts.len())?.iter().find_map(|&i| {
            let p = &self.patterns[i];
            p.captures(&parts).map(|captures| Match {
                index: i,
                pattern_id: &p.id,
                kind: p.kind,
                captures,
            })
        })
    }

    /// Every pair of patterns some key matches both of, with such a key.
    /// Exact: placeholders fill whole segments and no constraint admits
    /// `:`, so two patterns overlap iff they have as many segments and
    /// every segment pair has a common value.
    pub fn ambiguities(&self) -> Vec<Ambiguity> {
        let mut out = Vec::new();
        for (i, a) in self.patterns.iter().enumerate() {
            for b in &self.patterns[i + 1..] {
                if a.segments.len() != b.segments.len() {
                    continue;
                }
                let example: Option<Vec<String>> = a
                    .segments
                    .iter()
                    .zip(&b.segments)
                    .map(|(x, y)| x.meet(y))
                    .collect();
                if let Some(parts) = example {
                    out.push(Ambiguity {
                        first: a.id.clone(),
                        second: b.id.clone(),
                        example: parts.join(":"),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_of(key: &str) -> Option<String> {
        Schema::builtin()
            .classify(key)
            .map(|m| m.pattern_id.to_owned())
    }

    #[test]
    fn builtin_schema_loads_without_ambiguities() {
        let s = Schema::builtin();
        assert_eq!(s.ambiguities(), vec![]);
        assert_eq!(s.patterns().len(), 11);
        assert_eq!(
            s.exchanges(),
            ["okx", "binance", "bitget", "upbit", "bybit"]
        );
    }

    #[test]
    fn classifies_every_key_of_design_section_1() {
        for (key, id, kind) in [
            (
                "position:42:BTC-USDT-SWAP",
                "position_cache.legacy",
                Kind::Legacy,
            ),
            (
                "user:42:position:BTC-USDT-SWAP:long",
                "position_cache.legacy_user",
                Kind::Legacy,
            ),
            (
                "position:42:okx:BTC-USDT-SWAP:short",
                "position_cache.standard",
                Kind::Standard,
            ),
            (
                "bybit:user:42:symbol:SOLUSDT:order_placed",
                "order_placed.legacy",
                Kind::Legacy,
            ),
            (
                "orders:bybit:user:42:symbol:SOLUSDT:order_placed",
                "order_placed.standard",
                Kind::Standard,
            ),
            (
                "orders:okx:user:42:symbol:SOLUSDT:order_placed_index",
                "order_placed.index",
                Kind::Standard,
            ),
            (
                "orders:okx:user:42:symbol:SOLUSDT:orders",
                "order_placed.orders",
                Kind::Standard,
            ),
            ("upbit:positions:42", "grid_positions.legacy", Kind::Legacy),
            (
                "positions:42:okx:ETH-USDT-SWAP:long",
                "grid_positions.position",
                Kind::Standard,
            ),
            (
                "positions:index:42:okx",
                "grid_positions.index",
                Kind::Standard,
            ),
            (
                "okx:positions:42:backup:20251128_010203",
                "grid_positions.backup",
                Kind::Backup,
            ),
        ] {
            let s = Schema::builtin();
            let m = s.classify(key).unwrap_or_else(|| panic!("{key} unknown"));
            assert_eq!((m.pattern_id, m.kind), (id, kind), "{key}");
        }
    }

    #[test]
    fn captures_name_each_placeholder() {
        let s = Schema::builtin();
        let m = s.classify("positions:u*1:bybit:BTC-USDT:short").unwrap();
        assert_eq!(m.get("user_id"), Some("u*1"));
        assert_eq!(m.get("exchange"), Some("bybit"));
        assert_eq!(m.get("symbol"), Some("BTC-USDT"));
        assert_eq!(m.get("side"), Some("short"));
        assert_eq!(m.get("stamp"), None);
    }

    #[test]
    fn rejects_keys_outside_the_schema() {
        for key in [
            "okx:positions:a:b",
            "kraken:positions:1",
            "okx:positions:",
            "okx:positions:1:meta",
            "okx:positions:1:backup:latest",
            "positions:1:okx:BTC:net",
            "positions:1:kraken:BTC:long",
            "position:1:okx:BTC:LONG",
            "okx:user:1",
            "session:1",
            "",
            ":",
        ] {
            assert_eq!(id_of(key), None, "{key}");
        }
    }

    #[test]
    fn backups_never_classify_as_legacy() {
        for key in [
            "okx:positions:42:backup:20250101_000000",
            "okx:positions:backup:backup:20250101_000000",
        ] {
            assert_eq!(id_of(key).as_deref(), Some("grid_positions.backup"));
        }
        // A user whose id is `backup` still has a legacy key of their own.
        assert_eq!(
            id_of("okx:positions:backup").as_deref(),
            Some("grid_positions.legacy")
        );
    }

    #[test]
    fn ambiguous_schema_is_reported_with_an_example() {
        let src = r#"
exchanges = ["okx"]
[placeholders.user_id]
kind = "id"
[placeholders.exchange]
kind = "exchange"
[placeholders.symbol]
kind = "id"
[[pattern]]
id = "index"
family = "grid"
kind = "standard"
template = "positions:index:{user_id}:{exchange}"
type = "set"
[[pattern]]
id = "position"
family = "grid"
kind = "standard"
template = "positions:{user_id}:{exchange}:{symbol}"
type = "hash"
"#;
        let Err(SchemaError::Ambiguous(found)) = Schema::from_toml(src) else {
            panic!("an ambiguous schema loaded");
        };
        assert_eq!(
            found,
            vec![Ambiguity {
                first: "index".into(),
                second: "position".into(),
                example: "positions:index:okx:okx".into(),
            }]
        );
        // The example really matches both.
        let parsed = parse::parse(src).unwrap();
        let s = Schema::new(parsed.exchanges, parsed.patterns);
        let parts: Vec<&str> = found[0].example.split(':').collect();
        assert!(s.patterns().iter().all(|p| p.captures(&parts).is_some()));
        let msg = SchemaError::Ambiguous(found).to_string();
        assert!(
            msg.contains("index and position both match \"positions:index:okx:okx\""),
            "{msg}"
        );
    }

    #[test]
    fn disjoint_constraints_are_not_ambiguous() {
        let src = r#"
exchanges = ["okx"]
[placeholders.side]
kind = "one_of"
values = ["long", "short"]
[placeholders.stamp]
kind = "shape"
shape = "2###"
[[pattern]]
id = "a"
family = "f"
kind = "standard"
template = "k:{side}"
type = "any"
[[pattern]]
id = "b"
family = "f"
kind = "backup"
template = "k:{stamp}"
type = "any"
"#;
        let s = Schema::from_toml(src).unwrap();
        assert_eq!(s.classify("k:long").unwrap().pattern_id, "a");
        assert_eq!(s.classify("k:2025").unwrap().pattern_id, "b");
        assert!(s.classify("k:net").is_none());
    }

    #[test]
    fn load_names_the_file() {
        let e = Schema::load(Path::new("/nonexistent/schema.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/schema.toml"), "{e}");
    }

    #[test]
    fn type_check() {
        assert!(RedisType::String.admits("string"));
        assert!(!RedisType::String.admits("hash"));
        assert!(RedisType::Any.admits("zset"));
        assert!(!RedisType::Any.admits("none"));
    }
}
