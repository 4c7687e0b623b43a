//! `keyshift scenario run NAME --engine CMD`: a scenario's faults (kill -9,
//! freeze, restart, dropped connections, writers) against a team's own
//! migration command instead of keyshift's migrator, judged by the oracle
//! against the keyspace as seeded, as `gate --engine` judges it.
//!
//! What a scenario expects of keyshift's own engine (its exit codes 1, 2,
//! 4 and 5, the findings its journal records, the messages it prints) is
//! not asked of a command keyshift knows nothing of: a run keyshift would
//! end with an error code may end with any code, a run it would finish
//! must finish (0 or 3), and the keyspace after the last run must be one
//! the oracle accepts. The scenario's `hold` and `fail` lists still apply:
//! the oracle's invariants bear the same names.

use std::collections::BTreeSet;

use keyshift_engine::connection::RedisConn;
use keyshift_engine::run::journal::JOURNAL_PREFIX;
use keyshift_oracle::grid::DEFAULT_TTL_TOLERANCE_MS;
use keyshift_oracle::keys::{classify, GridKey};
use keyshift_oracle::{Before, GridOptions, Image};

use super::checks::Checked;
use super::model::{AnyExit, ExitSpec, FaultName, MigrationName, Scenario};
use crate::commands::exchanges;
use crate::gate::external::{judgement_entry, rollback_judgement, run_command};
use crate::observe::read_all;
use crate::report::InvariantEntry;

/// The team's commands, and the migration they perform.
#[derive(Debug, Clone)]
pub struct ExternalEngine {
    pub migrate: String,
    pub rollback: Option<String>,
    pub migration: MigrationName,
}

/// Why a scenario cannot run against the command, if it cannot.
pub fn skip_reason(s: &Scenario, engine: &ExternalEngine) -> Option<String> {
    if s.server.cluster {
        return Some(
            "skipped: a cluster scenario (an external command is given one server's REDIS_URL)"
                .into(),
        );
    }
    let rogue = s.writers.rogue_legacy || s.faults.iter().any(|f| f.kind == FaultName::LegacyWrite);
    if rogue {
        return Some(
            "skipped: a rogue legacy writer (it replays how verify reports one, not a migration)"
                .into(),
        );
    }
    let other = s.runs.iter().find(|r| r.migration != engine.migration)?;
    Some(format!(
        "skipped: it runs {}, and the command is for {} (--migration)",
        other.migration.as_str(),
        engine.migration.as_str()
    ))
}

/// The scenario as asked of an external command (see the module comment),
/// and what was left out, in words for the report.
pub fn adapt(s: &Scenario) -> (Scenario, Option<String>) {
    let mut s = s.clone();
    for run in &mut s.runs {
        let finishes = run.exit.accepts(Some(0)) || run.exit.accepts(Some(3));
        run.exit = match run.exit {
            ExitSpec::Killed(k) => ExitSpec::Killed(k),
            _ if finishes => ExitSpec::AnyOf(vec![0, 3]),
            _ => ExitSpec::Any(AnyExit::Any),
        };
    }
    let mut left_out = Vec::new();
    if !s.expect.findings.is_empty() {
        left_out.push(format!(
            "{} finding(s) keyshift's journal would record",
            s.expect.findings.len()
        ));
    }
    if !s.expect.messages.is_empty() {
        left_out.push(format!(
            "{} message(s) keyshift would print",
            s.expect.messages.len()
        ));
    }
    s.expect.findings.clear();
    s.expect.messages.clear();
    let note = (!left_out.is_empty()).then(|| {
        format!(
            "external engine: not asked of it: {} (keyshift's own behaviour)",
            left_out.join(", ")
        )
    });
    (s, note)
}

/// What the checks leave aside: the users live writers wrote (no-lost-writes
/// judges them), and keys a fault set to expire.
pub struct Aside<'a> {
    pub writer_users: &'a BTreeSet<(String, String)>,
    pub expired: &'a [String],
}

/// The oracle's judgement of the keyspace now against `seeded`, one entry
/// per invariant (phase: the migration).
pub async fn check(
    conn: &RedisConn,
    engine: &ExternalEngine,
    seeded: &Image,
    aside: &Aside<'_>,
) -> anyhow::Result<Checked> {
    let exchanges = exchanges(None);
    let before = Before {
        image: before_image(seeded, aside, &exchanges),
        complete: true,
        ..Before::default()
    };
    let after = without_writers(read_all(conn).await?, aside.writer_users, &exchanges);
    let verdict = match engine.migration {
        MigrationName::GridPositions => {
            let mut opts = GridOptions::new(exchanges.clone());
            opts.ignore_prefixes = vec![JOURNAL_PREFIX.as_bytes().to_vec()];
            keyshift_oracle::judge_grid_positions(&before, &after, &opts)
        }
        MigrationName::OrderPlaced => keyshift_oracle::order_placed::judge(
            &before,
            &after,
            &exchanges,
            DEFAULT_TTL_TOLERANCE_MS,
        ),
    };
    let mut out = Checked::default();
    for j in verdict.invariants {
        out.push(engine.migration.as_str(), judgement_entry(j));
    }
    Ok(out)
}

/// Runs `--rollback-engine`, then judges the keyspace against `seeded`;
/// without one, the rollback is not run, and says why.
pub async fn rollback(
    conn: &RedisConn,
    url: &str,
    engine: &ExternalEngine,
    seeded: &Image,
    aside: &Aside<'_>,
) -> anyhow::Result<(InvariantEntry, Vec<String>)> {
    let Some(command) = &engine.rollback else {
        let why = "no --rollback-engine was given";
        let id = "rollback";
        let description = "migrate then rollback gives the keyspace as seeded, backups aside";
        return Ok((InvariantEntry::not_run(id, description, why), Vec::new()));
    };
    let exchanges = exchanges(None);
    let run = run_command(command, url, engine.migration.as_str(), &exchanges).await?;
    let restored = without_writers(read_all(conn).await?, aside.writer_users, &exchanges);
    let seeded = before_image(seeded, aside, &exchanges);
    let mut entry = judgement_entry(rollback_judgement(&seeded, &restored, &exchanges));
    if !run.finished() {
        entry.status = crate::report::Status::Fail;
        entry.samples.push(format!(
            "`{}` exited {:?}; last stderr: {}",
            run.command,
            run.exit_code,
            run.stderr_tail.last().cloned().unwrap_or_default()
        ));
    }
    Ok((entry, vec![run.command]))
}

/// The seeded image as the oracle's before-image: writers' users left out,
/// and a key a fault set to expire held to that expiry (1 ms), so that its
/// absence, or its new keys', counts as expired rather than lost.
fn before_image(seeded: &Image, aside: &Aside<'_>, exchanges: &[String]) -> Image {
    let mut image = without_writers(seeded.clone(), aside.writer_users, exchanges);
    for key in aside.expired {
        if let Some(e) = image.keys.get_mut(key.as_bytes()) {
            e.pttl_ms = 1;
        }
    }
    image
}

/// `image` without the keys of the (exchange, user id) pairs writers own:
/// their legacy keys, backups, position hashes and indexes.
fn without_writers(
    mut image: Image,
    writers: &BTreeSet<(String, String)>,
    exchanges: &[String],
) -> Image {
    if writers.is_empty() {
        return image;
    }
    image
        .keys
        .retain(|k, _| owner(k, exchanges).is_none_or(|pair| !writers.contains(&pair)));
    image
}

/// The (exchange, user id) a key of the grid families belongs to.
fn owner(key: &[u8], exchanges: &[String]) -> Option<(String, String)> {
    let pair = |ex: &str, user: &str| Some((ex.to_owned(), user.to_owned()));
    match classify(key, exchanges) {
        GridKey::Legacy { exchange, user } => pair(exchange, user),
        GridKey::Hash { user, exchange, .. } | GridKey::Index { user, exchange } => {
            pair(exchange, user)
        }
        GridKey::Backup { legacy, .. } => match classify(legacy.as_bytes(), exchanges) {
            GridKey::Legacy { exchange, user } => pair(exchange, user),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyshift_oracle::{Entry, Value};
    use std::path::Path;

    fn scenario(runs: &str, expect: &str) -> Scenario {
        let text = format!(
            "name = \"t\"\nreplays = \"r\"\n[dataset]\nbulk = [{{ key = \"okx:positions:w\", positions = 1 }}]\n[[fault]]\nkind = \"sigkill\"\nat_progress = 0.5\n{runs}\n[expect]\n{expect}\n"
        );
        Scenario::parse(Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn keyshift_error_codes_become_any_code_and_a_finish_stays_a_finish() {
        let s = scenario(
            "[[run]]\nexit = \"killed\"\n[[run]]\nexit = 4\n[[run]]\nexit = 3\n",
            "fail = [\"counts\"]\n[[expect.finding]]\nkind = \"quarantined\"\nkey = \"okx:positions:w\"\n",
        );
        let (adapted, note) = adapt(&s);
        let exits: Vec<String> = adapted.runs.iter().map(|r| r.exit.describe()).collect();
        assert_eq!(exits, ["killed", "any code", "one of [0, 3]"]);
        assert!(adapted.runs[1].exit.accepts(Some(1)) && !adapted.runs[1].exit.accepts(None));
        assert!(!adapted.runs[2].exit.accepts(Some(4)));
        assert!(adapted.expect.findings.is_empty());
        assert_eq!(adapted.expect.fail, ["counts"], "hold/fail still apply");
        let note = note.expect("a note on what was left out");
        assert!(note.contains("1 finding(s)"), "{note}");
        assert!(adapt(&scenario("[[run]]\nexit = \"killed\"\n", ""))
            .1
            .is_none());
    }

    #[test]
    fn a_cluster_scenario_or_another_migration_is_skipped_and_says_why() {
        let engine = ExternalEngine {
            migrate: "true".into(),
            rollback: None,
            migration: MigrationName::GridPositions,
        };
        let s = scenario("[[run]]\nexit = \"killed\"\n", "");
        assert!(skip_reason(&s, &engine).is_none());
        let mut cluster = s.clone();
        cluster.server.cluster = true;
        assert!(skip_reason(&cluster, &engine)
            .unwrap()
            .contains("cluster scenario"));
        let mut rogue = s.clone();
        rogue.writers.rogue_legacy = true;
        assert!(skip_reason(&rogue, &engine)
            .unwrap()
            .contains("rogue legacy writer"));
        let other = ExternalEngine {
            migration: MigrationName::OrderPlaced,
            ..engine
        };
        let why = skip_reason(&s, &other).unwrap();
        assert!(
            why.contains("runs grid-positions") && why.contains("for order-placed"),
            "{why}"
        );
    }

    #[test]
    fn writers_keys_are_left_out_and_faulted_keys_expire() {
        let ex = vec!["okx".to_owned()];
        let entry = |pttl_ms| Entry {
            value: Value::String(b"[]".to_vec()),
            pttl_ms,
            read_at_ms: 0,
        };
        let mut image = Image::default();
        for k in [
            "okx:positions:w",
            "okx:positions:w:backup:20261207_000000",
            "positions:w:okx:BTC:long",
            "positions:index:w:okx",
            "okx:positions:u",
            "other",
        ] {
            image.insert(k, entry(-1));
        }
        let writers = BTreeSet::from([("okx".to_owned(), "w".to_owned())]);
        let expired = vec!["okx:positions:u".to_owned()];
        let aside = Aside {
            writer_users: &writers,
            expired: &expired,
        };
        let out = before_image(&image, &aside, &ex);
        let keys: Vec<&[u8]> = out.keys.keys().map(|k| k.as_slice()).collect();
        assert_eq!(keys, [b"okx:positions:u".as_slice(), b"other"]);
        assert_eq!(out.keys[b"okx:positions:u".as_slice()].pttl_ms, 1);
    }
}
