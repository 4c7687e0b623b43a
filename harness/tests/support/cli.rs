//! Running the `keyshift` binary as scripts do, for the CLI-level tests.

use std::fmt;
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;

use super::TestRedis;

/// What one run of the binary did.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Ran {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Ran {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{self}"))
    }
}

/// The binary with no REDIS_URL from the caller's environment; assert_cmd
/// always gives it a pipe for stdin (empty unless a test writes to it), so
/// stdin is never a terminal.
pub fn keyshift(args: &[&str]) -> Command {
    let mut cmd = Command::cargo_bin("keyshift").expect("the keyshift binary is built");
    cmd.args(args)
        .env_remove("REDIS_URL")
        .env_remove("RUST_LOG")
        .timeout(Duration::from_secs(600));
    cmd
}

/// Runs the binary off the test's async thread; a `std::process::Command`
/// (one a test may also spawn and kill) runs the same way.
pub async fn run(cmd: impl Into<Command>) -> Ran {
    let mut cmd = cmd.into();
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("keyshift runs"))
        .await
        .expect("runner thread");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the binary with `args` on the server or cluster at `url` (`--redis`).
pub async fn keyshift_at(url: &str, args: &[&str]) -> Ran {
    let mut all = args.to_vec();
    all.extend(["--redis", url]);
    run(keyshift(&all)).await
}

pub async fn keyshift_on(db: &TestRedis, args: &[&str]) -> Ran {
    keyshift_at(&db.url(), args).await
}
