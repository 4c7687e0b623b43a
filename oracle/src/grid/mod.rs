//! Judges a grid-positions migration (DESIGN §2 Phase 2, §4): from the
//! before-image and the after-image to the counts, index, fields, backup,
//! ttl and untouched invariants.
//!
//! Each legacy key of the before-image is expected to end one of three
//! ways (see [`crate::legacy`]); what is in the after-image says which way
//! it went. Keys the after-image holds that no legacy key accounts for are
//! orphans (a migrated-looking hash of a user no run knows) or, when the
//! before-image is the whole keyspace, unexpected keys.

use std::collections::BTreeMap;

use crate::image::{show, Before, Entry, Image, Value};
use crate::keys::{classify, GridKey};
use crate::legacy::MIGRATED_FROM;
use crate::verdict::{Judgement, Tally, Verdict};

/// DESIGN §2: a backup lives 7 days.
pub const BACKUP_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// How far a TTL may drift from the expected one by default.
pub const DEFAULT_TTL_TOLERANCE_MS: i64 = 2_000;

#[derive(Debug, Clone)]
pub struct GridOptions {
    pub exchanges: Vec<String>,
    /// The run used `--skip-closed`: closed positions are not migrated.
    pub skip_closed: bool,
    /// keyshift leaves users with more positions in place (README, beyond
    /// DESIGN): above it either outcome is accepted.
    pub max_positions_per_user: Option<usize>,
    /// How far a TTL may drift from the expected one (clock steps, the
    /// time between a read and the server's answer).
    pub ttl_tolerance_ms: i64,
    /// Keys with these prefixes are a runner's own bookkeeping (its
    /// journal, its lock): not judged.
    pub ignore_prefixes: Vec<Vec<u8>>,
}

impl GridOptions {
    pub fn new(exchanges: Vec<String>) -> Self {
        Self {
            exchanges,
            skip_closed: false,
            max_positions_per_user: None,
            ttl_tolerance_ms: DEFAULT_TTL_TOLERANCE_MS,
            ignore_prefixes: Vec::new(),
        }
    }
}

pub(crate) struct Checks {
    pub counts: Judgement,
    pub index: Judgement,
    pub fields: Judgement,
    pub backup: Judgement,
    pub ttl: Judgement,
    pub untouched: Judgement,
    pub tally: Tally,
    pub ambiguous: Vec<String>,
}

/// Judges `after` against `before` for grid-positions.
pub fn judge(before: &Before, after: &Image, opts: &GridOptions) -> Verdict {
    let mut c = Checks {
        counts: Judgement::new(
            "counts",
            "legacy positions found = migrated + skipped by a declared rule + quarantined",
        ),
        index: Judgement::new(
            "index",
            "every index member has its hash; every position hash is in its index",
        ),
        fields: Judgement::new(
            "fields",
            "each hash equals its legacy object, normalised, plus the metadata",
        ),
        backup: Judgement::new(
            "backup",
            "one backup per migrated key, byte-identical to the value read, TTL 7 days",
        ),
        ttl: Judgement::new("ttl", "legacy TTLs carry over to the new keys"),
        untouched: Judgement::new(
            "untouched",
            "every key outside the migration's patterns is unchanged",
        ),
        tally: Tally::default(),
        ambiguous: Vec::new(),
    };
    let after_by_user = group_by_user(after, opts);
    let mut accounted = Accounted::new();
    for (key, entry) in &before.image.keys {
        match classify(key, &opts.exchanges) {
            GridKey::Legacy { exchange, user } => {
                let user_keys = after_by_user.get(&(user, exchange));
                let judged = UserJudge {
                    before,
                    after,
                    opts,
                    legacy: std::str::from_utf8(key).expect("a legacy key is UTF-8"),
                    user,
                    exchange,
                    was: entry,
                    user_keys,
                };
                judged.judge(&mut c, &mut accounted);
            }
            GridKey::LegacyNotUtf8 => {
                c.tally.legacy_keys += 1;
                c.tally.ambiguous_keys += 1;
                note(&mut c.ambiguous, || {
                    format!("{}: name is not UTF-8", show(key))
                });
                // Left untouched is the only outcome the judge can see.
                untouched(&mut c.counts, key, entry, after, opts);
                accounted.insert(key);
            }
            _ if before.complete => {
                if !ignored(key, opts) {
                    untouched(&mut c.untouched, key, entry, after, opts);
                }
                accounted.insert(key);
            }
            _ => {}
        }
    }
    sweep(before, after, opts, &accounted, &mut c);
    finish(c, before)
}

fn finish(c: Checks, before: &Before) -> Verdict {
    let none = "the before-image holds no migrated legacy key";
    let untouched_why = if before.complete {
        "the before-image holds no key outside the migration"
    } else {
        "the before-image holds the legacy keys only; the gate judges the rest"
    };
    Verdict {
        migration: "grid-positions",
        invariants: vec![
            c.counts.finish("the before-image holds no legacy key"),
            c.index.finish(none),
            c.fields.finish(none),
            c.backup.finish(none),
            c.ttl.finish(none),
            c.untouched.finish(untouched_why),
        ],
        tally: c.tally,
        ambiguous: c.ambiguous,
    }
}

/// The keys a migration of `legacy` (holding `value`) writes, by the
/// oracle's own reading of DESIGN §2: each position hash and the index.
/// A verifier reads these (and the index's members) to judge one user
/// without scanning for them.
pub fn expected_keys(legacy: &str, value: &[u8], opts: &GridOptions) -> Vec<String> {
    keys_of(legacy, &crate::legacy::expect(value, opts.skip_closed))
}

/// Puts the legacy key `legacy`, as `entry` holds it, into `before` and
/// returns [`expected_keys`] of it, reading a string value once: judging
/// reuses that reading from [`Before::expectations`].
pub fn add_legacy(
    before: &mut Before,
    legacy: &str,
    entry: Entry,
    opts: &GridOptions,
) -> Vec<String> {
    let key = legacy.as_bytes().to_vec();
    let keys = match &entry.value {
        Value::String(bytes) => {
            let expectation = crate::legacy::expect(bytes, opts.skip_closed);
            let keys = keys_of(legacy, &expectation);
            before.expectations.insert(key.clone(), expectation);
            keys
        }
        _ => Vec::new(),
    };
    before.image.insert(key, entry);
    keys
}

fn keys_of(legacy: &str, expectation: &crate::legacy::Expectation) -> Vec<String> {
    let Some((exchange, user)) = legacy.split_once(":positions:") else {
        return Vec::new();
    };
    let mut keys = vec![crate::keys::index_key(user, exchange)];
    if let crate::legacy::Expectation::Migrate { positions, .. } = expectation {
        keys.extend(
            positions
                .iter()
                .map(|p| crate::keys::hash_key(user, exchange, p.member())),
        );
    }
    keys
}

/// A hash or index no run accounts for that carries the migration's
/// metadata: judged as an orphan by the index invariant.
pub fn orphan(key: &[u8], entry: &Entry, j: &mut Judgement) {
    if migrated_looking(&entry.value) {
        j.extra(|| {
            format!(
                "{}: a migrated-looking key for a user no run migrated",
                show(key)
            )
        });
    }
}

/// Keys a legacy key accounts for, borrowed from the images: only the
/// after-image's keys are looked up in it (by [`sweep`]).
type Accounted<'a> = std::collections::HashSet<&'a [u8]>;

type UserKeys<'a> = BTreeMap<(&'a str, &'a str), Vec<&'a [u8]>>;

/// The after-image's hash and index keys by (user, exchange).
fn group_by_user<'a>(after: &'a Image, opts: &GridOptions) -> UserKeys<'a> {
    let mut by_user: UserKeys = BTreeMap::new();
    for key in after.keys.keys() {
        match classify(key, &opts.exchanges) {
            GridKey::Hash { user, exchange, .. } | GridKey::Index { user, exchange } => {
                by_user.entry((user, exchange)).or_default().push(key);
            }
            _ => {}
        }
    }
    by_user
}

fn ignored(key: &[u8], opts: &GridOptions) -> bool {
    opts.ignore_prefixes.iter().any(|p| key.starts_with(p))
}

pub(crate) fn note(list: &mut Vec<String>, sample: impl FnOnce() -> String) {
    if list.len() < crate::verdict::MAX_SAMPLES {
        list.push(sample());
    }
}

/// The TTL `was` has left when `now_ms` comes: -1 for none.
fn remaining(was: &Entry, now_ms: i64) -> i64 {
    if was.pttl_ms < 0 {
        -1
    } else {
        was.pttl_ms - (now_ms - was.read_at_ms)
    }
}

/// Whether a TTL read at `now.read_at_ms` fits `was` ticking down.
fn ttl_fits(was: &Entry, now: &Entry, tolerance: i64) -> Result<(), String> {
    let expected = remaining(was, now.read_at_ms);
    match (expected, now.pttl_ms) {
        (-1, -1) => Ok(()),
        (-1, got) => Err(format!("TTL {got} ms, expected none")),
        (_, -1) => Err(format!("no TTL, expected about {expected} ms")),
        (e, got) if (got - e).abs() <= tolerance => Ok(()),
        (e, got) => Err(format!("TTL {got} ms, expected about {e} ms")),
    }
}

/// Whether `was` may have expired by the time the after-image was read.
fn may_have_expired(was: &Entry, after: &Image, tolerance: i64) -> bool {
    was.pttl_ms >= 0 && remaining(was, after.read_until_ms) <= tolerance
}

/// A key that must be as it was: same content, its TTL ticking down (or
/// expired).
fn untouched(j: &mut Judgement, key: &[u8], was: &Entry, after: &Image, opts: &GridOptions) {
    let tol = opts.ttl_tolerance_ms;
    match after.keys.get(key) {
        None if may_have_expired(was, after, tol) => j.expired(),
        None => j.fail(|| format!("{}: missing", show(key))),
        Some(now) if !was.value.same_content(&now.value) => j.fail(|| {
            format!(
                "{}: changed ({} before, {} now)",
                show(key),
                was.value.kind(),
                now.value.kind()
            )
        }),
        Some(now) => j.check(ttl_fits(was, now, tol).map_err(|e| format!("{}: {e}", show(key)))),
    }
}

/// Keys of the after-image no legacy key accounts for.
fn sweep(
    before: &Before,
    after: &Image,
    opts: &GridOptions,
    accounted: &Accounted,
    c: &mut Checks,
) {
    for (key, entry) in &after.keys {
        if accounted.contains(key.as_slice()) || ignored(key, opts) {
            continue;
        }
        match classify(key, &opts.exchanges) {
            GridKey::Hash { .. } | GridKey::Index { .. }
                if before.complete || migrated_looking(&entry.value) =>
            {
                c.index.extra(|| {
                    format!(
                        "{}: a migrated-looking key for a user no run migrated",
                        show(key)
                    )
                });
            }
            GridKey::Backup { .. } if before.complete => {
                c.backup
                    .extra(|| format!("{}: a backup of no migrated key", show(key)));
            }
            _ if before.complete && !before.image.keys.contains_key(key) => {
                c.untouched
                    .extra(|| format!("{}: unexpected key ({})", show(key), entry.value.kind()));
            }
            _ => {}
        }
    }
}

/// A hash carrying the migration's metadata. (An index set cannot tell
/// who wrote it: the application writes them for new users too.)
fn migrated_looking(value: &Value) -> bool {
    matches!(value, Value::Hash(h) if h.contains_key(MIGRATED_FROM.as_bytes()))
}

mod user;
use user::UserJudge;

#[cfg(test)]
mod tests;
