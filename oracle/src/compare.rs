//! Whole-keyspace comparisons: "a second run writes nothing" (idempotent)
//! and "migrate then rollback gives the pre-migration keyspace" (rollback).

use crate::image::{show, Image};
use crate::verdict::Judgement;

/// Every key of `earlier` is in `later` with the same content and its TTL
/// ticking down (or expired), and `later` holds no other key but those
/// `allowed_new` accepts. Keys `ignored` accepts are not judged.
pub fn unchanged(
    id: &'static str,
    description: &'static str,
    earlier: &Image,
    later: &Image,
    tolerance_ms: i64,
    ignored: &dyn Fn(&[u8]) -> bool,
    allowed_new: &dyn Fn(&[u8]) -> bool,
) -> Judgement {
    let mut j = Judgement::new(id, description);
    for (key, was) in &earlier.keys {
        if ignored(key) {
            continue;
        }
        let expected = if was.pttl_ms < 0 {
            -1
        } else {
            was.pttl_ms - (later.read_until_ms - was.read_at_ms)
        };
        match later.keys.get(key) {
            None if was.pttl_ms >= 0 && expected <= tolerance_ms => j.expired(),
            None => j.fail(|| format!("{}: missing", show(key))),
            Some(now) if !was.value.same_content(&now.value) => {
                j.fail(|| format!("{}: content changed", show(key)))
            }
            Some(now) => {
                let expected = if was.pttl_ms < 0 {
                    -1
                } else {
                    was.pttl_ms - (now.read_at_ms - was.read_at_ms)
                };
                let fits = match (expected, now.pttl_ms) {
                    (-1, -1) => true,
                    (-1, _) | (_, -1) => false,
                    (e, got) => (got - e).abs() <= tolerance_ms,
                };
                if fits {
                    j.pass();
                } else {
                    j.fail(|| {
                        format!(
                            "{}: TTL {} ms, expected {}",
                            show(key),
                            now.pttl_ms,
                            if expected < 0 {
                                "none".to_owned()
                            } else {
                                format!("about {expected} ms")
                            }
                        )
                    });
                }
            }
        }
    }
    for (key, entry) in &later.keys {
        if !earlier.keys.contains_key(key) && !ignored(key) && !allowed_new(key) {
            j.extra(|| format!("{}: new key ({})", show(key), entry.value.kind()));
        }
    }
    j.finish("the earlier image holds no key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Entry, Value};
    use crate::verdict::Status;

    fn image(keys: &[(&str, &str, i64)], at: i64) -> Image {
        let mut i = Image {
            read_until_ms: at,
            ..Image::default()
        };
        for (k, v, pttl) in keys {
            i.insert(
                *k,
                Entry {
                    value: Value::String(v.as_bytes().to_vec()),
                    pttl_ms: *pttl,
                    read_at_ms: at,
                },
            );
        }
        i
    }

    #[test]
    fn ttls_tick_and_new_keys_need_leave() {
        let a = image(&[("a", "1", 10_000), ("b", "2", -1), ("c", "3", 100)], 0);
        let b = image(
            &[("a", "1", 5_000), ("b", "2", -1), ("x:backup", "", -1)],
            5_000,
        );
        let no = |_: &[u8]| false;
        let backups = |k: &[u8]| k.ends_with(b":backup");
        assert_eq!(
            unchanged("r", "", &a, &b, 500, &no, &backups).status,
            Status::Pass
        );
        assert_eq!(
            unchanged("r", "", &a, &b, 500, &no, &no).status,
            Status::Fail
        );
        let changed = image(&[("a", "1", -1), ("b", "2", -1)], 5_000);
        let j = unchanged("r", "", &a, &changed, 500, &no, &no);
        assert_eq!((j.status, j.failed), (Status::Fail, 1));
    }
}
