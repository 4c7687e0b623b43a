use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use keyshift_harness::backend::until_interrupted;
use keyshift_harness::cli::{Cli, Command};
use keyshift_harness::{exit, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    keyshift_harness::init_tracing();
    // One client thread: Redis gets the other core of a small machine.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // The commands that start disposable servers remove them on Ctrl-C or
    // SIGTERM too; the others keep the default (the signal ends them).
    let starts_servers = matches!(
        cli.command,
        Command::Gate(_) | Command::Scenario(_) | Command::Bench(_)
    );
    let result = if starts_servers {
        match runtime.block_on(until_interrupted(run(cli))) {
            Ok(result) => result,
            Err(interrupted) => {
                eprintln!("keyshift: {interrupted}");
                return ExitCode::from(interrupted.exit_code());
            }
        }
    } else {
        runtime.block_on(run(cli))
    };
    match result {
        Ok(outcome) => outcome.code(),
        Err(err) => {
            eprintln!("error: {}", exit::describe(&err));
            exit::error_code(&err)
        }
    }
}
