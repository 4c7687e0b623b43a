//! `keyshift scenario`: failure cases as data (scenarios/*.toml, one file
//! per case) replayed on disposable Redis against the real migrator.
//!
//! - `model`: the scenario file format, parsed and validated (pure).
//! - `dataset`: a scenario's keyspace (generator, fixtures, inline keys, bulk arrays).
//! - `invoke`: one `keyshift migrate` child process, watched while faults strike it.
//! - `strike`: the faults themselves (migrator, server, data).
//! - `checks`: verify, untouched digest, findings and rollback after the runs.
//! - `expect`: whether the scenario met its expectation (pure).
//! - `runner`: one scenario end to end; `report`: its report.json, report.md, junit.xml.

pub mod checks;
pub mod dataset;
pub mod expect;
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
            };
            let mut failed = 0;
            let mut skipped = 0;
            for s in &selected {
                let r = runner::run(s, &opts).await;
                let dir = report::write_all(&r, &opts.report_dir)?;
                println!("{}", r.summary_line());
                match r.verdict {
                    Verdict::Failed => {
                        failed += 1;
                        println!("     report: {}", dir.join("report.md").display());
                    }
                    Verdict::Skipped => skipped += 1,
                    Verdict::Passed => {}
                }
            }
            println!(
                "{} scenario(s): {} passed, {failed} failed, {skipped} skipped; reports in {}",
                selected.len(),
                selected.len() - failed - skipped,
                report::ScenarioReport::dir(&opts.report_dir, "").display()
            );
            Ok(Outcome::passed_if(failed == 0))
        }
    }
}
