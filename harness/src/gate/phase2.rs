//! The gate's Phase 2 (`grid-positions`), first run: a dry run that must
//! write nothing, the migration, then the engine's verify sharpened by the
//! gate's own checks (backups restored into a second fresh server, the
//! seeded truth or the snapshot's counts, untouched keys, api answers).
//! The rollback and the second migration follow in `rollback`.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::latest_run;
use keyshift_engine::grid_positions::runner::{
    migrate_grid_positions, MigrateOptions, MigrationReport,
};
use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::grid_positions::store::GridPositionsStore;
use keyshift_engine::grid_positions::verify::verify_grid_positions;
use keyshift_engine::run::invariant::InvariantResult;
use keyshift_engine::run::journal::{Outcome, RunRecord, JOURNAL_PREFIX};
use keyshift_oracle::{GridOptions, Image};

use super::{checks, external, not_journal, rdb, Engines, Gate, Source};
use crate::backend::Deployment;
use crate::commands::{locked, progress_bar};
use crate::digest::{compare, digest, Digest};
use crate::observe::read_all;
use crate::report::InvariantEntry;
use crate::seed::Keyspace;

/// The keyspace just before Phase 2: what its checks, and the rollback's,
/// compare with.
pub(super) struct Pre {
    pub digest: Digest,
    /// When the digest began, and how long it took.
    pub at: Instant,
    pub took: Duration,
    /// On a snapshot, its legacy values: what counts and the writers use
    /// (empty on a seeded keyspace, where the generator's are).
    pub snapshot_legacy: Keyspace,
    /// The whole keyspace, bytes-exact: the oracle's before-image.
    pub image: Image,
}

/// The pre-migration digest and when and how fast it was taken.
pub struct Before<'a> {
    pub digest: &'a Digest,
    pub taken: Instant,
    pub took: Duration,
}

impl Pre {
    pub fn before(&self) -> Before<'_> {
        Before {
            digest: &self.digest,
            taken: self.at,
            took: self.took,
        }
    }
}

/// The first migration and its invariants (the second run's are folded in
/// later).
pub(super) struct FirstRun {
    pub migration: MigrationReport,
    pub invariants: Vec<InvariantEntry>,
}

/// The second fresh server the backups are restored into, and what they
/// gave back.
struct Restored {
    /// Kept for as long as `conn` is used: the server goes on drop.
    _server: Deployment,
    conn: RedisConn,
    keys: HashSet<String>,
    digest: Digest,
}

impl<E: Engines> Gate<'_, E> {
    /// Phase 2's options: every default exchange, the engines' planner.
    pub(super) fn migrate_options(&self, dry_run: bool) -> MigrateOptions {
        let mut opts = MigrateOptions::new(self.exchanges.clone());
        opts.dry_run = dry_run;
        opts.planner = self.grid_planner;
        opts
    }

    pub(super) async fn before_phase2(&self) -> anyhow::Result<Pre> {
        let at = Instant::now();
        let digest = digest(&self.conn, not_journal).await?;
        let took = at.elapsed();
        let snapshot_legacy = match &self.source {
            Source::Snapshot(_) => rdb::read_legacy(&self.conn, &digest, &self.exchanges).await?,
            Source::Seeded { .. } => Keyspace::new(),
        };
        let image = read_all(&self.conn).await?;
        Ok(Pre {
            digest,
            at,
            took,
            snapshot_legacy,
            image,
        })
    }

    /// Plan, migrate, verify: the first run of Phase 2.
    pub(super) async fn phase2(&self, pre: &Pre) -> anyhow::Result<FirstRun> {
        let (plan, dry_run) = self.dry_run().await?;
        let migration = self.migrate().await?;
        let mut invariants = vec![dry_run];
        invariants.extend(self.verify_first_run(pre, &plan, &migration).await?);
        Ok(FirstRun {
            migration,
            invariants,
        })
    }

    /// The plan, which must write nothing at all.
    async fn dry_run(&self) -> anyhow::Result<(MigrationReport, InvariantEntry)> {
        let plan_at = Instant::now();
        let before_plan = digest(&self.conn, |_| true).await?;
        let opts = self.migrate_options(true);
        let plan = migrate_grid_positions(&self.grid, &opts, &|_| {}).await?;
        let after_plan = digest(&self.conn, |_| true).await?;
        let entry = checks::diff_invariant(
            "dry_run",
            "a dry run writes nothing (journal included)",
            &compare(&before_plan, &after_plan, checks::slack_since(plan_at)),
        );
        Ok((plan, entry))
    }

    async fn migrate(&self) -> anyhow::Result<MigrationReport> {
        let bar = progress_bar(self.grid.key_count().await?, "gate: migrate grid-positions");
        let tick = |n: usize| bar.inc(n as u64);
        let opts = self.migrate_options(false);
        let migration = locked(
            &self.conn,
            "gate: migrate grid-positions",
            migrate_grid_positions(&self.grid, &opts, &tick),
        )
        .await?;
        bar.finish_and_clear();
        Ok(migration)
    }

    /// The engine's verify of the run, its `backup` and `counts` sharpened
    /// by the gate's own evidence, then `untouched` and `api`.
    async fn verify_first_run(
        &self,
        pre: &Pre,
        plan: &MigrationReport,
        migration: &MigrationReport,
    ) -> anyhow::Result<Vec<InvariantEntry>> {
        let run = latest_run(&self.conn).await?;
        let verified = verify_grid_positions(&self.conn, &run, &|_| {}).await?;
        let post = digest(&self.conn, not_journal).await?;
        let outcomes = checks::read_outcomes(&self.conn, &run.run_id).await?;
        let restored = self.restore_backups(&run, &outcomes).await?;
        let slack = checks::slack_since(pre.at);
        let restore_diff = compare(
            &pre.digest.filtered(|k| restored.keys.contains(k)),
            &restored.digest,
            slack,
        );
        let mut engine_invariants = verified.invariants;
        for inv in &mut engine_invariants {
            match inv.id.as_str() {
                "backup" => checks::fold_diff(inv, &restore_diff, "restored from backups"),
                "counts" => self.check_counts(inv, pre, plan, migration, &outcomes),
                _ => {}
            }
        }
        let mut invariants: Vec<InvariantEntry> = engine_invariants
            .into_iter()
            .map(InvariantEntry::from_result)
            .collect();
        // The oracle's judgement, which shares no code with the planner:
        // a bug inside the planner passes the engine's verify, not this.
        let verdict = self.oracle_verdict(pre).await?;
        for inv in &mut invariants {
            if let Some(j) = verdict.get(&inv.id) {
                external::fold_judgement(inv, j);
            }
        }
        invariants.push(checks::untouched(
            &pre.digest,
            &post,
            &run,
            &self.exchanges,
            &outcomes,
            slack,
        ));
        invariants.push(checks::api(&restored.conn, &self.conn, &outcomes, &self.exchanges).await?);
        Ok(invariants)
    }

    /// The oracle on the keyspace before Phase 2 and as the run left it.
    async fn oracle_verdict(&self, pre: &Pre) -> anyhow::Result<keyshift_oracle::Verdict> {
        let before = keyshift_oracle::Before {
            image: pre.image.clone(),
            complete: true,
            ..Default::default()
        };
        let after = read_all(&self.conn).await?;
        let mut opts = GridOptions::new(self.exchanges.clone());
        opts.ignore_prefixes = vec![JOURNAL_PREFIX.as_bytes().to_vec()];
        opts.max_positions_per_user = Some(MigrateOptions::new(vec![]).max_positions_per_user);
        Ok(keyshift_oracle::judge_grid_positions(
            &before, &after, &opts,
        ))
    }

    /// Backups restored into a second fresh server (a fresh cluster for a
    /// cluster) must give back the legacy keys.
    async fn restore_backups(
        &self,
        run: &RunRecord,
        outcomes: &BTreeMap<String, Outcome>,
    ) -> anyhow::Result<Restored> {
        let server = Deployment::start(self.server.kind(), self.server.is_cluster(), &[]).await?;
        let conn = connect(&server.url()).await?;
        let keys = checks::restore_backups(&self.conn, &conn, run, outcomes).await?;
        let digest = digest(&conn, |_| true).await?;
        Ok(Restored {
            _server: server,
            conn,
            keys,
            digest,
        })
    }

    /// `counts` against the generator's truth, or the snapshot as loaded.
    fn check_counts(
        &self,
        inv: &mut InvariantResult,
        pre: &Pre,
        plan: &MigrationReport,
        migration: &MigrationReport,
        outcomes: &BTreeMap<String, Outcome>,
    ) {
        match &self.source {
            Source::Seeded { generated, .. } => {
                checks::check_truth(inv, generated, plan, migration, outcomes)
            }
            Source::Snapshot(_) => rdb::check_counts(
                inv,
                &pre.digest,
                &pre.snapshot_legacy,
                &self.exchanges,
                plan,
                migration,
                outcomes,
            ),
        }
    }
}
