//! One migrator invocation of a scenario: the real `keyshift migrate` (or a
//! team's own command, `--engine`) as a child process, watched through the
//! run's journal (or, for a command keyshift knows nothing of, through the
//! legacy keys it has removed), with the invocation's faults (`strike`)
//! applied at their timing.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::store::standalone::{connect, RESPONSE_TIMEOUT_ENV};
use keyshift_engine::run::checkpoint::{CHECKPOINTS_ENV, CHECKPOINT_LINE};
use keyshift_engine::run::journal::{latest_run_of, outcomes_key, RunState};
use keyshift_engine::run::lock::{LOCK_KEY, TTL_ENV};
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::model::{Fault, FaultName, Invocation, Timing};
use super::strike::{client_ids, strike};
use crate::backend::Deployment;
use crate::commands::exchanges;
use crate::gate::external::{engine_command, shell_quote};

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

impl FaultRecord {
    fn new(fault: &Fault, journaled_at_fault: Option<usize>, note: String) -> Self {
        FaultRecord {
            kind: fault.kind.as_str(),
            timing: fault.timing(),
            journaled_at_fault,
            note,
        }
    }
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

/// What runs as the migrator.
#[derive(Debug, Clone, Copy)]
pub enum Engine<'a> {
    /// The keyshift binary: `keyshift migrate`.
    Keyshift(&'a Path),
    /// A team's command, run through `sh -c` in a process group of its own
    /// (a SIGKILL fault kills the whole group: the shell and its children),
    /// with REDIS_URL, KEYSHIFT_MIGRATION and KEYSHIFT_EXCHANGES set, as
    /// `gate --engine` runs it.
    External(&'a str),
}

/// One invocation to run: the migrator, the invocation's place in the
/// scenario, and the faults that strike it.
pub struct Job<'a> {
    pub engine: Engine<'a>,
    /// 1-based.
    pub n: usize,
    pub inv: &'a Invocation,
    pub faults: &'a [&'a Fault],
    /// Legacy keys of the invocation's migration: what a progress timing
    /// is a fraction of.
    pub legacy_total: usize,
    /// Their names: an external command's progress is how many are gone.
    pub legacy_keys: &'a [String],
}

/// Runs the invocation, retrying while a dead runner's lock turns it away
/// (unless exit 5 is what the scenario expects).
pub async fn run(job: &Job<'_>, server: &mut Deployment) -> anyhow::Result<InvocationRecord> {
    let started = Instant::now();
    let mut lock_waits = 0;
    loop {
        let mut record = attempt(job, server).await?;
        // Exit 5 before any fault struck: the previous (killed or aborted)
        // runner's lock had not expired yet. An operator waits and reruns.
        // (A runner that lost its own lock says so instead, and is not retried.)
        let turned_away = record.exit == Some(5)
            && !job.inv.exit.accepts(Some(5))
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

async fn attempt(job: &Job<'_>, server: &mut Deployment) -> anyhow::Result<InvocationRecord> {
    let url = server.url();
    let mut watch = connect(&url).await?;
    // Connections open before the migrator starts are not its own.
    let before: Vec<i64> = client_ids(&mut watch).await?;
    let mut migrator = Migrator::spawn(job, &url)?;
    let mut target = Target {
        deployment: server,
        watch,
        before,
    };
    let mut strikes = Strikes {
        pending: job.faults.to_vec(),
        records: Vec::new(),
        killed: false,
    };
    let status = strikes
        .while_running(job, &mut migrator, &mut target)
        .await?;
    strikes.after_exit(job, &mut target, &mut migrator).await?;
    if strikes.killed && matches!(job.engine, Engine::Keyshift(_)) {
        sigkill_after_done(target.deployment, job.inv, &mut strikes.records).await?;
    }
    Ok(InvocationRecord {
        n: job.n,
        command: migrator.command,
        exit: status.and_then(|s| s.code()),
        expected: job.inv.exit.describe(),
        lock_waits: 0,
        elapsed_ms: 0,
        faults: strikes.records,
        hung: status.is_none(),
        stdout: tail(&migrator.stdout.await.unwrap_or_default()),
        stderr: tail(&migrator.stderr.await.unwrap_or_default()),
    })
}

/// The migrator child process, its command line as the report shows it,
/// and its output being read.
struct Migrator {
    child: Child,
    /// It leads a process group of its own (an external command).
    group: bool,
    command: String,
    started: Instant,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
    /// The journal length at each checkpoint the run stopped at.
    reached: mpsc::UnboundedReceiver<usize>,
    /// One message: one line on its stdin, which releases a checkpoint.
    release: Option<mpsc::UnboundedSender<()>>,
    /// It waits at a checkpoint for its release.
    stopped: bool,
}

impl Migrator {
    fn spawn(job: &Job<'_>, url: &str) -> anyhow::Result<Migrator> {
        let (mut cmd, command, stops) = match job.engine {
            Engine::Keyshift(exe) => keyshift_command(job, exe, url),
            Engine::External(engine) => {
                let (cmd, command) = external_command(job, engine, url);
                (cmd, command, false)
            }
        };
        cmd.stdin(if stops { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (reached_tx, reached) = mpsc::unbounded_channel();
        let release = child.stdin.take().map(|stdin| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(release_each(stdin, rx));
            tx
        });
        Ok(Migrator {
            child,
            group: matches!(job.engine, Engine::External(_)),
            command,
            started,
            stdout: tokio::spawn(read_all(stdout)),
            stderr: tokio::spawn(read_stderr(stderr, reached_tx)),
            reached,
            release,
            stopped: false,
        })
    }

    /// Lets a run stopped at a checkpoint go on (nothing when it is not
    /// stopped).
    fn release(&mut self) {
        release(&mut self.stopped, self.release.as_ref());
    }

    /// SIGKILL of the migrator: of its whole process group when it has one
    /// (an external command's shell and whatever the shell started).
    async fn kill(child: &mut Child, group: bool) -> anyhow::Result<()> {
        match (group, child.id()) {
            (true, Some(pid)) => {
                let status = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status()?;
                anyhow::ensure!(status.success(), "kill -KILL -- -{pid} failed: {status}");
                child.wait().await?;
            }
            _ => child.kill().await?,
        }
        Ok(())
    }
}

/// `keyshift migrate` for `job` on `url`, with the invocation's runner lock
/// TTL, its checkpoints, and a short response timeout when a fault freezes
/// the server; its command line as the report shows it, and whether it
/// will stop at checkpoints (its stdin then releases it).
fn keyshift_command(job: &Job<'_>, exe: &Path, url: &str) -> (Command, String, bool) {
    let args = migrate_args(job.inv, url);
    let lock_ttl = job.inv.lock_ttl_ms.unwrap_or(LOCK_TTL_MS);
    let frozen = job
        .faults
        .iter()
        .any(|f| matches!(f.kind, FaultName::Pause | FaultName::NetworkCut));
    let mut cmd = Command::new(exe);
    cmd.args(&args)
        .env(TTL_ENV, lock_ttl.to_string())
        .env_remove("REDIS_URL")
        .env_remove("RUST_LOG");
    let mut env_prefix = format!("{TTL_ENV}={lock_ttl} ");
    let at = checkpoints(job);
    if at.is_empty() {
        cmd.env_remove(CHECKPOINTS_ENV);
    } else {
        let at: Vec<String> = at.iter().map(usize::to_string).collect();
        cmd.env(CHECKPOINTS_ENV, at.join(","));
        env_prefix.push_str(&format!("{CHECKPOINTS_ENV}={} ", at.join(",")));
    }
    if frozen {
        cmd.env(RESPONSE_TIMEOUT_ENV, FROZEN_RESPONSE_TIMEOUT_MS);
        env_prefix.push_str(&format!(
            "{RESPONSE_TIMEOUT_ENV}={FROZEN_RESPONSE_TIMEOUT_MS} "
        ));
    } else {
        cmd.env_remove(RESPONSE_TIMEOUT_ENV);
    }
    let stops = !at.is_empty();
    (
        cmd,
        format!("{env_prefix}keyshift {}", args.join(" ")),
        stops,
    )
}

/// The team's command as `gate --engine` runs it, in a process group of
/// its own.
fn external_command(job: &Job<'_>, engine: &str, url: &str) -> (Command, String) {
    let migration = job.inv.migration.as_str();
    let exchanges = exchanges(None);
    let mut cmd = engine_command(engine, url, migration, &exchanges);
    cmd.process_group(0);
    let command = format!(
        "REDIS_URL={url} KEYSHIFT_MIGRATION={migration} KEYSHIFT_EXCHANGES='{}' sh -c {}",
        exchanges.join(" "),
        shell_quote(engine)
    );
    (cmd, command)
}

/// What a fault strikes: the server (or cluster), and the harness's own
/// connection watching it.
struct Target<'a> {
    deployment: &'a mut Deployment,
    watch: RedisConn,
    /// Client ids connected before the migrator started: not its own.
    before: Vec<i64>,
}

/// An attempt's faults: those still to strike, and what became of the
/// others.
struct Strikes<'f> {
    pending: Vec<&'f Fault>,
    records: Vec<FaultRecord>,
    /// A SIGKILL struck the migrator.
    killed: bool,
}

impl<'f> Strikes<'f> {
    /// Polls until the migrator exits, striking each fault once it is due;
    /// a migrator still running after [`HUNG_AFTER`] is killed. Returns
    /// its exit status, `None` when it hung.
    async fn while_running(
        &mut self,
        job: &Job<'_>,
        migrator: &mut Migrator,
        target: &mut Target<'_>,
    ) -> anyhow::Result<Option<ExitStatus>> {
        let mut live = Progress::of(job);
        loop {
            if let Ok(journaled) = migrator.reached.try_recv() {
                migrator.stopped = true;
                live.reached(journaled);
            }
            if let Some(status) = migrator.child.try_wait()? {
                return Ok(Some(status));
            }
            if migrator.started.elapsed() > HUNG_AFTER {
                let _ = Migrator::kill(&mut migrator.child, migrator.group).await;
                return Ok(None);
            }
            let due = self
                .take_due(job, migrator.started, &mut live, &target.watch)
                .await;
            for (fault, journaled) in due {
                self.strike(fault, journaled, target, migrator).await?;
            }
            migrator.release();
            tokio::time::sleep(POLL).await;
        }
    }

    /// The pending faults due now, each with the outcomes journaled when
    /// it was found due.
    async fn take_due(
        &mut self,
        job: &Job<'_>,
        started: Instant,
        live: &mut Progress<'_>,
        watch: &RedisConn,
    ) -> Vec<(&'f Fault, Option<usize>)> {
        let mut due = Vec::new();
        if self.pending.is_empty() {
            return due;
        }
        let journaled = live.read(watch).await;
        let mut i = 0;
        while i < self.pending.len() {
            if is_due(
                self.pending[i],
                started.elapsed(),
                journaled,
                job.legacy_total,
            ) {
                due.push((self.pending.remove(i), journaled));
            } else {
                i += 1;
            }
        }
        due
    }

    async fn strike(
        &mut self,
        fault: &Fault,
        journaled: Option<usize>,
        target: &mut Target<'_>,
        migrator: &mut Migrator,
    ) -> anyhow::Result<()> {
        let at_checkpoint = migrator.stopped;
        let mut note = if fault.kind == FaultName::Sigkill && migrator.group {
            Migrator::kill(&mut migrator.child, true).await?;
            "SIGKILL of the command's process group".into()
        } else {
            let (stopped, tx) = (&mut migrator.stopped, migrator.release.as_ref());
            // A freeze lets the run go on into the frozen server.
            let mut go_on = || release(stopped, tx);
            strike(
                fault,
                target.deployment,
                &mut target.watch,
                &mut migrator.child,
                &target.before,
                &mut go_on,
            )
            .await?
        };
        if at_checkpoint {
            note.push_str(&format!(
                " (at the checkpoint where the run stopped with {} outcomes journaled)",
                journaled.unwrap_or(0)
            ));
        }
        self.killed |= fault.kind == FaultName::Sigkill;
        self.records.push(FaultRecord::new(fault, journaled, note));
        Ok(())
    }

    /// Once the migrator has exited: the at-exit faults strike, and the
    /// others never will.
    async fn after_exit(
        &mut self,
        job: &Job<'_>,
        target: &mut Target<'_>,
        migrator: &mut Migrator,
    ) -> anyhow::Result<()> {
        let (at_exit, never): (Vec<&Fault>, Vec<&Fault>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|f| f.timing() == Timing::AtExit);
        for fault in at_exit {
            let journaled = match job.engine {
                Engine::Keyshift(_) => journaled(&target.watch, job.inv).await,
                Engine::External(_) => legacy_gone(&target.watch, job.legacy_keys).await,
            };
            self.strike(fault, journaled, target, migrator).await?;
        }
        for fault in never {
            let note = "never struck: the invocation ended first".into();
            self.records.push(FaultRecord::new(fault, None, note));
        }
        Ok(())
    }
}

/// Where a SIGKILL landed: a run already recorded done was not interrupted.
async fn sigkill_after_done(
    server: &Deployment,
    inv: &Invocation,
    records: &mut [FaultRecord],
) -> anyhow::Result<()> {
    let conn = connect(&server.url()).await?;
    if let Ok(Some(run)) = latest_run_of(&conn, inv.migration.as_str()).await {
        if run.state == RunState::Done {
            for r in records.iter_mut().filter(|r| r.kind == "sigkill") {
                r.note = "landed after the run was recorded done".into();
            }
        }
    }
    Ok(())
}

fn is_due(f: &Fault, elapsed: Duration, journaled: Option<usize>, total: usize) -> bool {
    match f.timing() {
        Timing::AfterMs(ms) => elapsed >= Duration::from_millis(ms),
        Timing::AtExit => false,
        Timing::Progress(p) => journaled.is_some_and(|j| j >= progress_target(p, total)),
    }
}

/// How far the invocation has got, as a count of legacy keys.
enum Progress<'a> {
    /// keyshift's run: its journal's length at the last checkpoint it
    /// stopped at (`KEYSHIFT_CHECKPOINTS`), where its faults strike.
    Checkpoint(Option<usize>),
    /// A command keyshift knows nothing of, which cannot stop for the
    /// harness: how many of the migration's legacy keys are gone, polled.
    LegacyGone(&'a [String]),
}

impl<'a> Progress<'a> {
    fn of(job: &Job<'a>) -> Self {
        match job.engine {
            Engine::Keyshift(_) => Progress::Checkpoint(None),
            Engine::External(_) => Progress::LegacyGone(job.legacy_keys),
        }
    }

    /// keyshift's run stopped at a checkpoint with `journaled` outcomes.
    fn reached(&mut self, journaled: usize) {
        if let Progress::Checkpoint(at) = self {
            *at = Some(journaled);
        }
    }

    async fn read(&mut self, conn: &RedisConn) -> Option<usize> {
        match self {
            Progress::Checkpoint(at) => *at,
            Progress::LegacyGone(keys) => legacy_gone(conn, keys).await,
        }
    }
}

/// Sends the one line that releases a run stopped at a checkpoint.
fn release(stopped: &mut bool, tx: Option<&mpsc::UnboundedSender<()>>) {
    if std::mem::take(stopped) {
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
    }
}

/// The journal lengths at which keyshift's run stops for this
/// invocation's progress-timed faults.
fn checkpoints(job: &Job<'_>) -> Vec<usize> {
    let mut at: Vec<usize> = job
        .faults
        .iter()
        .filter_map(|f| match f.timing() {
            Timing::Progress(p) => Some(progress_target(p, job.legacy_total)),
            _ => None,
        })
        .collect();
    at.sort_unstable();
    at.dedup();
    at
}

fn progress_target(p: f64, total: usize) -> usize {
    (p * total as f64).ceil() as usize
}

/// How many of `keys` no longer exist: one pipeline of EXISTS (`None`
/// when the server does not answer).
async fn legacy_gone(conn: &RedisConn, keys: &[String]) -> Option<usize> {
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("EXISTS").arg(k);
    }
    let exists: Vec<i64> = pipe.query_async(&mut conn.clone()).await.ok()?;
    Some(exists.iter().filter(|&&e| e == 0).count())
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

/// The migrator's stderr, whole, each checkpoint line it prints sent on
/// as the journal length it names.
async fn read_stderr(
    r: impl tokio::io::AsyncRead + Unpin,
    reached: mpsc::UnboundedSender<usize>,
) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(r);
    let mut all = Vec::new();
    let mut line = Vec::new();
    while let Ok(n) = lines.read_until(b'\n', &mut line).await {
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        if let Some(count) = text.trim_end().strip_prefix(CHECKPOINT_LINE) {
            if let Ok(count) = count.parse() {
                let _ = reached.send(count);
            }
        }
        all.append(&mut line);
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// Writes one line to the migrator's stdin per release.
async fn release_each(mut stdin: tokio::process::ChildStdin, mut go: mpsc::UnboundedReceiver<()>) {
    use tokio::io::AsyncWriteExt;
    while go.recv().await.is_some() {
        if stdin.write_all(b"\n").await.is_err() || stdin.flush().await.is_err() {
            break;
        }
    }
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
