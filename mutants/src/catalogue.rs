//! The mutants: one bug class each, as a real engine could get it wrong,
//! with the invariants (`phase/invariant`, as the gate report names them)
//! that must catch it. Most alter the planned write at the store seam; the
//! `planner-*` ones and `order-placed-equal-ignores-values` are bugs inside
//! the plan itself (`planner`), so the run's own record agrees with them. The dataset that exposes each is named too: the
//! generated keyspace (long/short accounts, closed positions, object-shaped
//! values, legacy TTLs, order-placed hashes with TTLs, writers) and
//! `mutants/fixtures/` (glob-metacharacter and prefix-neighbour users).

/// A deliberately broken engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mutant {
    SignOnlySide,
    FixedFieldList,
    ClosedSkippedSilently,
    ReadThenDelete,
    BackupWithoutTtl,
    DeleteBeforeBackup,
    GlobRollbackLeavesIndex,
    PrefixGlobRollback,
    UnescapedScanPattern,
    ObjectValuesSkippedButDeleted,
    LegacyTtlNotCarried,
    IndexMissingMember,
    OrderPlacedTtlDropped,
    PlannerSignOnlySide,
    PlannerClosedSkippedUncounted,
    PlannerNumbersThroughF64,
    PlannerObjectsNotUnderstood,
    OrderPlacedEqualIgnoresValues,
}

impl Mutant {
    pub const ALL: [Mutant; 18] = [
        Mutant::SignOnlySide,
        Mutant::FixedFieldList,
        Mutant::ClosedSkippedSilently,
        Mutant::ReadThenDelete,
        Mutant::BackupWithoutTtl,
        Mutant::DeleteBeforeBackup,
        Mutant::GlobRollbackLeavesIndex,
        Mutant::PrefixGlobRollback,
        Mutant::UnescapedScanPattern,
        Mutant::ObjectValuesSkippedButDeleted,
        Mutant::LegacyTtlNotCarried,
        Mutant::IndexMissingMember,
        Mutant::OrderPlacedTtlDropped,
        Mutant::PlannerSignOnlySide,
        Mutant::PlannerClosedSkippedUncounted,
        Mutant::PlannerNumbersThroughF64,
        Mutant::PlannerObjectsNotUnderstood,
        Mutant::OrderPlacedEqualIgnoresValues,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mutant::SignOnlySide => "sign-only-side",
            Mutant::FixedFieldList => "fixed-field-list",
            Mutant::ClosedSkippedSilently => "closed-skipped-silently",
            Mutant::ReadThenDelete => "read-then-delete",
            Mutant::BackupWithoutTtl => "backup-without-ttl",
            Mutant::DeleteBeforeBackup => "delete-before-backup",
            Mutant::GlobRollbackLeavesIndex => "glob-rollback-leaves-index",
            Mutant::PrefixGlobRollback => "prefix-glob-rollback",
            Mutant::UnescapedScanPattern => "unescaped-scan-pattern",
            Mutant::ObjectValuesSkippedButDeleted => "object-values-skipped-but-deleted",
            Mutant::LegacyTtlNotCarried => "legacy-ttl-not-carried",
            Mutant::IndexMissingMember => "index-missing-member",
            Mutant::OrderPlacedTtlDropped => "order-placed-ttl-dropped",
            Mutant::PlannerSignOnlySide => "planner-sign-only-side",
            Mutant::PlannerClosedSkippedUncounted => "planner-closed-skipped-uncounted",
            Mutant::PlannerNumbersThroughF64 => "planner-numbers-through-f64",
            Mutant::PlannerObjectsNotUnderstood => "planner-objects-not-understood",
            Mutant::OrderPlacedEqualIgnoresValues => "order-placed-equal-ignores-values",
        }
    }

    pub fn from_name(name: &str) -> Option<Mutant> {
        Mutant::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The bug, and what in the dataset exposes it.
    pub fn bug(self) -> &'static str {
        match self {
            Mutant::SignOnlySide => "Phase 2 takes the side from the sign of `pos` only, ignoring `posSide`: a long/short-mode short (positive pos) is filed as long.",
            Mutant::FixedFieldList => "Phase 2 copies a fixed list of fields (instId, instType, posSide, pos, avgPx, upl, lever, mgnMode) and drops the rest.",
            Mutant::ClosedSkippedSilently => "Phase 2 leaves closed positions (pos 0) out without --skip-closed and without counting them as skipped.",
            Mutant::ReadThenDelete => "Phase 2 re-reads the legacy value just before writing and writes the hashes planned from the earlier read, with no compare on the value it planned from: a writer's update in between is lost (writers run through the migration).",
            Mutant::BackupWithoutTtl => "Phase 2 writes the backup without its 7-day TTL.",
            Mutant::DeleteBeforeBackup => "Phase 2 deletes the legacy key, then takes the backup by reading it: the read finds nothing, so no backup is written.",
            Mutant::GlobRollbackLeavesIndex => "Rollback restores the legacy key and deletes `positions:{uid}:{exchange}:*` by SCAN, but forgets the index sets.",
            Mutant::PrefixGlobRollback => "Rollback deletes `positions:{uid}*` (no separator after the id): user mx-1's rollback deletes the pre-existing hashes of user mx-12 (mutants/fixtures).",
            Mutant::UnescapedScanPattern => "Rollback's SCAN pattern `positions:{uid}:{exchange}:*` does not escape the id: user `g*`'s rollback deletes the pre-existing hashes of user `gz` (mutants/fixtures).",
            Mutant::ObjectValuesSkippedButDeleted => "Phase 2 handles JSON arrays only: an object-shaped value (positions keyed by instId) migrates no position, yet its legacy key is backed up and deleted.",
            Mutant::LegacyTtlNotCarried => "Phase 2 does not carry a legacy key's TTL over to the new hashes and index.",
            Mutant::IndexMissingMember => "Phase 2's index loop skips one member: each user's first position hash is missing from its index set.",
            Mutant::OrderPlacedTtlDropped => "Phase 1 moves an order-placed hash but drops its TTL (copy without PEXPIRE).",
            Mutant::PlannerSignOnlySide => "Phase 2's planner takes the side from the sign of `pos` only, ignoring `posSide`: a long/short-mode short (positive pos) is planned, written and journaled as long.",
            Mutant::PlannerClosedSkippedUncounted => "Phase 2's planner leaves closed positions (pos 0) out without --skip-closed and without counting them as skipped: the journal's counts agree with the loss.",
            Mutant::PlannerNumbersThroughF64 => "Phase 2's planner re-prints a field holding a JSON number through f64: 3.50 becomes 3.5, 1e5 100000, 1.0 1, 2.5e-5 0.000025, and an integer beyond 2^53 loses digits (mutants/fixtures user mx-num; the generator's feeRate).",
            Mutant::PlannerObjectsNotUnderstood => "Phase 2's planner reads only arrays: an object-shaped value (positions keyed by instId) plans as holding no position, so the user is backed up and deleted with no hash, and journaled as migrated with 0 positions.",
            Mutant::OrderPlacedEqualIgnoresValues => "Phase 1's planner decides \"target equal\" by a digest of the field names only: a target with the same levels but other flags is planned as equal, the legacy key to be dropped (mutants/fixtures user mx-op; the move script's own re-check then refuses the drop).",
        }
    }

    /// The invariants that must fail, as `phase/invariant`.
    pub fn expected(self) -> &'static [&'static str] {
        match self {
            Mutant::SignOnlySide | Mutant::FixedFieldList => &["grid-positions/fields"],
            Mutant::ClosedSkippedSilently => &["grid-positions/counts"],
            Mutant::ReadThenDelete => &["grid-positions/no-lost-writes"],
            Mutant::BackupWithoutTtl => &["grid-positions/backup"],
            Mutant::DeleteBeforeBackup => &["grid-positions/backup", "grid-positions/rollback"],
            Mutant::GlobRollbackLeavesIndex
            | Mutant::PrefixGlobRollback
            | Mutant::UnescapedScanPattern => &["grid-positions/rollback"],
            Mutant::ObjectValuesSkippedButDeleted => {
                &["grid-positions/counts", "grid-positions/fields"]
            }
            Mutant::LegacyTtlNotCarried => &["grid-positions/ttl"],
            Mutant::IndexMissingMember => &["grid-positions/index"],
            Mutant::OrderPlacedTtlDropped => &["order-placed/ttl"],
            Mutant::PlannerSignOnlySide | Mutant::PlannerNumbersThroughF64 => {
                &["grid-positions/fields"]
            }
            Mutant::PlannerClosedSkippedUncounted => &["grid-positions/counts"],
            Mutant::PlannerObjectsNotUnderstood => {
                &["grid-positions/counts", "grid-positions/fields"]
            }
            Mutant::OrderPlacedEqualIgnoresValues => &["order-placed/counts"],
        }
    }

    /// How a glob-based rollback mutant builds its pattern, if this is one.
    pub fn glob_rollback(self) -> Option<GlobRollback> {
        match self {
            Mutant::GlobRollbackLeavesIndex => Some(GlobRollback {
                escape: true,
                separator: true,
                delete_index: false,
            }),
            Mutant::PrefixGlobRollback => Some(GlobRollback {
                escape: true,
                separator: false,
                delete_index: true,
            }),
            Mutant::UnescapedScanPattern => Some(GlobRollback {
                escape: false,
                separator: true,
                delete_index: true,
            }),
            _ => None,
        }
    }
}

/// The three ways a rollback by glob goes wrong here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobRollback {
    /// The user id is glob-escaped in the pattern.
    pub escape: bool,
    /// The pattern has `:{exchange}:` after the id (else `positions:{uid}*`).
    pub separator: bool,
    /// The index set is deleted too.
    pub delete_index: bool,
}

impl GlobRollback {
    /// The SCAN pattern for one user's position hashes.
    pub fn pattern(self, user_id: &str, exchange: &str) -> String {
        let id = if self.escape {
            keyshift_engine::keys::escape_glob(user_id)
        } else {
            user_id.to_owned()
        };
        if self.separator {
            format!(
                "positions:{id}:{}:*",
                keyshift_engine::keys::escape_glob(exchange)
            )
        } else {
            format!("positions:{id}*")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        for m in Mutant::ALL {
            assert_eq!(Mutant::from_name(m.name()), Some(m));
            assert!(!m.expected().is_empty(), "{} names no invariant", m.name());
        }
        let names: std::collections::HashSet<_> = Mutant::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names.len(), Mutant::ALL.len());
    }

    #[test]
    fn glob_patterns_reach_exactly_the_neighbours_each_bug_reaches() {
        let prefix = Mutant::PrefixGlobRollback.glob_rollback().unwrap();
        assert_eq!(prefix.pattern("mx-1", "okx"), "positions:mx-1*");
        let unescaped = Mutant::UnescapedScanPattern.glob_rollback().unwrap();
        assert_eq!(unescaped.pattern("g*", "okx"), "positions:g*:okx:*");
        let leaves = Mutant::GlobRollbackLeavesIndex.glob_rollback().unwrap();
        assert_eq!(leaves.pattern("g*", "okx"), "positions:g\\*:okx:*");
        assert!(!leaves.delete_index);
    }
}
