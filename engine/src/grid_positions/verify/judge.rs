//! Judging what verify read: a hash against its legacy object, a TTL
//! against the legacy one over the window its reply came in, and the
//! server's clock that window is measured by. Pure but for the clock.

use std::collections::{BTreeSet, HashMap};

use redis::aio::ConnectionLike;

use crate::error::{EngineError, Result};
use crate::keys::{META_MIGRATED_AT, META_MIGRATED_FROM};
use crate::run::invariant::InvariantResult;
use crate::run::invariant::TTL_TOLERANCE_MS;

/// Compares a position hash with its planned fields plus the metadata.
pub(super) fn compare_hash(
    key: &str,
    legacy_key: &str,
    fields: &[(String, String)],
    actual: &HashMap<String, String>,
) -> Result<(), String> {
    if actual.is_empty() {
        return Err(format!("{key}: hash missing"));
    }
    for (f, v) in fields {
        match actual.get(f) {
            Some(a) if a == v => {}
            Some(a) => return Err(format!("{key}: field {f:?} is {a:?}, legacy has {v:?}")),
            None => return Err(format!("{key}: field {f:?} missing")),
        }
    }
    match actual.get(META_MIGRATED_FROM) {
        Some(v) if v == legacy_key => {}
        other => {
            return Err(format!(
                "{key}: migrated_from is {other:?}, expected {legacy_key:?}"
            ))
        }
    }
    match actual
        .get(META_MIGRATED_AT)
        .map(|v| chrono::DateTime::parse_from_rfc3339(v))
    {
        Some(Ok(t)) if t.offset().local_minus_utc() == 0 => {}
        other => {
            return Err(format!(
                "{key}: migrated_at is not an RFC 3339 UTC time ({other:?})"
            ))
        }
    }
    let known: BTreeSet<&str> = fields
        .iter()
        .map(|(f, _)| f.as_str())
        .chain([META_MIGRATED_AT, META_MIGRATED_FROM])
        .collect();
    match actual.keys().find(|f| !known.contains(f.as_str())) {
        Some(extra) => Err(format!(
            "{key}: field {extra:?} is not in the legacy object"
        )),
        None => Ok(()),
    }
}

/// When a round trip's replies were read, by the server's clock: between
/// a TIME sent before it and one sent after its last reply. On one server
/// the two are a few ms apart. On a cluster the pipeline is split per slot
/// and its parts answered over a while (seconds, on a loaded machine), so
/// a TIME inside it would date some replies, not all.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadWindow {
    pub(super) before: i64,
    pub(super) after: i64,
}

pub(super) fn check_ttl(
    result: &mut InvariantResult,
    key: &str,
    actual: i64,
    legacy_pttl: i64,
    at: i64,
    read_at: ReadWindow,
) {
    let outcome = if legacy_pttl <= 0 {
        if actual == -1 {
            Ok(())
        } else {
            Err(format!(
                "{key}: TTL {actual} ms, but the legacy key had none"
            ))
        }
    } else {
        // Read early, the most is left; read late, the least.
        let most = legacy_pttl - (read_at.before - at).max(0);
        let least = legacy_pttl - (read_at.after - at).max(0);
        if actual > 0 && actual >= least - TTL_TOLERANCE_MS && actual <= most + TTL_TOLERANCE_MS {
            Ok(())
        } else if least == most {
            Err(format!("{key}: TTL {actual} ms, expected about {most} ms"))
        } else {
            Err(format!(
                "{key}: TTL {actual} ms, expected about {least} to {most} ms"
            ))
        }
    };
    result.check(outcome);
}

/// One round trip and the window its replies were read in.
pub(super) async fn read_in_window<C: ConnectionLike + Clone + Send>(
    conn: &C,
    pipe: &redis::Pipeline,
    during: &'static str,
) -> Result<(Vec<redis::Value>, ReadWindow)> {
    let before = server_now(conn).await?;
    let mut c = conn.clone();
    let replies: Vec<redis::Value> = pipe
        .query_async(&mut c)
        .await
        .map_err(EngineError::redis(during))?;
    let after = server_now(conn).await?;
    Ok((replies, ReadWindow { before, after }))
}

/// The server's clock (ms), or this machine's when TIME gives no answer
/// to read.
async fn server_now<C: ConnectionLike + Clone + Send>(conn: &C) -> Result<i64> {
    let mut c = conn.clone();
    let reply: redis::Value = redis::cmd("TIME")
        .query_async(&mut c)
        .await
        .map_err(EngineError::redis("reading the server's clock"))?;
    Ok(server_time_ms(Some(&reply)).unwrap_or_else(|| chrono::Utc::now().timestamp_millis()))
}

fn server_time_ms(v: Option<&redis::Value>) -> Option<i64> {
    let (s, us): (i64, i64) = redis::from_redis_value_ref(v?).ok()?;
    Some(s * 1000 + us / 1000)
}

/// A cluster run's "migrating" marker left in an index set: that run
/// stopped between writing the index and finishing the user.
pub(super) fn marked_index(index_key: &str, marker: &str) -> String {
    format!(
        "{index_key} holds the migration marker {marker:?}: interrupted run: resume it \
         (run `keyshift migrate grid-positions` again) or roll it back"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster answers one pipeline's parts over a while: a TTL read
    /// anywhere between the two clock readings passes, one off by more
    /// than the tolerance at both ends fails.
    #[test]
    fn a_ttl_is_judged_over_the_window_its_reply_came_in() {
        let window = ReadWindow {
            before: 1_000,
            after: 5_000,
        };
        let judge = |actual: i64| {
            let mut r = InvariantResult::new("ttl", "t");
            check_ttl(&mut r, "k", actual, 100_000, 0, window);
            (r.mismatched, r.samples)
        };
        for read_early_or_late in [99_000, 95_000, 97_500, 93_001, 100_999] {
            assert_eq!(judge(read_early_or_late).0, 0, "{read_early_or_late}");
        }
        for off in [92_999, 101_001, -2] {
            assert_eq!(judge(off).0, 1, "{off}");
        }
        assert_eq!(
            judge(90_000).1,
            ["k: TTL 90000 ms, expected about 95000 to 99000 ms"]
        );
        let mut r = InvariantResult::new("ttl", "t");
        let instant = ReadWindow {
            before: 1_000,
            after: 1_000,
        };
        check_ttl(&mut r, "k", 90_000, 100_000, 0, instant);
        assert_eq!(r.samples, ["k: TTL 90000 ms, expected about 99000 ms"]);
    }
}
