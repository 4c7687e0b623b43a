use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use keyshift_harness::{cli::Cli, exit, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    keyshift_harness::init_tracing();
    // One client thread: Redis gets the other core of a small machine.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(outcome) => outcome.code(),
        Err(err) => {
            eprintln!("error: {}", exit::describe(&err));
            exit::error_code(&err)
        }
    }
}
