//! The hand-written Phase 2 parsers of `keys.rs` and the built-in schema
//! must read every key the same way: the migration finds its keys with the
//! former, validate and cleanup with the latter.

use proptest::prelude::*;

use super::Schema;
use crate::keys::{
    parse_index_key, BackupKey, LegacyPositionsKey, OrderPlacedKey, PositionHashKey,
    DEFAULT_EXCHANGES,
};

/// (pattern id, captures sorted by name) as `keys.rs` reads a key; every
/// parser that accepts it is listed, so a key two parsers claim shows up.
fn by_keys_rs(key: &str) -> Vec<(String, Vec<(String, String)>)> {
    let ex = DEFAULT_EXCHANGES;
    let mut out = Vec::new();
    let caps = |v: &[(&str, &str)]| {
        let mut v: Vec<(String, String)> = v
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        v.sort();
        v
    };
    if let Some(k) = LegacyPositionsKey::parse(key, &ex) {
        out.push((
            "grid_positions.legacy".to_owned(),
            caps(&[("exchange", &k.exchange), ("user_id", &k.user_id)]),
        ));
    }
    if let Some(b) = BackupKey::parse(key, &ex) {
        out.push((
            "grid_positions.backup".to_owned(),
            caps(&[
                ("exchange", &b.legacy.exchange),
                ("user_id", &b.legacy.user_id),
                ("stamp", &b.stamp),
            ]),
        ));
    }
    if let Some(p) = PositionHashKey::parse(key, &ex) {
        out.push((
            "grid_positions.position".to_owned(),
            caps(&[
                ("user_id", &p.user_id),
                ("exchange", &p.exchange),
                ("symbol", &p.inst_id),
                ("side", &p.side),
            ]),
        ));
    }
    if let Some((user_id, exchange)) = parse_index_key(key, &ex) {
        out.push((
            "grid_positions.index".to_owned(),
            caps(&[("user_id", &user_id), ("exchange", &exchange)]),
        ));
    }
    for (id, k) in [
        ("order_placed.legacy", OrderPlacedKey::parse(key, &ex)),
        (
            "order_placed.standard",
            OrderPlacedKey::parse_target(key, &ex),
        ),
    ] {
        if let Some(k) = k {
            out.push((
                id.to_owned(),
                caps(&[
                    ("exchange", &k.exchange),
                    ("user_id", &k.user_id),
                    ("symbol", &k.symbol),
                ]),
            ));
        }
    }
    out
}

/// The patterns `keys.rs` has parsers for.
const KEYS_RS_PATTERNS: [&str; 6] = [
    "grid_positions.legacy",
    "grid_positions.backup",
    "grid_positions.position",
    "grid_positions.index",
    "order_placed.legacy",
    "order_placed.standard",
];

/// The same, by the schema, restricted to the patterns `keys.rs` knows.
fn by_schema(schema: &Schema, key: &str) -> Vec<(String, Vec<(String, String)>)> {
    let Some(m) = schema.classify(key) else {
        return Vec::new();
    };
    if !KEYS_RS_PATTERNS.contains(&m.pattern_id) {
        return Vec::new();
    }
    let mut caps: Vec<(String, String)> = m
        .captures
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    caps.sort();
    vec![(m.pattern_id.to_owned(), caps)]
}

fn assert_agree(schema: &Schema, key: &str) {
    assert_eq!(
        by_keys_rs(key),
        by_schema(schema, key),
        "keys.rs and the built-in schema disagree on {key:?}"
    );
}

/// Segments that exercise every branch: literals of the grammar, known
/// and unknown exchanges, sides in and out of case, stamps right and
/// wrong, glob characters, unicode, empty.
const PARTS: &[&str] = &[
    "positions",
    "position",
    "index",
    "backup",
    "user",
    "symbol",
    "okx",
    "binance",
    "bitget",
    "upbit",
    "bybit",
    "kraken",
    "OKX",
    "long",
    "short",
    "net",
    "LONG",
    "20250101_000000",
    "2025010_000000",
    "20250101-000000",
    "２0250101_000000",
    "99999999_999999",
    "latest",
    "",
    "42",
    "u*1",
    "a?b",
    "[x]",
    r"\",
    "*",
    "ü",
    "用户",
    "🙂",
    "BTC-USDT-SWAP",
    " ",
    "meta",
];

fn part() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(PARTS).prop_map(str::to_owned),
        1 => "[a-z0-9*?\\[\\]\\\\_:-]{0,6}",
        1 => "\\PC{0,3}",
    ]
}

/// A value for a placeholder: mostly one that fits it (ids with glob
/// characters, unicode, grammar words), sometimes any part.
fn fill(placeholder: &str) -> BoxedStrategy<String> {
    let fitting: &'static [&'static str] = match placeholder {
        "exchange" => &[
            "okx", "binance", "bitget", "upbit", "bybit", "kraken", "OKX",
        ],
        "side" => &["long", "short", "net", "Long"],
        "stamp" => &["20250101_000000", "20261128_235959", "2025-01-01", "latest"],
        _ => &[
            "42",
            "u*1",
            "a?b",
            "[x]",
            r"a\b",
            "ü",
            "用户",
            "🙂",
            "index",
            "backup",
            "positions",
            "BTC-USDT-SWAP",
            "a:b",
            "",
        ],
    };
    prop_oneof![
        3 => proptest::sample::select(fitting).prop_map(str::to_owned),
        1 => part(),
    ]
    .boxed()
}

/// A template of the schema with each placeholder filled, or free segments.
fn key() -> impl Strategy<Value = String> {
    let templated: Vec<BoxedStrategy<String>> = Schema::builtin()
        .patterns()
        .iter()
        .map(|p| {
            let segments: Vec<BoxedStrategy<String>> = p
                .template
                .split(':')
                .map(
                    |s| match s.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
                        Some(name) => fill(name),
                        None => Just(s.to_owned()).boxed(),
                    },
                )
                .collect();
            segments.prop_map(|v| v.join(":")).boxed()
        })
        .collect();
    prop_oneof![
        3 => proptest::strategy::Union::new(templated),
        1 => proptest::collection::vec(part(), 1..8).prop_map(|v| v.join(":")),
    ]
}

/// 20,000 generated keys from a fixed seed; every `keys.rs` pattern must be
/// hit often, so agreement is not won by both sides saying "unknown".
#[test]
fn keys_rs_and_builtin_schema_agree_on_generated_keys() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    let schema = Schema::builtin();
    let mut runner = TestRunner::new_with_rng(
        ProptestConfig::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = key();
    let mut hits: std::collections::BTreeMap<String, usize> = Default::default();
    for _ in 0..20_000 {
        let key = strategy.new_tree(&mut runner).expect("a key").current();
        assert_agree(&schema, &key);
        let id = by_schema(&schema, &key)
            .pop()
            .map_or("unknown".to_owned(), |(id, _)| id);
        *hits.entry(id).or_default() += 1;
    }
    for id in KEYS_RS_PATTERNS.iter().chain(&["unknown"]) {
        assert!(hits.get(*id).copied().unwrap_or(0) >= 100, "{id}: {hits:?}");
    }
}

#[test]
fn keys_rs_and_builtin_schema_agree_on_edge_cases() {
    let schema = Schema::builtin();
    for key in [
        "okx:positions:42",
        "okx:positions:",
        ":positions:42",
        "okx:positions:a:b",
        "okx:positions:positions:1",
        "okx:positions:backup",
        "okx:positions:42:backup:20250101_000000",
        "okx:positions:42:backup:20250101_00000",
        "okx:positions:42:backup:backup:20250101_000000",
        "okx:positions:backup:backup:20250101_000000",
        "okx:positions::backup:20250101_000000",
        "kraken:positions:42:backup:20250101_000000",
        "positions:index:7:okx",
        "positions:index:7:kraken",
        "positions:index::okx",
        "positions:index:7:okx:extra",
        "positions:index:okx:BTC:long",
        "positions:7:okx:BTC:long",
        "positions:7:okx::long",
        "positions::okx:BTC:long",
        "positions:7:okx:BTC:Long",
        "positions:u*1:bybit:BTC[1]:short",
        "positions:用户:okx:🙂:long",
        "okx:positions:u?\\*",
        "okx:user:7:symbol:BTC:order_placed",
        "orders:okx:user:7:symbol:BTC:order_placed",
        "orders:orders:okx:user:7:symbol:BTC:order_placed",
        "okx:user:7:symbol:BTC:order_placed_index",
        "okx:user::symbol:BTC:order_placed",
        "orders:kraken:user:7:symbol:B*:order_placed",
    ] {
        assert_agree(&schema, key);
    }
}
