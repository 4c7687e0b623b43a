//! `keyshift-mutants`: runs the kill matrix and writes it into a report
//! directory, merged into the gate's report there when there is one.
//! Exit 0: every mutant killed and the control clean; 1 otherwise.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use keyshift_harness::backend::BackendKind;
use keyshift_harness::report::{kill_matrix_markdown, write_kill_matrix};
use keyshift_mutants::{run_matrix, MatrixConfig, Mutant};

/// Run every mutant engine through the gate pipeline; write the kill matrix.
#[derive(Debug, Parser)]
struct Args {
    /// Which disposable Redis to start.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// Generated users per run.
    #[arg(long, default_value_t = MatrixConfig::DEFAULT_USERS)]
    users: usize,
    /// Generator seed.
    #[arg(long, default_value_t = MatrixConfig::DEFAULT_SEED)]
    seed: u64,
    /// Where the report goes (merged into report.json/report.md/junit.xml there).
    #[arg(long, default_value = "reports")]
    report_dir: PathBuf,
    /// Run only these mutants (by name); default all.
    #[arg(long = "mutant")]
    only: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let mut cfg = MatrixConfig::new(args.backend);
    cfg.users = args.users;
    cfg.seed = args.seed;
    if !args.only.is_empty() {
        cfg.mutants = args
            .only
            .iter()
            .map(|n| Mutant::from_name(n).ok_or_else(|| anyhow::anyhow!("no mutant named {n}")))
            .collect::<anyhow::Result<_>>()?;
    }
    let matrix = run_matrix(&cfg).await;
    write_kill_matrix(&matrix, &args.report_dir)?;
    print!("{}", kill_matrix_markdown(&matrix));
    let problems = matrix.problems();
    for p in &problems {
        eprintln!("kill matrix: {p}");
    }
    println!("kill matrix written to {}", args.report_dir.display());
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
