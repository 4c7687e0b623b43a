//! An independent check of Phase 2 on a 3-primary Redis Cluster: a
//! generated keyspace is seeded, `keyshift migrate grid-positions` runs as a
//! script would run it, and the end state is read back from each primary
//! over its own connection (no engine code: not its verify, not its key
//! parsers, not its client) and compared with what DESIGN §2 says the
//! seeded keyspace must become. Every finding is a violation; there must be
//! none.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use keyshift_harness::backend::{Primaries, RedisCluster};
use keyshift_harness::digest::{compare, digest, digest_keyspace};
use keyshift_harness::seed::{self, generate, GenConfig, KeyEntry, KeyValue, Keyspace};
use serde_json::Value as Json;
use support::cli::{keyshift, run};

const EXCHANGES: [&str; 5] = ["okx", "binance", "bitget", "upbit", "bybit"];
const SEVEN_DAYS_MS: i64 = 7 * 24 * 3600 * 1000;
/// The journal's key prefix (DESIGN: "every run keeps a journal in Redis").
const JOURNAL_PREFIX: &str = "keyshift:";

/// One key as a primary holds it.
#[derive(Debug, Clone)]
struct Live {
    kind: String,
    /// GET bytes, HGETALL pairs or SMEMBERS members; empty for other types.
    string: Vec<u8>,
    fields: BTreeMap<String, String>,
    members: BTreeSet<String>,
    pttl: i64,
}

/// Every key of every primary, read over that primary's own connection.
async fn read_all(primaries: &Primaries) -> BTreeMap<String, Live> {
    let mut all = BTreeMap::new();
    for p in primaries.primaries() {
        let mut con = p.connection();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await
                .expect("SCAN");
            for key in keys {
                let kind: String = redis::cmd("TYPE")
                    .arg(&key)
                    .query_async(&mut con)
                    .await
                    .unwrap();
                let pttl: i64 = redis::cmd("PTTL")
                    .arg(&key)
                    .query_async(&mut con)
                    .await
                    .unwrap();
                let mut live = Live {
                    kind: kind.clone(),
                    string: Vec::new(),
                    fields: BTreeMap::new(),
                    members: BTreeSet::new(),
                    pttl,
                };
                match kind.as_str() {
                    "string" => {
                        live.string = redis::cmd("GET")
                            .arg(&key)
                            .query_async(&mut con)
                            .await
                            .unwrap()
                    }
                    "hash" => {
                        live.fields = redis::cmd("HGETALL")
                            .arg(&key)
                            .query_async(&mut con)
                            .await
                            .unwrap()
                    }
                    "set" => {
                        live.members = redis::cmd("SMEMBERS")
                            .arg(&key)
                            .query_async(&mut con)
                            .await
                            .unwrap()
                    }
                    _ => {}
                }
                assert!(
                    all.insert(key.clone(), live).is_none(),
                    "{key} is held by two primaries"
                );
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    all
}

/// (exchange, user id) of a legacy grid-positions key, read from the key
/// text by DESIGN §1 (`{exchange}:positions:{user_id}`, backups excluded).
fn legacy_parts(key: &str) -> Option<(&'static str, &str)> {
    EXCHANGES.iter().find_map(|ex| {
        let uid = key.strip_prefix(ex)?.strip_prefix(":positions:")?;
        (!uid.is_empty() && !uid.contains(":backup:")).then_some((*ex, uid))
    })
}

/// DESIGN §2's side rule.
fn side(p: &serde_json::Map<String, Json>) -> &'static str {
    if let Some(Json::String(s)) = p.get("posSide") {
        match s.to_ascii_lowercase().as_str() {
            "long" => return "long",
            "short" => return "short",
            _ => {}
        }
    }
    let pos = match p.get("pos") {
        Some(Json::String(s)) => s.trim().parse::<f64>().unwrap_or(0.0),
        Some(Json::Number(n)) => n.as_f64().unwrap_or(0.0),
        _ => 0.0,
    };
    if pos < 0.0 {
        "short"
    } else {
        "long"
    }
}

/// What one well-formed legacy key must become.
struct Expected {
    /// Hash key -> fields (without `migrated_at`, checked apart).
    hashes: BTreeMap<String, BTreeMap<String, String>>,
    index_key: String,
    members: BTreeSet<String>,
}

/// JSON text without the whitespace between tokens: a non-string field's
/// value as DESIGN §2 stores it (numbers keep their source text, `2.5e-5`
/// stays `2.5e-5`; keys keep their order).
fn compact(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in raw.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !c.is_whitespace() {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

type RawFields = BTreeMap<String, Box<serde_json::value::RawValue>>;

fn expected_of(legacy: &str, ex: &str, uid: &str, value: &[u8]) -> Expected {
    let parsed: Json = serde_json::from_slice(value)
        .unwrap_or_else(|e| panic!("{legacy} is not in the truth's quarantine yet not JSON: {e}"));
    // The same positions as source text per field.
    let raw: Vec<RawFields> = match &parsed {
        Json::Array(_) => serde_json::from_slice(value).expect("an array of objects"),
        Json::Object(_) => serde_json::from_slice::<BTreeMap<String, RawFields>>(value)
            .expect("an object of objects")
            .into_values()
            .collect(),
        other => panic!("{legacy}: well-formed per the truth, but {other}"),
    };
    let mut hashes = BTreeMap::new();
    let mut members = BTreeSet::new();
    for p in raw {
        let typed: serde_json::Map<String, Json> = p
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    serde_json::from_str(v.get()).expect("a JSON value"),
                )
            })
            .collect();
        let inst = typed["instId"].as_str().expect("instId is a string");
        let side = side(&typed);
        let mut fields: BTreeMap<String, String> = typed
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Json::String(s) => s.clone(),
                    _ => compact(p[k].get()),
                };
                (k.clone(), text)
            })
            .collect();
        fields.insert("migrated_from".into(), legacy.into());
        hashes.insert(format!("positions:{uid}:{ex}:{inst}:{side}"), fields);
        members.insert(format!("{inst}:{side}"));
    }
    Expected {
        hashes,
        index_key: format!("positions:index:{uid}:{ex}"),
        members,
    }
}

/// The TTL a new key must have: the legacy one carried over (at most what
/// was seeded), else none.
fn ttl_violation(key: &str, pttl: i64, legacy_ttl: Option<u64>) -> Option<String> {
    match legacy_ttl {
        None if pttl == -1 => None,
        Some(t) if pttl > 0 && pttl <= t as i64 => None,
        _ => Some(format!(
            "{key}: PTTL {pttl}, legacy TTL {legacy_ttl:?} should carry over"
        )),
    }
}

/// The violations, the live keys the seed explains, and how many expected
/// hashes were there.
fn check(
    ks: &Keyspace,
    quarantined: &BTreeSet<String>,
    live: &BTreeMap<String, Live>,
) -> (Vec<String>, BTreeSet<String>, usize) {
    let mut f = Findings {
        live,
        seeded: ks.entries.iter().map(|e| e.key.as_str()).collect(),
        violations: Vec::new(),
        explained: BTreeSet::new(),
        hashes_seen: 0,
    };
    let migrated: Vec<&KeyEntry> = ks
        .entries
        .iter()
        .filter(|e| legacy_parts(&e.key).is_some() && !quarantined.contains(&e.key))
        .collect();
    for e in &migrated {
        let (ex, uid) = legacy_parts(&e.key).unwrap();
        let KeyValue::String(value) = &e.value else {
            f.violations.push(format!(
                "{}: well-formed but not a string in the seed",
                e.key
            ));
            continue;
        };
        if live.contains_key(&e.key) {
            f.violations
                .push(format!("{}: legacy key still there", e.key));
        }
        let want = expected_of(&e.key, ex, uid, value);
        f.check_hashes(&want, e.ttl_ms);
        f.check_index(&want, e.ttl_ms);
        f.check_backup(&e.key, value);
    }
    f.check_nothing_unexplained();
    (f.violations, f.explained, f.hashes_seen)
}

/// What [`check`] found so far against the live keyspace.
struct Findings<'a> {
    live: &'a BTreeMap<String, Live>,
    seeded: BTreeSet<&'a str>,
    violations: Vec<String>,
    explained: BTreeSet<String>,
    hashes_seen: usize,
}

impl Findings<'_> {
    /// Each position hash as planned, stamped, with the legacy TTL.
    fn check_hashes(&mut self, want: &Expected, legacy_ttl: Option<u64>) {
        for (key, fields) in &want.hashes {
            self.explained.insert(key.clone());
            let Some(l) = self.live.get(key) else {
                self.violations.push(format!("{key}: missing"));
                continue;
            };
            self.hashes_seen += 1;
            let mut got = l.fields.clone();
            match got.remove("migrated_at") {
                Some(at)
                    if at.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(&at).is_ok() => {}
                other => self
                    .violations
                    .push(format!("{key}: migrated_at {other:?} is not RFC 3339 UTC")),
            }
            if l.kind != "hash" || &got != fields {
                self.violations.push(format!(
                    "{key}: {} {got:?}, expected hash {fields:?}",
                    l.kind
                ));
            }
            self.violations
                .extend(ttl_violation(key, l.pttl, legacy_ttl));
        }
    }

    /// The index holds exactly the members, with the legacy TTL; an empty
    /// array has none.
    fn check_index(&mut self, want: &Expected, legacy_ttl: Option<u64>) {
        if want.members.is_empty() {
            if self.live.contains_key(&want.index_key) {
                self.violations
                    .push(format!("{}: index of an empty array", want.index_key));
            }
            return;
        }
        self.explained.insert(want.index_key.clone());
        match self.live.get(&want.index_key) {
            Some(l) if l.kind == "set" && l.members == want.members => self
                .violations
                .extend(ttl_violation(&want.index_key, l.pttl, legacy_ttl)),
            Some(l) => self.violations.push(format!(
                "{}: {} {:?}, expected set {:?}",
                want.index_key, l.kind, l.members, want.members
            )),
            None => self.violations.push(format!("{}: missing", want.index_key)),
        }
    }

    /// Exactly one new backup of `legacy_key`, byte for byte, TTL in
    /// (0, 7 days].
    fn check_backup(&mut self, legacy_key: &str, value: &[u8]) {
        let prefix = format!("{legacy_key}:backup:");
        let backups: Vec<(&String, &Live)> = self
            .live
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !self.seeded.contains(k.as_str()))
            .collect();
        match backups.as_slice() {
            [(key, l)] => {
                self.explained.insert((*key).clone());
                if l.kind != "string" || l.string != value {
                    self.violations
                        .push(format!("{key}: not byte-identical to {legacy_key}"));
                }
                if !(l.pttl > 0 && l.pttl <= SEVEN_DAYS_MS) {
                    self.violations
                        .push(format!("{key}: PTTL {} outside (0, 7 days]", l.pttl));
                }
            }
            other => self.violations.push(format!(
                "{legacy_key}: {} new backups, expected exactly one",
                other.len()
            )),
        }
    }

    /// Every live key is expected, seeded or the journal's.
    fn check_nothing_unexplained(&mut self) {
        for key in self.live.keys() {
            let known = self.explained.contains(key)
                || self.seeded.contains(key.as_str())
                || key.starts_with(JOURNAL_PREFIX);
            if !known {
                self.violations
                    .push(format!("{key}: written, but neither expected nor seeded"));
            }
        }
    }
}

#[tokio::test]
async fn phase2_on_a_cluster_matches_the_seeded_truth() {
    let cluster = RedisCluster::start(support::test_backend())
        .await
        .expect("a disposable cluster");
    let generated = generate(&GenConfig {
        users: 250,
        seed: 20_260_701,
        ..GenConfig::default()
    });
    let ks = &generated.keyspace;
    let truth = &generated.truth;
    let primaries = cluster.primaries().await.expect("per-primary connections");
    assert!(primaries.is_cluster() && primaries.primaries().len() == 3);
    seed::load(&primaries, ks).await.expect("seed the cluster");
    let seeded_at = Instant::now();
    // The keyspace really is spread: every primary holds a share.
    for p in primaries.primaries() {
        let n: i64 = redis::cmd("DBSIZE")
            .query_async(&mut p.connection())
            .await
            .unwrap();
        assert!(
            n > ks.len() as i64 / 6,
            "{}: {n} of {} keys",
            p.url(),
            ks.len()
        );
    }

    let ran = run(keyshift(&[
        "migrate",
        "grid-positions",
        "--redis",
        &cluster.url(),
        "--force",
        "--json",
    ]))
    .await;
    let quarantined: BTreeSet<String> = truth.quarantined.keys().cloned().collect();
    let expected_code = if quarantined.is_empty() { 0 } else { 3 };
    assert_eq!(ran.code, Some(expected_code), "{ran}");

    let live = read_all(&primaries).await;
    let (mut violations, explained, hashes) = check(ks, &quarantined, &live);
    if hashes != truth.positions {
        violations.push(format!(
            "{hashes} position hashes, the generator wrote {} positions",
            truth.positions
        ));
    }
    // Everything the migration had no business with, quarantined legacy
    // keys included, is unchanged (type-aware digest, TTLs within the time
    // since seeding).
    let untouched = Keyspace {
        entries: ks
            .entries
            .iter()
            .filter(|e| legacy_parts(&e.key).is_none() || quarantined.contains(&e.key))
            .cloned()
            .collect(),
    };
    let want = digest_keyspace(&untouched);
    let got = digest(&primaries, |k| want.keys.contains_key(k))
        .await
        .expect("digest");
    let diff = compare(&want, &got, seeded_at.elapsed().as_millis() as i64 + 1_000);
    for k in diff
        .missing
        .iter()
        .chain(&diff.changed)
        .chain(&diff.ttl_changed)
    {
        violations.push(format!("{k}: not left as seeded"));
    }
    assert!(
        violations.is_empty(),
        "{} violation(s), first ones:\n{}",
        violations.len(),
        violations
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "cluster phase 2: {} keys seeded, {} position hashes, {} new keys checked, {} untouched keys, 0 violations",
        ks.len(),
        hashes,
        explained.len(),
        want.keys.len()
    );
}

#[test]
fn compact_json_keeps_number_text_and_strings() {
    assert_eq!(compact(" 2.5e-5 "), "2.5e-5");
    assert_eq!(compact(r#"{ "b" : 1, "a": [ ] }"#), r#"{"b":1,"a":[]}"#);
    assert_eq!(compact(r#"[ "a b", "c\" d" ]"#), r#"["a b","c\" d"]"#);
}

#[test]
fn the_checker_catches_what_it_must() {
    // The check itself, on a hand-made end state: a correct one passes,
    // and each kind of damage is a violation.
    let legacy = "okx:positions:u1";
    let value = br#"[{"instId":"A","pos":"-1","lev":3}]"#.to_vec();
    let mut ks = Keyspace::new();
    ks.push(KeyEntry::new(legacy, KeyValue::String(value.clone())));
    ks.push(KeyEntry::new("other", KeyValue::String(b"x".to_vec())));
    let hash = |extra: Option<(&str, &str)>| {
        let mut fields: BTreeMap<String, String> = [
            ("instId", "A"),
            ("pos", "-1"),
            ("lev", "3"),
            ("migrated_from", legacy),
            ("migrated_at", "2026-07-01T00:00:00Z"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Some((k, v)) = extra {
            fields.insert(k.into(), v.into());
        }
        Live {
            kind: "hash".into(),
            string: vec![],
            fields,
            members: BTreeSet::new(),
            pttl: -1,
        }
    };
    let good = || {
        let mut live = BTreeMap::new();
        live.insert("positions:u1:okx:A:short".to_string(), hash(None));
        live.insert(
            "positions:index:u1:okx".to_string(),
            Live {
                kind: "set".into(),
                string: vec![],
                fields: BTreeMap::new(),
                members: BTreeSet::from(["A:short".to_string()]),
                pttl: -1,
            },
        );
        live.insert(
            format!("{legacy}:backup:20260701_000000"),
            Live {
                kind: "string".into(),
                string: value.clone(),
                fields: BTreeMap::new(),
                members: BTreeSet::new(),
                pttl: 1000,
            },
        );
        live.insert(
            "other".to_string(),
            Live {
                kind: "string".into(),
                string: b"x".to_vec(),
                fields: BTreeMap::new(),
                members: BTreeSet::new(),
                pttl: -1,
            },
        );
        live
    };
    let none = BTreeSet::new();
    assert_eq!(check(&ks, &none, &good()).0, Vec::<String>::new());
    let mut extra_field = good();
    extra_field.insert("positions:u1:okx:A:short".into(), hash(Some(("x", "1"))));
    let mut no_backup = good();
    no_backup.retain(|k, _| !k.contains(":backup:"));
    let mut legacy_left = good();
    legacy_left.insert(legacy.into(), legacy_left["other"].clone());
    let mut stray = good();
    stray.insert("positions:u1:okx:B:long".into(), hash(None));
    for (what, live) in [
        ("extra field", extra_field),
        ("no backup", no_backup),
        ("legacy left", legacy_left),
        ("stray hash", stray),
    ] {
        assert!(
            !check(&ks, &none, &live).0.is_empty(),
            "{what} goes unnoticed"
        );
    }
}
