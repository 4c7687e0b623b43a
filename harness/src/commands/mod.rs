//! One module per subcommand; each returns an [`Outcome`](crate::exit::Outcome).

pub mod cleanup_legacy;
pub mod cleanup_migration;
pub mod migrate;
pub mod order_placed;
mod render;
pub mod rollback;
pub mod snapshot;
pub mod status;
pub mod validate;
pub mod verify;

use std::io::{BufRead, IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use keyshift_engine::keys::DEFAULT_EXCHANGES;

use crate::error::HarnessError;

/// DESIGN §6: writing without `--force` asks for `yes` on a terminal and
/// refuses elsewhere.
pub fn confirm_write(force: bool, what: &str) -> Result<(), HarnessError> {
    if force {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(HarnessError::Refused(format!(
            "{what}: not on a terminal, so no one can confirm; pass --force to write"
        )));
    }
    eprint!("{what}. Type yes to continue: ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).ok();
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(HarnessError::Refused(format!("{what}: not confirmed")))
    }
}

/// Runs a writing command under the runner lock (exit 5 when another run
/// holds it).
pub async fn locked<T>(
    conn: &keyshift_engine::connection::RedisConn,
    command: &str,
    work: impl std::future::Future<Output = keyshift_engine::Result<T>>,
) -> keyshift_engine::Result<T> {
    let holder = keyshift_engine::run::lock::Holder::new(command);
    keyshift_engine::run::lock::hold(
        conn,
        &holder,
        keyshift_engine::run::lock::ttl_from_env(),
        work,
    )
    .await
}

/// Runs `work` under the runner lock, or as it is for a dry run (which
/// writes nothing).
pub async fn locked_unless_dry_run<T>(
    conn: &keyshift_engine::connection::RedisConn,
    dry_run: bool,
    command: &str,
    work: impl std::future::Future<Output = keyshift_engine::Result<T>>,
) -> keyshift_engine::Result<T> {
    if dry_run {
        work.await
    } else {
        locked(conn, command, work).await
    }
}

/// Prints a report: JSON with `--json`, else its human summary.
pub fn print_report<R: serde::Serialize>(
    report: &R,
    json: bool,
    render: impl FnOnce(&R) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", render(report));
    }
    Ok(())
}

/// A progress bar on a terminal, nothing elsewhere.
pub fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} keys ({per_sec}, eta {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// `--exchange EX` narrows the default list to one exchange.
pub fn exchanges(only: Option<&str>) -> Vec<String> {
    match only {
        Some(ex) => vec![ex.to_owned()],
        None => DEFAULT_EXCHANGES.iter().map(|s| (*s).to_owned()).collect(),
    }
}
