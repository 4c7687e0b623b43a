use std::process::ExitCode;

use clap::Parser;
use keyshift_harness::{cli::Cli, exit, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    keyshift_harness::init_tracing();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(outcome) => outcome.code(),
        Err(err) => {
            eprintln!("error: {err:#}");
            exit::error_code(&err)
        }
    }
}
