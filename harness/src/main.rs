use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use keyshift_harness::backend::until_interrupted;
use keyshift_harness::cli::{Cli, Command};
use keyshift_harness::{exit, run};

/// mimalloc keeps freed pages for a second before it purges them, and its
/// first arena, committed eagerly, never gave its pages back in our runs.
/// verify's live heap peaks near 11 MB at 100k users while its RSS reached
/// 60-84 MB that way; with that arena committed on demand and pages purged
/// after 100 ms it peaked at 39-44 MB, at no measurable CPU (purging at
/// once cost 3 s of system time). An operator's own MIMALLOC_* setting
/// wins. Reading the environment here allocates nothing unless the
/// variable is set.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn purge_freed_memory_sooner() {
    // Their places in mimalloc.h's `mi_option_e` (stable: retired options
    // keep their places as `deprecated_*`).
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    for (option, env, value) in [
        (ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT", 0),
        (PURGE_DELAY, "MIMALLOC_PURGE_DELAY", 100),
    ] {
        if std::env::var_os(env).is_none() {
            // SAFETY: sets one of mimalloc's options, a plain integer it
            // reads atomically; no memory is touched.
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
}

// Run before main: mimalloc reserves its first arena at the first
// allocation, which the Rust runtime makes before main, and an arena's
// commit mode is fixed when it is reserved.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static PURGE_FREED_MEMORY_SOONER: extern "C" fn() = {
    extern "C" fn before_main() {
        purge_freed_memory_sooner();
    }
    before_main
};

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
