//! Judges an order-placed migration (DESIGN §2 Phase 1): each legacy
//! `{exchange}:user:{user_id}:symbol:{symbol}:order_placed` hash moves to
//! `orders:{same}` with every field and its remaining TTL; a target that
//! already holds the same fields means the legacy key is dropped; a target
//! that differs means neither is touched.

use std::collections::BTreeSet;

use crate::grid::note;
use crate::image::{show, Before, Entry, Image, Value};
use crate::verdict::{Judgement, Tally, Verdict};

pub const TARGET_PREFIX: &str = "orders:";

/// `Some(())` when `key` is a legacy order-placed key for `exchanges`.
pub fn is_legacy(key: &[u8], exchanges: &[String]) -> bool {
    let Ok(key) = std::str::from_utf8(key) else {
        return false;
    };
    let parts: Vec<&str> = key.split(':').collect();
    matches!(parts.as_slice(),
        [ex, "user", user, "symbol", symbol, "order_placed"]
            if exchanges.iter().any(|e| e == ex) && !user.is_empty() && !symbol.is_empty())
}

fn ttl_fits(was: &Entry, now: &Entry, tolerance: i64) -> Result<(), String> {
    let expected = if was.pttl_ms < 0 {
        -1
    } else {
        was.pttl_ms - (now.read_at_ms - was.read_at_ms)
    };
    match (expected, now.pttl_ms) {
        (-1, -1) => Ok(()),
        (e, got) if e >= 0 && got >= 0 && (got - e).abs() <= tolerance => Ok(()),
        (e, got) => Err(format!("TTL {got} ms, expected {e} ms (-1: none)")),
    }
}

fn expired_by(was: &Entry, at: i64, tolerance: i64) -> bool {
    was.pttl_ms >= 0 && was.pttl_ms - (at - was.read_at_ms) <= tolerance
}

struct Checks {
    counts: Judgement,
    fields: Judgement,
    ttl: Judgement,
    untouched: Judgement,
    tally: Tally,
    conflicts: Vec<String>,
}

/// Judges `after` against `before` (which should be complete: targets
/// that existed before decide what the migration must do).
pub fn judge(before: &Before, after: &Image, exchanges: &[String], tolerance: i64) -> Verdict {
    let mut c = Checks {
        counts: Judgement::new(
            "counts",
            "every legacy hash moved, dropped as equal, or left with its differing target",
        ),
        fields: Judgement::new("fields", "each target holds every field of its legacy hash"),
        ttl: Judgement::new("ttl", "the remaining TTL carries over to the target"),
        untouched: Judgement::new(
            "untouched",
            "every key outside the migration's patterns is unchanged",
        ),
        tally: Tally::default(),
        conflicts: Vec::new(),
    };
    let mut accounted: BTreeSet<Vec<u8>> = BTreeSet::new();
    for (key, was) in &before.image.keys {
        if is_legacy(key, exchanges) {
            judge_key(&mut c, before, after, key, was, tolerance, &mut accounted);
        }
    }
    if before.complete {
        for (key, was) in &before.image.keys {
            if accounted.contains(key) {
                continue;
            }
            match after.keys.get(key) {
                None if expired_by(was, after.read_until_ms, tolerance) => c.untouched.expired(),
                None => c.untouched.fail(|| format!("{}: missing", show(key))),
                Some(now) if now.value != was.value => {
                    c.untouched.fail(|| format!("{}: changed", show(key)))
                }
                Some(now) => c.untouched.check(
                    ttl_fits(was, now, tolerance).map_err(|e| format!("{}: {e}", show(key))),
                ),
            }
        }
        for key in after.keys.keys() {
            if !before.image.keys.contains_key(key) && !accounted.contains(key) {
                c.untouched
                    .extra(|| format!("{}: unexpected key", show(key)));
            }
        }
    }
    let none = "the before-image holds no legacy order-placed hash";
    Verdict {
        migration: "order-placed",
        invariants: vec![
            c.counts.finish(none),
            c.fields.finish("no legacy hash was moved"),
            c.ttl.finish("no legacy hash was moved"),
            c.untouched
                .finish("the before-image holds no key outside the migration"),
        ],
        tally: c.tally,
        ambiguous: c.conflicts,
    }
}

#[allow(clippy::too_many_arguments)]
fn judge_key(
    c: &mut Checks,
    before: &Before,
    after: &Image,
    key: &[u8],
    was: &Entry,
    tolerance: i64,
    accounted: &mut BTreeSet<Vec<u8>>,
) {
    let name = show(key);
    let mut target = TARGET_PREFIX.as_bytes().to_vec();
    target.extend_from_slice(key);
    accounted.insert(key.to_vec());
    accounted.insert(target.clone());
    c.tally.legacy_keys += 1;
    let target_before = before.image.keys.get(&target);
    let legacy_now = after.keys.get(key);
    let target_now = after.keys.get(&target);
    let expired = expired_by(was, after.read_until_ms, tolerance);
    if !matches!(was.value, Value::Hash(_)) {
        // Not a hash: not understood, so left as it was.
        c.tally.quarantined_keys += 1;
        c.counts.check(match legacy_now {
            Some(now) if now.value == was.value => Ok(()),
            None if expired => Ok(()),
            _ => Err(format!(
                "{name}: a {}, must be left untouched",
                was.value.kind()
            )),
        });
        return;
    }
    match target_before {
        Some(t) if t.value != was.value => {
            c.tally.quarantined_keys += 1;
            note(&mut c.conflicts, || format!("{name}: its target differs"));
            let legacy_ok = legacy_now.is_some_and(|n| n.value == was.value) || expired;
            let target_ok = target_now.is_some_and(|n| n.value == t.value)
                || expired_by(t, after.read_until_ms, tolerance);
            c.counts.check(if legacy_ok && target_ok {
                Ok(())
            } else {
                Err(format!(
                    "{name}: its target differed, so neither may change"
                ))
            });
        }
        _ => {
            c.tally.migrated_keys += 1;
            if legacy_now.is_some() {
                c.counts
                    .fail(|| format!("{name}: still there after the migration"));
                return;
            }
            match target_now {
                None if expired => {
                    c.counts.expired();
                    c.tally.expired_keys += 1;
                }
                None => c
                    .counts
                    .fail(|| format!("{name}: gone, and its target is missing: lost")),
                Some(now) => {
                    c.counts.pass();
                    c.fields.check(if now.value == was.value {
                        Ok(())
                    } else {
                        Err(format!("{}: fields differ from {name}", show(&target)))
                    });
                    c.ttl.check(
                        ttl_fits(was, now, tolerance)
                            .map_err(|e| format!("{}: {e}", show(&target))),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Status;

    const L: &str = "okx:user:1:symbol:BTC:order_placed";

    fn h(fields: &[(&str, &str)], pttl: i64, at: i64) -> Entry {
        Entry {
            value: Value::Hash(
                fields
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                    .collect(),
            ),
            pttl_ms: pttl,
            read_at_ms: at,
        }
    }

    fn ex() -> Vec<String> {
        vec!["okx".into()]
    }

    #[test]
    fn a_move_keeps_fields_and_ttl() {
        let mut b = Before {
            complete: true,
            ..Before::default()
        };
        b.image.insert(L, h(&[("1", "0"), ("2", "1")], 60_000, 0));
        let mut a = Image {
            read_until_ms: 1_000,
            ..Image::default()
        };
        a.insert(
            format!("orders:{L}"),
            h(&[("1", "0"), ("2", "1")], 59_000, 1_000),
        );
        let v = judge(&b, &a, &ex(), 500);
        assert_eq!(v.not_passed(), ["untouched"], "nothing else was seeded");
        a.insert(format!("orders:{L}"), h(&[("1", "0")], 59_000, 1_000));
        let v = judge(&b, &a, &ex(), 500);
        assert_eq!(v.get("fields").unwrap().status, Status::Fail);
        a.insert(
            format!("orders:{L}"),
            h(&[("1", "0"), ("2", "1")], -1, 1_000),
        );
        assert_eq!(
            judge(&b, &a, &ex(), 500).get("ttl").unwrap().status,
            Status::Fail
        );
    }

    #[test]
    fn a_differing_target_leaves_both() {
        let mut b = Before {
            complete: true,
            ..Before::default()
        };
        b.image.insert(L, h(&[("1", "0")], -1, 0));
        b.image
            .insert(format!("orders:{L}"), h(&[("1", "1")], -1, 0));
        let mut a = b.image.clone();
        a.read_until_ms = 1_000;
        let v = judge(&b, &a, &ex(), 500);
        assert_eq!(v.get("counts").unwrap().status, Status::Pass);
        a.keys.remove(L.as_bytes());
        assert_eq!(
            judge(&b, &a, &ex(), 500).get("counts").unwrap().status,
            Status::Fail
        );
    }
}
