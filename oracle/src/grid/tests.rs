use std::collections::BTreeSet;

use super::*;
use crate::fields::Fields;
use crate::image::sha256_hex;
use crate::verdict::Status;

const T0: i64 = 1_800_000_000_000;
const LEGACY: &str = "okx:positions:7";
const VALUE: &str =
    r#"[{"instId":"BTC","posSide":"short","pos":"3","px":3.50},{"instId":"ETH","pos":"-1"}]"#;

fn opts() -> GridOptions {
    GridOptions::new(vec!["okx".into()])
}

fn string(v: &str, pttl: i64, at: i64) -> Entry {
    Entry {
        value: Value::String(v.as_bytes().to_vec()),
        pttl_ms: pttl,
        read_at_ms: at,
    }
}

fn hash(fields: &[(&str, &str)], pttl: i64, at: i64) -> Entry {
    Entry {
        value: Value::Hash(
            fields
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect::<Fields>(),
        ),
        pttl_ms: pttl,
        read_at_ms: at,
    }
}

fn set(members: &[&str], pttl: i64, at: i64) -> Entry {
    Entry {
        value: Value::Set(
            members
                .iter()
                .map(|m| m.as_bytes().to_vec())
                .collect::<BTreeSet<_>>(),
        ),
        pttl_ms: pttl,
        read_at_ms: at,
    }
}

fn before(legacy_pttl: i64) -> Before {
    let mut b = Before {
        complete: true,
        ..Before::default()
    };
    b.image.insert(LEGACY, string(VALUE, legacy_pttl, T0));
    b.image.insert("unrelated", string("x", -1, T0));
    b.image.read_until_ms = T0;
    b
}

/// What a correct migration leaves, read 1 s after the before-image.
fn migrated(legacy_pttl: i64) -> Image {
    let at = T0 + 1_000;
    let ttl = if legacy_pttl < 0 {
        -1
    } else {
        legacy_pttl - 1_000
    };
    let meta = [
        ("migrated_at", "2026-12-07T04:00:00Z"),
        ("migrated_from", LEGACY),
    ];
    let mut a = Image::default();
    let btc = [
        ("instId", "BTC"),
        ("posSide", "short"),
        ("pos", "3"),
        ("px", "3.50"),
        meta[0],
        meta[1],
    ];
    a.insert("positions:7:okx:BTC:short", hash(&btc, ttl, at));
    let eth = [("instId", "ETH"), ("pos", "-1"), meta[0], meta[1]];
    a.insert("positions:7:okx:ETH:short", hash(&eth, ttl, at));
    a.insert(
        "positions:index:7:okx",
        set(&["BTC:short", "ETH:short"], ttl, at),
    );
    a.insert(
        format!("{LEGACY}:backup:20261207_040000"),
        string(VALUE, BACKUP_TTL_MS - 500, at),
    );
    a.insert("unrelated", string("x", -1, at));
    a.read_until_ms = at;
    a
}

fn status(v: &Verdict, id: &str) -> Status {
    v.get(id).unwrap().status
}

fn failing(v: &Verdict) -> Vec<&'static str> {
    v.invariants
        .iter()
        .filter(|j| j.status == Status::Fail)
        .map(|j| j.id)
        .collect()
}

#[test]
fn a_correct_migration_passes_every_invariant() {
    for pttl in [-1, 60_000] {
        let v = judge(&before(pttl), &migrated(pttl), &opts());
        assert!(v.passed(), "{:#?}", v.invariants);
        assert_eq!(v.tally.positions_found, 2);
    }
}

#[test]
fn a_hash_field_re_printed_through_a_float_fails_fields() {
    let mut a = migrated(-1);
    let Value::Hash(h) = &mut a
        .keys
        .get_mut(&b"positions:7:okx:BTC:short"[..])
        .unwrap()
        .value
    else {
        panic!()
    };
    h.insert(b"px".to_vec(), b"3.5".to_vec());
    let v = judge(&before(-1), &a, &opts());
    assert_eq!(failing(&v), ["fields"]);
    assert!(v.get("fields").unwrap().samples[0].contains("\"3.50\""));
}

#[test]
fn as_many_fields_or_members_as_expected_but_not_the_same_ones_fail() {
    // The one-pass checks count fields and members: a swap keeps the count.
    let key = "positions:7:okx:BTC:short";
    let at = T0 + 1_000;
    let renamed = [
        ("instId", "BTC"),
        ("posSide", "short"),
        ("pos", "3"),
        ("qx", "3.50"),
        ("migrated_at", "2026-12-07T04:00:00Z"),
        ("migrated_from", LEGACY),
    ];
    let no_stamp = [
        ("instId", "BTC"),
        ("posSide", "short"),
        ("pos", "3"),
        ("px", "3.50"),
        ("note", "x"),
        ("migrated_from", LEGACY),
    ];
    for (fields, says) in [(&renamed, "lacks field \"px\""), (&no_stamp, "migrated_at")] {
        let mut a = migrated(-1);
        a.insert(key, hash(fields, -1, at));
        let v = judge(&before(-1), &a, &opts());
        assert_eq!(failing(&v), ["fields"]);
        assert!(v.get("fields").unwrap().samples[0].contains(says), "{v:#?}");
    }
    let mut a = migrated(-1);
    a.insert(
        "positions:index:7:okx",
        set(&["BTC:short", "ETH:long"], -1, at),
    );
    let v = judge(&before(-1), &a, &opts());
    assert!(failing(&v).contains(&"index"), "{:?}", failing(&v));
}

#[test]
fn a_backup_one_byte_off_fails_backup() {
    let mut a = migrated(-1);
    let key = format!("{LEGACY}:backup:20261207_040000");
    a.insert(
        key,
        string(&format!("{VALUE} "), BACKUP_TTL_MS - 500, T0 + 1_000),
    );
    assert_eq!(failing(&judge(&before(-1), &a, &opts())), ["backup"]);
}

#[test]
fn a_backup_with_a_short_ttl_fails_backup() {
    let mut a = migrated(-1);
    let key = format!("{LEGACY}:backup:20261207_040000");
    a.insert(key, string(VALUE, 5_000, T0 + 1_000));
    assert_eq!(failing(&judge(&before(-1), &a, &opts())), ["backup"]);
}

#[test]
fn a_backup_that_does_not_hash_to_the_journaled_digest_fails_backup() {
    let mut b = before(-1);
    b.recorded_digests
        .insert(LEGACY.as_bytes().to_vec(), sha256_hex(b"something else"));
    assert_eq!(failing(&judge(&b, &migrated(-1), &opts())), ["backup"]);
    b.recorded_digests
        .insert(LEGACY.as_bytes().to_vec(), sha256_hex(VALUE.as_bytes()));
    assert!(judge(&b, &migrated(-1), &opts()).passed());
}

#[test]
fn a_legacy_key_gone_without_a_backup_is_lost() {
    let mut a = migrated(-1);
    a.keys.retain(|k, _| !k.ends_with(b"20261207_040000"));
    let v = judge(&before(-1), &a, &opts());
    assert_eq!(status(&v, "counts"), Status::Fail);
    assert_eq!(status(&v, "backup"), Status::Fail);
}

#[test]
fn keys_whose_ttl_ran_out_count_as_expired_not_missing() {
    let mut a = migrated(1_500);
    a.keys.retain(|k, _| !k.starts_with(b"positions:"));
    a.read_until_ms = T0 + 10_000;
    let v = judge(&before(1_500), &a, &opts());
    assert!(v.passed(), "{:#?}", v.invariants);
    assert!(v.get("fields").unwrap().expired >= 2);
}

#[test]
fn a_deleted_hash_and_its_index_member_fail() {
    let mut a = migrated(-1);
    a.keys.remove(&b"positions:7:okx:ETH:short"[..]);
    a.insert("positions:index:7:okx", set(&["BTC:short"], -1, T0 + 1_000));
    let v = judge(&before(-1), &a, &opts());
    assert_eq!(failing(&v), ["counts", "index", "fields"]);
}

#[test]
fn side_from_the_sign_alone_fails_fields_and_index() {
    let mut a = migrated(-1);
    let e = a.keys.remove(&b"positions:7:okx:BTC:short"[..]).unwrap();
    a.insert("positions:7:okx:BTC:long", e);
    a.insert(
        "positions:index:7:okx",
        set(&["BTC:long", "ETH:short"], -1, T0 + 1_000),
    );
    let f = failing(&judge(&before(-1), &a, &opts()));
    assert!(f.contains(&"fields") && f.contains(&"index"), "{f:?}");
}

#[test]
fn a_quarantined_key_must_stay_and_may_not_vanish() {
    let mut b = before(-1);
    b.image
        .insert("okx:positions:8", string("not json", -1, T0));
    let mut a = migrated(-1);
    a.insert("okx:positions:8", string("not json", -1, T0 + 1_000));
    let v = judge(&b, &a, &opts());
    assert!(v.passed());
    assert_eq!(v.tally.quarantined_keys, 1);
    a.keys.remove(&b"okx:positions:8"[..]);
    let v = judge(&b, &a, &opts());
    assert_eq!(failing(&v), ["counts"]);
    assert!(v.get("counts").unwrap().samples[0].contains("vanished"));
}

#[test]
fn a_quarantined_key_known_by_digest_must_still_hash_to_it() {
    let mut b = before(-1);
    b.complete = false;
    let digest = Value::StringDigest(sha256_hex(b"not json"));
    b.image.insert(
        "okx:positions:8",
        Entry {
            value: digest,
            pttl_ms: -1,
            read_at_ms: T0,
        },
    );
    let mut a = migrated(-1);
    a.insert("okx:positions:8", string("not json", -1, T0 + 1_000));
    assert!(judge(&b, &a, &opts()).get("counts").unwrap().status == Status::Pass);
    a.insert("okx:positions:8", string("not json!", -1, T0 + 1_000));
    assert_eq!(status(&judge(&b, &a, &opts()), "counts"), Status::Fail);
}

#[test]
fn hashes_of_a_user_no_run_knows_are_orphans() {
    let mut a = migrated(-1);
    let planted = [("instId", "X"), ("migrated_from", "okx:positions:99")];
    a.insert("positions:99:okx:X:long", hash(&planted, -1, T0 + 1_000));
    a.insert("positions:index:99:okx", set(&["X:long"], -1, T0 + 1_000));
    let mut b = before(-1);
    b.complete = false;
    let v = judge(&b, &a, &opts());
    assert_eq!(failing(&v), ["index"]);
    // The hash carries migrated_from; an index set alone could be the
    // application's, for a new user.
    assert_eq!(v.get("index").unwrap().extra, 1);
}

#[test]
fn an_unexpected_or_changed_key_fails_untouched() {
    let mut a = migrated(-1);
    a.insert("unrelated", string("y", -1, T0 + 1_000));
    assert_eq!(failing(&judge(&before(-1), &a, &opts())), ["untouched"]);
    let mut a = migrated(-1);
    a.insert("stray", string("y", -1, T0 + 1_000));
    assert_eq!(failing(&judge(&before(-1), &a, &opts())), ["untouched"]);
}

#[test]
fn an_empty_before_image_is_not_run_not_pass() {
    let v = judge(&Before::default(), &Image::default(), &opts());
    assert!(!v.passed());
    assert!(v.invariants.iter().all(|j| j.status == Status::NotRun));
}

#[test]
fn ambiguous_values_may_stay_or_migrate() {
    let mut b = before(-1);
    let odd = r#"[{"instId":"A:B"}]"#;
    b.image.insert("okx:positions:9", string(odd, -1, T0));
    let mut a = migrated(-1);
    a.insert("okx:positions:9", string(odd, -1, T0 + 1_000));
    let v = judge(&b, &a, &opts());
    assert!(v.passed(), "{:#?}", v.invariants);
    assert_eq!(v.tally.ambiguous_keys, 1);
    a.keys.remove(&b"okx:positions:9"[..]);
    a.insert(
        "okx:positions:9:backup:20261207_040000",
        string(odd, BACKUP_TTL_MS, T0 + 1_000),
    );
    assert!(judge(&b, &a, &opts()).passed());
}

#[test]
fn skip_closed_expects_closed_positions_left_out() {
    let mut b = before(-1);
    let v = r#"[{"instId":"A","pos":"0"}]"#;
    b.image.insert("okx:positions:5", string(v, -1, T0));
    let mut a = migrated(-1);
    a.insert(
        "okx:positions:5:backup:20261207_040000",
        string(v, BACKUP_TTL_MS, T0 + 1_000),
    );
    let mut o = opts();
    o.skip_closed = true;
    let verdict = judge(&b, &a, &o);
    assert!(verdict.passed(), "{:#?}", verdict.invariants);
    assert_eq!(verdict.tally.skipped_closed, 1);
    o.skip_closed = false;
    assert_eq!(failing(&judge(&b, &a, &o)), ["counts", "index", "fields"]);
}

#[test]
fn a_target_there_before_the_run_makes_a_conflict_that_must_stay() {
    let mut b = before(-1);
    let theirs = hash(&[("instId", "ETH"), ("pos", "5")], -1, T0);
    b.image.insert("positions:7:okx:ETH:short", theirs.clone());
    b.image
        .insert("positions:index:7:okx", set(&["ETH:short"], -1, T0));
    // Left as it was: a conflict, counted with the quarantined keys.
    let mut left = Image::default();
    for (k, e) in &b.image.keys {
        left.insert(k.clone(), e.clone());
    }
    left.read_until_ms = T0 + 1_000;
    let v = judge(&b, &left, &opts());
    assert!(failing(&v).is_empty(), "{:#?}", v.invariants);
    assert_eq!(status(&v, "counts"), Status::Pass);
    assert_eq!(v.tally.quarantined_keys, 1);
    // Migrated over the writer's hash: its data is gone.
    let v = judge(&b, &migrated(-1), &opts());
    assert!(failing(&v).contains(&"counts"), "{:?}", failing(&v));
    let counts = v.get("counts").unwrap();
    assert!(
        counts.samples[0].contains("conflict"),
        "{:?}",
        counts.samples
    );
}

#[test]
fn a_value_read_once_by_add_legacy_is_judged_as_one_read_twice() {
    let plain = before(-1);
    let mut cached = Before {
        complete: true,
        ..Before::default()
    };
    let keys = add_legacy(&mut cached, LEGACY, string(VALUE, -1, T0), &opts());
    cached.image.insert("unrelated", string("x", -1, T0));
    cached.image.read_until_ms = T0;
    assert_eq!(keys, expected_keys(LEGACY, VALUE.as_bytes(), &opts()));
    assert_eq!(
        keys,
        [
            "positions:index:7:okx",
            "positions:7:okx:BTC:short",
            "positions:7:okx:ETH:short"
        ]
    );
    assert!(cached.expectations.contains_key(LEGACY.as_bytes()));
    // The same verdict on a correct migration and on a broken one.
    let mut broken = migrated(-1);
    broken.keys.remove(b"positions:7:okx:ETH:short".as_slice());
    for (after, fails) in [(migrated(-1), vec![]), (broken, vec!["counts", "fields"])] {
        let (a, b) = (
            judge(&plain, &after, &opts()),
            judge(&cached, &after, &opts()),
        );
        assert_eq!(a, b);
        assert_eq!(failing(&b), fails);
    }
}
