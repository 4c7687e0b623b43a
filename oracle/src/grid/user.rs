//! One legacy key's judgement: how it ended (left, migrated, gone) and,
//! when migrated, its backup, hashes, index and TTLs.

use std::borrow::Cow;
use std::collections::BTreeSet;

use super::{may_have_expired, note, ttl_fits, Accounted, Checks, GridOptions, BACKUP_TTL_MS};
use crate::fields::Fields;
use crate::image::{show, Before, Entry, Image, Value};
use crate::keys::{classify, hash_key, index_key, GridKey};
use crate::legacy::{expect, Expectation, ExpectedPosition, MIGRATED_AT, MIGRATED_FROM};

/// How one legacy key ended.
enum Ending<'a> {
    /// Still there, as it was.
    Untouched,
    /// Still there, with other content.
    Changed(&'a Entry),
    /// Gone, with these new backups.
    Migrated(Vec<(&'a [u8], &'a Entry)>),
    /// Gone, with no backup; its TTL may have run out.
    Gone { may_have_expired: bool },
}

pub(super) struct UserJudge<'a> {
    pub(super) before: &'a Before,
    pub(super) after: &'a Image,
    pub(super) opts: &'a GridOptions,
    pub(super) legacy: &'a str,
    pub(super) user: &'a str,
    pub(super) exchange: &'a str,
    pub(super) was: &'a Entry,
    pub(super) user_keys: Option<&'a Vec<&'a [u8]>>,
}

impl<'a> UserJudge<'a> {
    fn ending(&self) -> Ending<'a> {
        if let Some(now) = self.after.keys.get(self.legacy.as_bytes()) {
            return if self.was.value.same_content(&now.value) {
                Ending::Untouched
            } else {
                Ending::Changed(now)
            };
        }
        let prefix = format!("{}:backup:", self.legacy);
        let stamp = self.before.stamps.get(self.legacy.as_bytes());
        let backups: Vec<(&[u8], &Entry)> = self
            .after
            .keys
            .range(prefix.as_bytes().to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix.as_bytes()))
            .filter(|(k, _)| match stamp {
                Some(s) => k[prefix.len()..] == *s.as_bytes(),
                None => !self.before.image.keys.contains_key(*k),
            })
            .filter(|(k, _)| matches!(classify(k, &self.opts.exchanges), GridKey::Backup { .. }))
            .map(|(k, e)| (k.as_slice(), e))
            .collect();
        if backups.is_empty() {
            Ending::Gone {
                may_have_expired: may_have_expired(
                    self.was,
                    self.after,
                    self.opts.ttl_tolerance_ms,
                ),
            }
        } else {
            Ending::Migrated(backups)
        }
    }

    fn expectation(&self) -> Cow<'a, Expectation> {
        let cached = self.before.expectations.get(self.legacy.as_bytes());
        let mut e = match (&self.was.value, cached) {
            (Value::String(_), Some(e)) => Cow::Borrowed(e),
            (Value::String(bytes), None) => Cow::Owned(expect(bytes, self.opts.skip_closed)),
            (Value::StringDigest(_), _) => Cow::Owned(Expectation::Quarantine {
                reason: "left in place by the run (known by its digest)".into(),
                positions: 0,
            }),
            (other, _) => Cow::Owned(Expectation::Quarantine {
                reason: format!("a Redis {}, not a string", other.kind()),
                positions: 0,
            }),
        };
        // A key the migration would create that was there before it (a
        // new-layout writer got there first) makes the user a conflict,
        // which DESIGN §6 counts with the quarantined keys (exit 3): the
        // legacy key stays, and so does what was there.
        if let Expectation::Migrate { positions, .. } = &*e {
            let existed = |key: String| self.before.image.keys.contains_key(key.as_bytes());
            let taken = existed(index_key(self.user, self.exchange))
                || positions
                    .iter()
                    .any(|p| existed(hash_key(self.user, self.exchange, p.member())));
            if taken {
                e = Cow::Owned(Expectation::Quarantine {
                    reason: "a key the migration would create existed before it: a conflict".into(),
                    positions: positions.len(),
                });
            }
        }
        if let (Expectation::Migrate { positions, .. }, Some(max)) =
            (&*e, self.opts.max_positions_per_user)
        {
            if positions.len() > max {
                e = Cow::Owned(Expectation::Ambiguous {
                    reason: format!(
                        "{} positions, above keyshift's limit {max}",
                        positions.len()
                    ),
                    positions: positions.len(),
                });
            }
        }
        e
    }

    pub(super) fn judge(&self, c: &mut Checks, accounted: &mut Accounted<'a>) {
        accounted.insert(self.legacy.as_bytes());
        c.tally.legacy_keys += 1;
        let expectation = self.expectation();
        let ending = self.ending();
        if let Ending::Migrated(backups) = &ending {
            for (k, _) in backups {
                accounted.insert(k);
            }
        }
        let legacy = self.legacy;
        // A run's journal says it migrated this key: a legacy key there now
        // came back after the run.
        let journaled = self.before.stamps.contains_key(legacy.as_bytes());
        if journaled && matches!(ending, Ending::Untouched | Ending::Changed(_)) {
            c.counts.fail(|| {
                format!(
                    "{legacy}: legacy key reappeared after its migration: a writer still \
                     uses the old layout"
                )
            });
            return;
        }
        match (&*expectation, &ending) {
            (
                _,
                Ending::Gone {
                    may_have_expired: true,
                },
            ) => {
                c.tally.expired_keys += 1;
                c.counts.expired();
                self.account_user_keys(accounted);
            }
            (Expectation::Quarantine { reason, .. }, Ending::Gone { .. }) => {
                c.counts.fail(|| {
                    format!(
                        "{legacy}: a quarantined legacy key vanished ({reason}): its value is lost"
                    )
                });
            }
            (_, Ending::Gone { .. }) => {
                c.counts
                    .fail(|| format!("{legacy}: gone with no backup: its value is lost"));
                c.backup.fail(|| format!("{legacy}: no backup of this run"));
            }
            (_, Ending::Changed(now)) => {
                c.counts.fail(|| {
                    format!(
                        "{legacy}: changed since the before-image ({} now): a writer still \
                         uses the old layout, or the migration rewrote it",
                        now.value.kind()
                    )
                });
            }
            (
                Expectation::Migrate {
                    positions,
                    skipped_closed,
                },
                Ending::Untouched,
            ) => {
                c.tally.positions_found += (positions.len() + skipped_closed) as u64;
                c.counts.fail(|| {
                    format!(
                        "{legacy}: left in place, but DESIGN §2 migrates it ({} positions)",
                        positions.len()
                    )
                });
            }
            (
                Expectation::Migrate {
                    positions,
                    skipped_closed,
                },
                Ending::Migrated(backups),
            ) => {
                c.tally.migrated_keys += 1;
                c.tally.positions_found += (positions.len() + skipped_closed) as u64;
                c.tally.skipped_closed += *skipped_closed as u64;
                self.judge_backup(c, backups);
                self.judge_positions(c, positions, accounted);
            }
            (Expectation::Quarantine { positions, .. }, Ending::Untouched) => {
                c.tally.quarantined_keys += 1;
                c.tally.positions_found += *positions as u64;
                c.counts.pass();
            }
            (Expectation::Quarantine { reason, .. }, Ending::Migrated(_)) => {
                c.counts.fail(|| {
                    format!("{legacy}: migrated, but DESIGN §2 leaves it untouched ({reason})")
                });
            }
            (Expectation::Ambiguous { reason, positions }, ending) => {
                c.tally.ambiguous_keys += 1;
                c.tally.positions_found += *positions as u64;
                let how = if matches!(ending, Ending::Untouched) {
                    "left untouched"
                } else {
                    "migrated"
                };
                note(&mut c.ambiguous, || format!("{legacy}: {reason} ({how})"));
                c.counts.pass();
                if let Ending::Migrated(backups) = ending {
                    self.judge_backup(c, backups);
                    self.judge_index_only(c, accounted);
                }
            }
        }
        if matches!(ending, Ending::Untouched) {
            // A key left in place keeps its TTL.
            let now = &self.after.keys[self.legacy.as_bytes()];
            c.ttl.check(
                ttl_fits(self.was, now, self.opts.ttl_tolerance_ms)
                    .map_err(|e| format!("{legacy}: {e}")),
            );
        }
    }

    /// Keys of this user that a migration that has since expired wrote.
    fn account_user_keys(&self, accounted: &mut Accounted<'a>) {
        for k in self.user_keys.into_iter().flatten() {
            accounted.insert(k);
        }
    }

    fn judge_backup(&self, c: &mut Checks, backups: &[(&[u8], &Entry)]) {
        let legacy = self.legacy;
        if backups.len() > 1 {
            c.backup
                .fail(|| format!("{legacy}: {} backups of one run", backups.len()));
            return;
        }
        let (key, backup) = backups[0];
        let key = show(key);
        let recorded = self.before.recorded_digests.get(legacy.as_bytes());
        let content = match (&backup.value, &self.was.value) {
            (Value::String(b), _)
                if recorded.is_some_and(|d| *d != crate::image::sha256_hex(b)) =>
            {
                Err(format!(
                    "{key}: differs from the value the migration read (digest)"
                ))
            }
            (now, was) if !was.same_content(now) => {
                Err(format!("{key}: not byte-identical to the legacy value"))
            }
            _ => Ok(()),
        };
        // Written between the before-image and the read: 7 days from then.
        let lo =
            BACKUP_TTL_MS - (backup.read_at_ms - self.was.read_at_ms) - self.opts.ttl_tolerance_ms;
        let hi = BACKUP_TTL_MS + self.opts.ttl_tolerance_ms;
        let ttl = if backup.pttl_ms < lo || backup.pttl_ms > hi {
            Err(format!(
                "{key}: TTL {} ms, expected 7 days from when it was written ({lo}..{hi})",
                backup.pttl_ms
            ))
        } else {
            Ok(())
        };
        c.backup.check(content.and(ttl));
    }

    /// The hashes and index of a value DESIGN migrates.
    fn judge_positions(
        &self,
        c: &mut Checks,
        positions: &[ExpectedPosition],
        accounted: &mut Accounted<'a>,
    ) {
        let (user, exchange, legacy) = (self.user, self.exchange, self.legacy);
        let tol = self.opts.ttl_tolerance_ms;
        let expired = may_have_expired(self.was, self.after, tol);
        let mut present = 0;
        for p in positions {
            let key = hash_key(user, exchange, p.member());
            match self.after.keys.get_key_value(key.as_bytes()) {
                None if expired => {
                    // Gone when the carried-over TTL says it would be.
                    c.fields.expired();
                    c.ttl.expired();
                }
                None => c
                    .fields
                    .fail(|| format!("{key}: missing ({legacy} holds {})", p.member())),
                Some((held, now)) => {
                    accounted.insert(held);
                    present += 1;
                    c.fields.check(fields_match(&key, &now.value, p, legacy));
                    c.ttl
                        .check(ttl_fits(self.was, now, tol).map_err(|e| format!("{key}: {e}")));
                }
            }
        }
        if present == positions.len() || expired {
            c.counts.pass();
        } else {
            c.counts
                .fail(|| format!("{legacy}: {} positions, {present} hashes", positions.len()));
        }
        let index = index_key(user, exchange);
        // The members are unique (DESIGN quarantines a collision), so the
        // index holds exactly them when it holds as many, each of them.
        let exact = |members: &BTreeSet<Vec<u8>>| {
            members.len() == positions.len()
                && positions
                    .iter()
                    .all(|p| members.contains(p.member().as_bytes()))
        };
        match self.after.keys.get_key_value(index.as_bytes()) {
            None if positions.is_empty() || expired => c.index.pass(),
            None => c.index.fail(|| format!("{index}: missing")),
            Some((held, now)) => {
                accounted.insert(held);
                match &now.value {
                    Value::Set(members) if exact(members) => {
                        c.index.pass();
                        c.ttl.check(
                            ttl_fits(self.was, now, tol).map_err(|e| format!("{index}: {e}")),
                        );
                    }
                    Value::Set(members) => c.index.fail(|| {
                        let wanted: BTreeSet<Vec<u8>> = positions
                            .iter()
                            .map(|p| p.member().as_bytes().to_vec())
                            .collect();
                        let lacks: Vec<String> =
                            wanted.difference(members).map(|m| show(m)).collect();
                        let extra: Vec<String> =
                            members.difference(&wanted).map(|m| show(m)).collect();
                        format!("{index}: lacks {lacks:?}, has extra {extra:?}")
                    }),
                    other => c
                        .index
                        .fail(|| format!("{index}: a {}, not a set", other.kind())),
                }
            }
        }
        // Any other hash of this user: not in the legacy value.
        for k in self.user_keys.into_iter().flatten() {
            if !accounted.contains(*k) && !self.before.image.keys.contains_key(*k) {
                accounted.insert(k);
                c.index
                    .extra(|| format!("{}: not a position of {legacy}", show(k)));
            }
        }
    }

    /// For a migrated ambiguous value: the index and the hashes agree.
    fn judge_index_only(&self, c: &mut Checks, accounted: &mut Accounted<'a>) {
        let index = index_key(self.user, self.exchange);
        let members: BTreeSet<Vec<u8>> = match self.after.get(&index).map(|e| &e.value) {
            Some(Value::Set(m)) => m.clone(),
            _ => BTreeSet::new(),
        };
        let prefix = format!("positions:{}:{}:", self.user, self.exchange);
        let hashes: BTreeSet<Vec<u8>> = self
            .user_keys
            .into_iter()
            .flatten()
            .filter_map(|k| k.strip_prefix(prefix.as_bytes()).map(<[u8]>::to_vec))
            .collect();
        c.index.check(if members == hashes {
            Ok(())
        } else {
            Err(format!("{index}: members and hashes differ"))
        });
        self.account_user_keys(accounted);
    }
}

/// A hash against its expected position: every field, and the metadata.
fn fields_match(key: &str, got: &Value, p: &ExpectedPosition, legacy: &str) -> Result<(), String> {
    let Value::Hash(h) = got else {
        return Err(format!("{key}: a {}, not a hash", got.kind()));
    };
    if exactly(h, p, legacy) {
        return Ok(());
    }
    // Not so: say how, field by field.
    for (name, want) in &p.fields {
        match h.get(name.as_bytes()) {
            None => return Err(format!("{key}: lacks field {name:?} ({want:?})")),
            Some(v) if v != want.as_bytes() => {
                return Err(format!(
                    "{key}: field {name:?} is {:?}, expected {want:?}",
                    show(v)
                ))
            }
            Some(_) => {}
        }
    }
    match h.get(MIGRATED_FROM.as_bytes()) {
        Some(v) if v == legacy.as_bytes() => {}
        other => {
            return Err(format!(
                "{key}: migrated_from is {:?}, expected {legacy:?}",
                other.map(show)
            ))
        }
    }
    match h.get(MIGRATED_AT.as_bytes()) {
        Some(t) if utc_rfc3339(t) => {}
        other => {
            let other = other.map(|v| std::str::from_utf8(v));
            return Err(format!("{key}: migrated_at {other:?} is not RFC 3339 UTC"));
        }
    }
    let expected = p.fields.len() + 2;
    if h.len() != expected {
        let extra: Vec<String> = h
            .keys()
            .filter(|&k| {
                k != MIGRATED_AT.as_bytes()
                    && k != MIGRATED_FROM.as_bytes()
                    && !p.fields.iter().any(|(n, _)| n.as_bytes() == k)
            })
            .map(show)
            .collect();
        return Err(format!("{key}: extra fields {extra:?}"));
    }
    Ok(())
}

/// Whether `h` holds exactly the position's fields and the metadata, in
/// one pass over `h`: each of its fields is found among the few expected
/// ones by equality. Names are unique on both sides (DESIGN's reading
/// makes a twice-named field ambiguous, and metadata names are not among
/// them), so as many fields, each found, is the same set.
fn exactly(h: &Fields, p: &ExpectedPosition, legacy: &str) -> bool {
    h.len() == p.fields.len() + 2
        && h.iter().all(|(name, value)| {
            if name == MIGRATED_FROM.as_bytes() {
                value == legacy.as_bytes()
            } else if name == MIGRATED_AT.as_bytes() {
                utc_rfc3339(value)
            } else {
                p.fields
                    .iter()
                    .any(|(n, want)| n.as_bytes() == name && want.as_bytes() == value)
            }
        })
}

/// `migrated_at`'s form: RFC 3339 at UTC.
fn utc_rfc3339(value: &[u8]) -> bool {
    std::str::from_utf8(value).is_ok_and(|t| {
        chrono::DateTime::parse_from_rfc3339(t).is_ok_and(|d| d.offset().local_minus_utc() == 0)
    })
}
