//! `keyshift scenario`: failure cases as data (scenarios/*.toml, one file
//! per case) replayed on disposable Redis against the real migrator.
//!
//! - `model`: the scenario file format, parsed and validated (pure).
//! - `dataset`: a scenario's keyspace (generator, fixtures, inline keys, bulk arrays).
//! - `invoke`: one `keyshift migrate` child process, watched while faults strike it.
//! - `strike`: the faults themselves (migrator, server, data).
//! - `checks`: verify, untouched digest, findings and rollback after the runs.
//! - `expect`: whether the scenario met its expectation (pure).
//! - `external`: a team's own command (`--engine`) in the migrator's place,
//!   judged by the oracle against the keyspace as seeded.
//! - `runner`: one scenario end to end; `report`: its report.json, report.md, junit.xml.

pub mod checks;
pub mod dataset;
pub mod expect;
pub mod external;
pub mod invoke;
pub mod model;
pub mod report;
pub mod runner;
pub mod strike;

use crate::cli::{ScenarioAction, ScenarioArgs};
use crate::error::HarnessError;
use crate::exit::Outcome;
use model::{load_dir, ScenarioError};
use report::Verdict;

use runner::RunOptions;

pub async fn command(args: &ScenarioArgs) -> anyhow::Result<Outcome> {
    // A bad scenario file is bad input to the command: exit 2, naming the
    // file and field.
    let scenarios = load_dir(&args.dir).map_err(|e| HarnessError::Usage(e.to_string()))?;
    match &args.action {
        ScenarioAction::List => {
            for s in &scenarios {
                println!("{:<34} {}", s.name, s.replays.trim());
            }
            Ok(Outcome::Done)
        }
        ScenarioAction::Run(run) => {
            let selected: Vec<_> = match (&run.name, run.all) {
                (Some(name), false) => {
                    let s = scenarios.iter().find(|s| &s.name == name).ok_or_else(|| {
                        let unknown = ScenarioError::Unknown {
                            name: name.clone(),
                            dir: args.dir.clone(),
                        };
                        HarnessError::Usage(unknown.to_string())
                    })?;
                    vec![s]
                }
                (None, true) => scenarios.iter().collect(),
                _ => {
                    return Err(HarnessError::Usage(
                        "scenario run: give a scenario NAME or --all".into(),
                    )
                    .into())
                }
            };
            let opts = RunOptions {
                backend: run.backend,
                report_dir: run.report_dir.clone(),
                dir: args.dir.clone(),
                exe: runner::migrator_exe()?,
                engine: run.engine.as_ref().map(|cmd| external::ExternalEngine {
                    migrate: cmd.clone(),
                    rollback: run.rollback_engine.clone(),
                    migration: match run.migration {
                        crate::cli::Migration::GridPositions => model::MigrationName::GridPositions,
                        crate::cli::Migration::OrderPlaced => model::MigrationName::OrderPlaced,
                    },
                }),
            };
            run_selected(&selected, opts, run.repeat).await
        }
    }
}

/// How often one scenario passed over its runs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    passed: u32,
    failed: u32,
    skipped: u32,
}

impl Tally {
    fn add(&mut self, verdict: &Verdict) {
        match verdict {
            Verdict::Passed => self.passed += 1,
            Verdict::Failed => self.failed += 1,
            Verdict::Skipped => self.skipped += 1,
        }
    }

    /// Flaky: passed on some runs and failed on others.
    fn flaky(&self) -> bool {
        self.passed > 0 && self.failed > 0
    }
}

/// Runs each scenario `repeat` times in turn; prints each run's line, then,
/// when repeating, each scenario's pass count, and the closing summary.
async fn run_selected(
    selected: &[&model::Scenario],
    opts: RunOptions,
    repeat: u32,
) -> anyhow::Result<Outcome> {
    let mut tallies = vec![Tally::default(); selected.len()];
    for round in 1..=repeat {
        let opts = RunOptions {
            report_dir: if repeat > 1 {
                opts.report_dir.join(format!("run-{round}"))
            } else {
                opts.report_dir.clone()
            },
            ..opts.clone()
        };
        for (s, tally) in selected.iter().zip(&mut tallies) {
            let r = runner::run(s, &opts).await;
            let dir = report::write_all(&r, &opts.report_dir)?;
            println!("{}", r.summary_line());
            if r.verdict == Verdict::Failed {
                println!("     report: {}", dir.join("report.md").display());
            }
            tally.add(&r.verdict);
        }
    }
    if repeat > 1 {
        println!("\nOver {repeat} runs:");
        for (s, t) in selected.iter().zip(&tallies) {
            let word = if t.flaky() {
                "FLAKY"
            } else if t.failed > 0 {
                "FAIL"
            } else if t.passed > 0 {
                "PASS"
            } else {
                "SKIP"
            };
            println!("{word:<5} {:<34} {} of {repeat} passed", s.name, t.passed);
        }
    }
    let reports = match repeat {
        1 => report::ScenarioReport::dir(&opts.report_dir, ""),
        _ => report::ScenarioReport::dir(&opts.report_dir.join("run-K"), ""),
    };
    println!(
        "{}; reports in {}",
        closing_line(&tallies, repeat),
        reports.display()
    );
    Ok(Outcome::passed_if(tallies.iter().all(|t| t.failed == 0)))
}

/// `33 scenario(s): 32 passed, 1 failed, 0 skipped`; with --repeat, a
/// scenario counts as passed only when every run of it passed.
fn closing_line(tallies: &[Tally], repeat: u32) -> String {
    let failed = tallies.iter().filter(|t| t.failed > 0).count();
    let flaky = tallies.iter().filter(|t| t.flaky()).count();
    let skipped = tallies
        .iter()
        .filter(|t| t.failed == 0 && t.passed == 0)
        .count();
    let passed = tallies.len() - failed - skipped;
    let mut line = format!("{} scenario(s)", tallies.len());
    if repeat > 1 {
        line.push_str(&format!(" x {repeat} runs"));
    }
    line.push_str(&format!(
        ": {passed} passed, {failed} failed, {skipped} skipped"
    ));
    if repeat > 1 {
        line.push_str(&format!(" ({flaky} of the failed flaky)"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(passed: u32, failed: u32, skipped: u32) -> Tally {
        Tally {
            passed,
            failed,
            skipped,
        }
    }

    #[test]
    fn a_scenario_that_fails_once_in_ten_is_flaky_and_failed() {
        let t = [tally(10, 0, 0), tally(9, 1, 0), tally(0, 0, 10)];
        assert!(t[1].flaky() && !t[0].flaky() && !t[2].flaky());
        assert_eq!(
            closing_line(&t, 10),
            "3 scenario(s) x 10 runs: 1 passed, 1 failed, 1 skipped (1 of the failed flaky)"
        );
        assert_eq!(
            closing_line(&t[..1], 1),
            "1 scenario(s): 1 passed, 0 failed, 0 skipped"
        );
    }
}
