//! One migrator invocation of a scenario: the real `keyshift migrate` as a
//! child process, watched through the run's journal, with the invocation's
//! faults applied at their timing.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::store::standalone::{connect, RESPONSE_TIMEOUT_ENV};
use keyshift_engine::run::journal::{latest_run_of, outcomes_key, RunState};
use keyshift_engine::run::lock::{LOCK_KEY, TTL_ENV};
use serde::Serialize;
use tokio::process::Command;

use super::model::{Fault, FaultName, Invocation, Timing};
use crate::backend::{Deployment, RedisServer};

/// A short runner lock, so a rerun after a killed runner waits seconds,
/// not the default 30 s (an invocation may set its own).
pub const LOCK_TTL_MS: u64 = 2000;
/// The response timeout of an invocation struck by a pause or network cut:
/// a freeze longer than this aborts the run (exit 4) instead of waiting
/// out the 60 s default.
pub const FROZEN_RESPONSE_TIMEOUT_MS: &str = "2000";
/// An invocation still running after this is killed and reported as hung.
const HUNG_AFTER: Duration = Duration::from_secs(120);
/// How long a rerun keeps retrying while a dead runner's lock turns it away.
const LOCK_WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(1);
/// Bytes of maxmemory above used memory for the maxmemory fault.
const MAXMEMORY_HEADROOM: u64 = 16 * 1024;
/// Output kept in the report per stream.
const TAIL_CHARS: usize = 4000;

/// What one invocation did.
#[derive(Debug, Clone, Serialize)]
pub struct InvocationRecord {
    pub n: usize,
    pub command: String,
    /// `None` when it was killed (SIGKILL fault, or hung).
    pub exit: Option<i32>,
    pub expected: String,
    /// Earlier attempts that exited 5 because a dead runner's lock was still held.
    pub lock_waits: usize,
    pub elapsed_ms: u128,
    pub faults: Vec<FaultRecord>,
    pub hung: bool,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub kind: &'static str,
    pub timing: Timing,
    /// Outcomes journaled when it struck; `None` if it never struck.
    pub journaled_at_fault: Option<usize>,
    /// What happened, in words (e.g. "paused 800 ms", "landed after the run ended").
    pub note: String,
}

/// The migrate command line (without the binary), as the report shows it.
pub fn migrate_args(inv: &Invocation, url: &str) -> Vec<String> {
    let mut args = vec![
        "migrate".to_owned(),
        inv.migration.as_str().to_owned(),
        "--force".into(),
        "--json".into(),
    ];
    args.extend(inv.args.iter().cloned());
    args.extend(["--redis".to_owned(), url.to_owned()]);
    args
}

/// Runs invocation `n`, retrying while a dead runner's lock turns it away
/// (unless exit 5 is what the scenario expects).
pub async fn run(
    exe: &Path,
    server: &mut Deployment,
    n: usize,
    inv: &Invocation,
    faults: &[&Fault],
    legacy_total: usize,
) -> anyhow::Result<InvocationRecord> {
    let started = Instant::now();
    let mut lock_waits = 0;
    loop {
        let mut record = attempt(exe, server, n, inv, faults, legacy_total).await?;
        // Exit 5 before any fault struck: the previous (killed or aborted)
        // runner's lock had not expired yet. An operator waits and reruns.
        // (A runner that lost its own lock says so instead, and is not retried.)
        let turned_away = record.exit == Some(5)
            && !inv.exit.accepts(Some(5))
            && record.stderr.contains("another run holds the lock")
            && record.faults.iter().all(|f| f.journaled_at_fault.is_none());
        if turned_away && started.elapsed() < LOCK_WAIT {
            lock_waits += 1;
            let mut conn = connect(&server.url()).await?;
            let pttl: i64 = redis::cmd("PTTL")
                .arg(LOCK_KEY)
                .query_async(&mut conn)
                .await?;
            tokio::time::sleep(Duration::from_millis(pttl.max(0) as u64 + 50)).await;
            continue;
        }
        record.lock_waits = lock_waits;
        record.elapsed_ms = started.elapsed().as_millis();
        return Ok(record);
    }
}

async fn attempt(
    exe: &Path,
    server: &mut Deployment,
    n: usize,
    inv: &Invocation,
    faults: &[&Fault],
    legacy_total: usize,
) -> anyhow::Result<InvocationRecord> {
    let url = server.url();
    let args = migrate_args(inv, &url);
    let lock_ttl = inv.lock_ttl_ms.unwrap_or(LOCK_TTL_MS);
    let frozen = faults
        .iter()
        .any(|f| matches!(f.kind, FaultName::Pause | FaultName::NetworkCut));
    let mut watch = connect(&url).await?;
    // Connections open before the migrator starts are not its own.
    let before: Vec<i64> = client_ids(&mut watch).await?;
    let mut cmd = Command::new(exe);
    cmd.args(&args)
        .env(TTL_ENV, lock_ttl.to_string())
        .env_remove("REDIS_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut env_prefix = format!("{TTL_ENV}={lock_ttl} ");
    if frozen {
        cmd.env(RESPONSE_TIMEOUT_ENV, FROZEN_RESPONSE_TIMEOUT_MS);
        env_prefix.push_str(&format!(
            "{RESPONSE_TIMEOUT_ENV}={FROZEN_RESPONSE_TIMEOUT_MS} "
        ));
    } else {
        cmd.env_remove(RESPONSE_TIMEOUT_ENV);
    }
    let command = format!("{env_prefix}keyshift {}", args.join(" "));
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let read_out = tokio::spawn(read_all(stdout));
    let read_err = tokio::spawn(read_all(stderr));

    let mut pending: Vec<&Fault> = faults.to_vec();
    let mut live = LiveRun::default();
    let mut records = Vec::new();
    let mut killed = false;
    let mut hung = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > HUNG_AFTER {
            hung = true;
            let _ = child.kill().await;
            break None;
        }
        let mut due = Vec::new();
        if !pending.is_empty() {
            let journaled = live.progress(&watch, inv).await;
            let mut i = 0;
            while i < pending.len() {
                if is_due(pending[i], started.elapsed(), journaled, legacy_total) {
                    due.push((pending.remove(i), journaled));
                } else {
                    i += 1;
                }
            }
        }
        for (fault, journaled) in due {
            let note = strike(fault, server, &mut watch, &mut child, &before).await?;
            killed |= fault.kind == FaultName::Sigkill;
            records.push(FaultRecord {
                kind: fault.kind.as_str(),
                timing: fault.timing(),
                journaled_at_fault: journaled,
                note,
            });
        }
        tokio::time::sleep(POLL).await;
    };
    let (at_exit, pending): (Vec<&Fault>, Vec<&Fault>) = pending
        .into_iter()
        .partition(|f| f.timing() == Timing::AtExit);
    for fault in at_exit {
        let journaled = journaled(&watch, inv).await;
        let note = strike(fault, server, &mut watch, &mut child, &before).await?;
        records.push(FaultRecord {
            kind: fault.kind.as_str(),
            timing: fault.timing(),
            journaled_at_fault: journaled,
            note,
        });
    }
    for fault in pending {
        records.push(FaultRecord {
            kind: fault.kind.as_str(),
            timing: fault.timing(),
            journaled_at_fault: None,
            note: "never struck: the invocation ended first".into(),
        });
    }
    if killed {
        // Where a SIGKILL landed: a run already recorded done was not interrupted.
        let conn = connect(&server.url()).await?;
        if let Ok(Some(run)) = latest_run_of(&conn, inv.migration.as_str()).await {
            if run.state == RunState::Done {
                for r in records.iter_mut().filter(|r| r.kind == "sigkill") {
                    r.note = "landed after the run was recorded done".into();
                }
            }
        }
    }
    Ok(InvocationRecord {
        n,
        command,
        exit: status.and_then(|s| s.code()),
        expected: inv.exit.describe(),
        lock_waits: 0,
        elapsed_ms: 0,
        faults: records,
        hung,
        stdout: tail(&read_out.await.unwrap_or_default()),
        stderr: tail(&read_err.await.unwrap_or_default()),
    })
}

fn is_due(f: &Fault, elapsed: Duration, journaled: Option<usize>, total: usize) -> bool {
    match f.timing() {
        Timing::AfterMs(ms) => elapsed >= Duration::from_millis(ms),
        Timing::AtExit => false,
        Timing::Progress(p) => {
            let target = (p * total as f64).ceil() as usize;
            journaled.is_some_and(|j| j >= target)
        }
    }
}

/// The run this invocation is writing, once its record says `running`;
/// then only its journal length is polled (one round trip), so a fault
/// lands close to its progress target even through docker's proxy.
#[derive(Default)]
struct LiveRun {
    id: Option<String>,
}

impl LiveRun {
    async fn progress(&mut self, conn: &RedisConn, inv: &Invocation) -> Option<usize> {
        let mut c = conn.clone();
        if self.id.is_none() {
            let run = latest_run_of(&c, inv.migration.as_str()).await.ok()??;
            // A finished run of an earlier invocation is not this one's.
            if run.state != RunState::Running {
                return None;
            }
            self.id = Some(run.run_id);
        }
        let id = self.id.as_ref()?;
        redis::cmd("HLEN")
            .arg(outcomes_key(id))
            .query_async(&mut c)
            .await
            .ok()
    }
}

/// Outcomes journaled by the latest run of the invocation's migration
/// (`None` until its run record exists, or when the server does not answer).
async fn journaled(conn: &RedisConn, inv: &Invocation) -> Option<usize> {
    let mut c = conn.clone();
    let run = latest_run_of(&c, inv.migration.as_str()).await.ok()??;
    redis::cmd("HLEN")
        .arg(outcomes_key(&run.run_id))
        .query_async(&mut c)
        .await
        .ok()
}

async fn client_ids(conn: &mut RedisConn) -> redis::RedisResult<Vec<i64>> {
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(conn).await?;
    Ok(parse_client_ids(&list))
}

/// The `id=` of every line of CLIENT LIST.
pub fn parse_client_ids(list: &str) -> Vec<i64> {
    list.lines()
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .filter_map(|id| id.parse().ok())
        .collect()
}

/// Applies one fault; returns what happened.
async fn strike(
    fault: &Fault,
    deployment: &mut Deployment,
    watch: &mut RedisConn,
    child: &mut tokio::process::Child,
    before: &[i64],
) -> anyhow::Result<String> {
    // Server faults strike one server; the scenario model refuses them on
    // a cluster, and this says so should one get through.
    let on_cluster = || {
        anyhow::anyhow!(
            "the {} fault strikes one server; a cluster scenario cannot use it",
            fault.kind.as_str()
        )
    };
    Ok(match fault.kind {
        FaultName::Sigkill => {
            child.kill().await?;
            "SIGKILL of the migrator".into()
        }
        FaultName::Pause => {
            let server = deployment.server_mut().ok_or_else(on_cluster)?;
            let ms = fault.duration_ms.unwrap_or(0);
            server.pause().await?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            server.unpause().await?;
            format!("server frozen {ms} ms ({})", freeze_how(server))
        }
        FaultName::CrashRestart => {
            let server = deployment.server_mut().ok_or_else(on_cluster)?;
            server.crash_and_restart().await?;
            *watch = connect(&server.url()).await?;
            "server killed (SIGKILL) and started again on its AOF".into()
        }
        FaultName::ShutdownRestart => {
            let server = deployment.server_mut().ok_or_else(on_cluster)?;
            server.shutdown_and_restart().await?;
            *watch = connect(&server.url()).await?;
            "server shut down (SHUTDOWN SAVE) and started again on its RDB".into()
        }
        FaultName::DropConnections => {
            if deployment.is_cluster() {
                return Err(on_cluster());
            }
            let mine: i64 = redis::cmd("CLIENT").arg("ID").query_async(watch).await?;
            let now = client_ids(watch).await?;
            let mut killed = 0;
            for id in now.iter().filter(|id| !before.contains(id) && **id != mine) {
                let n: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(*id)
                    .query_async(watch)
                    .await
                    .unwrap_or(0);
                killed += n;
            }
            format!("CLIENT KILL of {killed} migrator connection(s)")
        }
        FaultName::NetworkCut => {
            let server = deployment.server_mut().ok_or_else(on_cluster)?;
            let ms = fault.duration_ms.unwrap_or(0);
            server.disconnect_network().await?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            server.reconnect_network().await?;
            *watch = connect(&server.url()).await?;
            format!("container disconnected from its network for {ms} ms")
        }
        FaultName::Maxmemory => {
            if deployment.is_cluster() {
                return Err(on_cluster());
            }
            let info: String = redis::cmd("INFO").arg("memory").query_async(watch).await?;
            let used = info_field(&info, "used_memory").unwrap_or(0);
            let limit = used + MAXMEMORY_HEADROOM;
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory")
                .arg(limit)
                .query_async::<()>(watch)
                .await?;
            format!("maxmemory set to {limit} bytes ({used} used)")
        }
        FaultName::ExpireKeys => {
            let mut expiring = 0;
            for key in &fault.keys {
                let n: i64 = redis::cmd("PEXPIRE")
                    .arg(key)
                    .arg(1)
                    .query_async(watch)
                    .await?;
                expiring += n;
            }
            format!("{expiring} of {} key(s) set to expire in 1 ms (the others were already migrated or gone)", fault.keys.len())
        }
        FaultName::LegacyWrite => {
            let value = fault.value.as_deref().unwrap_or_default();
            for key in &fault.keys {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .query_async::<()>(watch)
                    .await?;
            }
            format!("a rogue legacy writer SET {} key(s)", fault.keys.len())
        }
    })
}

fn freeze_how(server: &RedisServer) -> &'static str {
    match server.kind() {
        crate::backend::BackendKind::Docker => "docker pause",
        _ => "SIGSTOP, then SIGCONT",
    }
}

/// A numeric field of INFO output.
pub fn info_field(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// Lifts a maxmemory fault: no limit, as the backend started.
pub async fn lift_maxmemory(server: &Deployment) -> anyhow::Result<()> {
    let mut conn = connect(&server.url()).await?;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}

async fn read_all(mut r: impl tokio::io::AsyncRead + Unpin) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).into_owned()
}

fn tail(s: &str) -> String {
    if s.len() <= TAIL_CHARS {
        return s.to_owned();
    }
    let mut start = s.len() - TAIL_CHARS;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::model::ExitSpec;

    #[test]
    fn client_ids_come_from_every_line() {
        let list =
            "id=3 addr=127.0.0.1:5000 laddr=x fd=8 name= age=1\nid=17 addr=127.0.0.1:5001 fd=9\n";
        assert_eq!(parse_client_ids(list), vec![3, 17]);
        assert!(parse_client_ids("").is_empty());
    }

    #[test]
    fn info_fields_parse() {
        let info = "# Memory\r\nused_memory:1234\r\nused_memory_human:1.2K\r\nmaxmemory:0\r\n";
        assert_eq!(info_field(info, "used_memory"), Some(1234));
        assert_eq!(info_field(info, "maxmemory"), Some(0));
        assert_eq!(info_field(info, "nope"), None);
    }

    #[test]
    fn progress_timing_needs_the_journal() {
        let f = Fault {
            kind: FaultName::Sigkill,
            at_progress: Some(0.5),
            after_ms: None,
            invocation: 1,
            duration_ms: None,
            keys: vec![],
            at_exit: false,
            value: None,
        };
        let t = Duration::from_millis(5);
        assert!(!is_due(&f, t, None, 100));
        assert!(!is_due(&f, t, Some(49), 100));
        assert!(is_due(&f, t, Some(50), 100));
        let f = Fault {
            at_progress: Some(0.0),
            ..f
        };
        assert!(
            is_due(&f, t, Some(0), 100),
            "0 strikes once the run record exists"
        );
        let f = Fault {
            at_progress: None,
            after_ms: Some(10),
            ..f
        };
        assert!(!is_due(&f, t, None, 100) && is_due(&f, Duration::from_millis(10), None, 100));
    }

    #[test]
    fn the_command_is_the_real_migrate() {
        let inv = Invocation {
            migration: crate::scenario::model::MigrationName::OrderPlaced,
            args: vec!["--exchange".into(), "okx".into()],
            exit: ExitSpec::One(3),
            lock_ttl_ms: None,
        };
        assert_eq!(
            migrate_args(&inv, "redis://h:1").join(" "),
            "migrate order-placed --force --json --exchange okx --redis redis://h:1"
        );
    }

    #[test]
    fn tails_keep_the_end_on_a_char_boundary() {
        let s = "é".repeat(TAIL_CHARS);
        let t = tail(&s);
        assert!(t.starts_with("...") && t.ends_with('é'));
        assert_eq!(tail("short"), "short");
    }
}
