//! The write floor of Phase 2: the end state a migration must reach (every
//! hash, index set, backup and delete), as raw RESP for `redis-cli --pipe`.
//! Timing that against a server holding the same legacy data gives the
//! fastest the server can possibly reach that state; the migration's time
//! is reported as a ratio to it.

use std::io::{self, Write};

use keyshift_engine::grid_positions::plan::{plan_value, MigratePlan, PlanOptions, UserPlan};
use keyshift_engine::keys::{
    LegacyPositionsKey, BACKUP_TTL_SECS, META_MIGRATED_AT, META_MIGRATED_FROM,
};

use crate::seed::{KeyEntry, KeyValue, Keyspace};

/// One RESP command.
pub fn write_command<A: AsRef<[u8]>>(out: &mut impl Write, args: &[A]) -> io::Result<()> {
    write!(out, "*{}\r\n", args.len())?;
    for a in args {
        let a = a.as_ref();
        write!(out, "${}\r\n", a.len())?;
        out.write_all(a)?;
        out.write_all(b"\r\n")?;
    }
    Ok(())
}

/// Every legacy positions key of `ks` that Phase 2 would migrate, with its
/// value, parsed key and plan: the keys both floors cover.
fn migrating<'a>(
    ks: &'a Keyspace,
    exchanges: &'a [String],
) -> impl Iterator<Item = (&'a KeyEntry, &'a [u8], LegacyPositionsKey, MigratePlan)> + 'a {
    ks.entries.iter().filter_map(move |entry| {
        let legacy = LegacyPositionsKey::parse(&entry.key, exchanges)?;
        let KeyValue::String(value) = &entry.value else {
            return None;
        };
        match plan_value(value, PlanOptions::default()) {
            UserPlan::Migrate(plan) => Some((entry, value.as_slice(), legacy, plan)),
            UserPlan::Quarantine { .. } => None,
        }
    })
}

/// Writes, for every legacy key in `ks` that would migrate, the commands
/// that produce its end state. Returns the number of legacy keys covered.
pub fn write_end_state(
    ks: &Keyspace,
    exchanges: &[String],
    stamp: &str,
    migrated_at: &str,
    out: &mut impl Write,
) -> io::Result<usize> {
    let mut users = 0;
    for (entry, value, legacy, plan) in migrating(ks, exchanges) {
        users += 1;
        let ttl = entry.ttl_ms.map(|t| t.to_string());
        let mut members: Vec<String> = vec!["SADD".into(), legacy.index_key()];
        for p in plan.positions {
            let member = p.index_member();
            let key = legacy.position_key(&member);
            let mut args: Vec<&[u8]> = vec![b"HSET", key.as_bytes()];
            for (f, v) in &p.fields {
                args.push(f.as_bytes());
                args.push(v.as_bytes());
            }
            args.extend([
                META_MIGRATED_AT.as_bytes(),
                migrated_at.as_bytes(),
                META_MIGRATED_FROM.as_bytes(),
                entry.key.as_bytes(),
            ]);
            write_command(out, &args)?;
            if let Some(ttl) = &ttl {
                write_command(out, &["PEXPIRE", key.as_str(), ttl])?;
            }
            members.push(member);
        }
        if members.len() > 2 {
            write_command(out, &members)?;
            if let Some(ttl) = &ttl {
                write_command(out, &["PEXPIRE", legacy.index_key().as_str(), ttl])?;
            }
        }
        let backup = legacy.backup_key(stamp);
        let ex = BACKUP_TTL_SECS.to_string();
        write_command(
            out,
            &[
                b"SET".as_slice(),
                backup.as_bytes(),
                value,
                b"EX",
                ex.as_bytes(),
            ],
        )?;
        write_command(out, &["DEL", entry.key.as_str()])?;
    }
    Ok(users)
}

/// Writes, for every legacy key in `ks` that would migrate, the reads a
/// verifier of its end state cannot do without: the index members, each
/// position hash and its TTL, the backup and its TTL, and whether the
/// legacy key is gone. Timing that on the migrated server gives `verify`'s
/// floor, as [`write_end_state`] gives `migrate`'s. Returns the number of
/// legacy keys covered.
pub fn write_end_state_reads(
    ks: &Keyspace,
    exchanges: &[String],
    stamp: &str,
    out: &mut impl Write,
) -> io::Result<usize> {
    let mut users = 0;
    for (entry, _, legacy, plan) in migrating(ks, exchanges) {
        users += 1;
        write_command(out, &["SMEMBERS", legacy.index_key().as_str()])?;
        for p in plan.positions {
            let key = legacy.position_key(&p.index_member());
            write_command(out, &["HGETALL", key.as_str()])?;
            write_command(out, &["PTTL", key.as_str()])?;
        }
        let backup = legacy.backup_key(stamp);
        write_command(out, &["GET", backup.as_str()])?;
        write_command(out, &["PTTL", backup.as_str()])?;
        write_command(out, &["EXISTS", entry.key.as_str()])?;
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::KeyEntry;

    #[test]
    fn end_state_covers_hash_index_backup_and_delete() {
        let mut ks = Keyspace::new();
        let v = br#"[{"instId":"A","pos":"-1"}]"#.to_vec();
        ks.push(KeyEntry::new("okx:positions:7", KeyValue::String(v)));
        ks.push(KeyEntry::new(
            "okx:positions:8",
            KeyValue::String(b"junk".to_vec()),
        ));
        let mut out = Vec::new();
        let n = write_end_state(
            &ks,
            &["okx".into()],
            "20260101_000000",
            "2026-01-01T00:00:00Z",
            &mut out,
        )
        .unwrap();
        assert_eq!(n, 1);
        let text = String::from_utf8(out).unwrap();
        for needle in [
            "positions:7:okx:A:short",
            "SADD",
            "okx:positions:7:backup:20260101_000000",
            "DEL",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        assert!(!text.contains("okx:positions:8"));
    }

    #[test]
    fn end_state_reads_cover_index_hashes_backup_and_legacy() {
        let mut ks = Keyspace::new();
        let v = br#"[{"instId":"A","pos":"1"},{"instId":"B","pos":"-2"}]"#.to_vec();
        ks.push(KeyEntry::new("okx:positions:7", KeyValue::String(v)));
        ks.push(KeyEntry::new(
            "okx:positions:8",
            KeyValue::String(b"junk".to_vec()),
        ));
        let mut out = Vec::new();
        let n = write_end_state_reads(&ks, &["okx".into()], "20260101_000000", &mut out).unwrap();
        assert_eq!(n, 1);
        let text = String::from_utf8(out).unwrap();
        // SMEMBERS, 2 x (HGETALL, PTTL), GET, PTTL, EXISTS.
        assert_eq!(text.matches("\r\n*").count() + 1, 8, "{text}");
        for needle in [
            "SMEMBERS",
            "positions:index:7:okx",
            "positions:7:okx:A:long",
            "positions:7:okx:B:short",
            "okx:positions:7:backup:20260101_000000",
            "EXISTS",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        assert!(!text.contains("okx:positions:8"));
    }
}
