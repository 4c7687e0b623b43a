//! The kill matrix: the production engines (the control) and every mutant
//! through the gate pipeline on one small keyspace, and which invariants
//! each one tripped.

use std::path::PathBuf;
use std::time::Instant;

use keyshift_harness::backend::BackendKind;
use keyshift_harness::cli::{GateArgs, Migration};
use keyshift_harness::gate::{evaluate, Engines, Production};
use keyshift_harness::report::{KillMatrix, KillRow};
use keyshift_harness::seed::GenConfig;

use crate::catalogue::Mutant;
use crate::stores::MutantEngines;

#[derive(Debug, Clone)]
pub struct MatrixConfig {
    pub backend: BackendKind,
    pub users: usize,
    pub seed: u64,
    /// The mutant-specific keyspace, seeded beside the generated users.
    pub fixtures: PathBuf,
    pub mutants: Vec<Mutant>,
}

impl MatrixConfig {
    /// Small enough that the whole matrix runs in well under two minutes
    /// on a debug build; the rates below make every bug class's trigger
    /// common in it.
    pub const DEFAULT_USERS: usize = 20;
    pub const DEFAULT_SEED: u64 = 5;

    pub fn new(backend: BackendKind) -> Self {
        Self {
            backend,
            users: Self::DEFAULT_USERS,
            seed: Self::DEFAULT_SEED,
            fixtures: default_fixtures(),
            mutants: Mutant::ALL.to_vec(),
        }
    }

    /// The generator's rates, raised so a few users hold every case a
    /// mutant needs: long/short accounts, closed positions, object-shaped
    /// values, legacy TTLs, order-placed hashes.
    pub fn gen_config(&self) -> GenConfig {
        GenConfig {
            users: self.users,
            seed: self.seed,
            long_short_rate: 0.5,
            closed_rate: 0.25,
            object_shaped_rate: 0.25,
            legacy_ttl_rate: 0.4,
            malformed_rate: 0.05,
            order_placed_rate: 0.3,
            position_cache_rate: 0.2,
            backup_rate: 0.1,
            ..GenConfig::default()
        }
    }

    fn gate_args(&self) -> GateArgs {
        GateArgs {
            backend: self.backend,
            users: self.users,
            seed: self.seed,
            fixtures: self.fixtures.clone(),
            rdb: None,
            cluster: false,
            // evaluate() writes no report; this only shows in its replay line.
            report_dir: PathBuf::from("reports"),
            engine: None,
            rollback_engine: None,
            migration: Migration::GridPositions,
        }
    }
}

/// `mutants/fixtures/` of this checkout.
pub fn default_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Runs one engine set through the gate; a pipeline error becomes the
/// row's `error`, not the matrix's.
pub async fn run_row<E: Engines>(
    cfg: &MatrixConfig,
    engines: &E,
    name: &str,
    bug: &str,
    expected: &[&str],
) -> KillRow {
    match evaluate(engines, &cfg.gate_args(), cfg.gen_config()).await {
        Ok(report) => KillRow::from_report(name, bug, expected, &report),
        Err(e) => KillRow::failed(name, bug, expected, Some(format!("{e:#}"))),
    }
}

/// The control, then each mutant of `cfg`, one after another (each starts
/// its own two disposable servers).
pub async fn run_matrix(cfg: &MatrixConfig) -> KillMatrix {
    let started = Instant::now();
    let control = run_row(
        cfg,
        &Production,
        "control (production engines)",
        "None: the engines that ship. They must pass every invariant.",
        &[],
    )
    .await;
    let mut mutants = Vec::new();
    for &m in &cfg.mutants {
        eprintln!("mutants: {}", m.name());
        mutants.push(run_row(cfg, &MutantEngines(m), m.name(), m.bug(), m.expected()).await);
    }
    let mut invariants: Vec<String> = control.results.keys().cloned().collect();
    for row in &mutants {
        for id in row.results.keys().chain(&row.expected) {
            if !invariants.contains(id) {
                invariants.push(id.clone());
            }
        }
    }
    KillMatrix {
        backend: cfg.backend.to_string(),
        seed: cfg.seed,
        users: cfg.users,
        invariants,
        control,
        mutants,
        elapsed_ms: started.elapsed().as_millis(),
    }
}
