//! Phase 2 throughput against its write floor, on one disposable server.
//!
//! For each size: generate the keyspace (the gate's generator, from the
//! seed), seed it with a raw pipe and time the floor — the migration's
//! end state (`crate::floor`: every hash, index, backup and delete) written
//! by a pipelined bulk load, no reads and no checks — then flush, seed
//! again and time `keyshift migrate grid-positions`, then the read floor
//! (the migrated end state read back by a pipelined bulk read: index, each
//! hash and TTL, backup and TTL, legacy key gone) and `keyshift verify
//! grid-positions`, each keyshift run a child process of this one. A child's
//! peak RSS is its own high-water mark (`VmHWM`, sampled until it exits),
//! so the figure is the migrating process's, not this harness's, which
//! holds the whole generated keyspace.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keyshift_engine::connection::RedisConn;
use serde::{Deserialize, Serialize};

use super::pipe::pipe;
use crate::backend::RedisServer;
use crate::commands::exchanges;
use crate::floor::{write_end_state, write_end_state_reads};
use crate::seed::{generate, write_resp, GenConfig, Keyspace};

/// One size's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationRow {
    pub users: usize,
    pub keys_seeded: usize,
    pub legacy_keys_migrated: u64,
    pub positions_migrated: u64,
    /// The floor: the same end state by a pipelined bulk load.
    pub floor_s: f64,
    pub floor_positions_per_s: f64,
    /// `keyshift migrate grid-positions`, wall time of the child process.
    pub migrate_s: f64,
    pub migrate_positions_per_s: f64,
    /// migrate_s / floor_s.
    pub ratio: f64,
    /// Exit code of migrate: 0, or 3 when seeded malformed keys were quarantined.
    pub migrate_exit: i32,
    pub migrate_peak_rss_mb: f64,
    /// The read floor: the reads a verifier of the end state cannot do
    /// without (index, every hash and TTL, backup and TTL, legacy gone) by a
    /// pipelined bulk read of the migrated server.
    pub read_floor_s: f64,
    pub read_floor_positions_per_s: f64,
    pub verify_s: f64,
    pub verify_positions_per_s: f64,
    /// verify_s / read_floor_s.
    pub verify_ratio: f64,
    pub verify_exit: i32,
    pub verify_peak_rss_mb: f64,
    /// The engine's own verify of the same run (the one `verify` used
    /// before the oracle: it re-plans backups with the planner), timed
    /// in-process right after: the "no slower than before" yardstick.
    pub engine_verify_s: f64,
    /// verify_s / engine_verify_s.
    pub verify_vs_engine_verify: f64,
    pub cpu: CpuSeconds,
    /// `cpu` per generated user, in microseconds.
    pub cpu_per_user_us: CpuSeconds,
}

/// A child process's end.
struct ChildRun {
    code: i32,
    stdout: String,
    wall: Duration,
    peak_rss_kb: u64,
    /// utime + stime, as last sampled before it exited.
    cpu_s: f64,
}

/// Measures one size on `server` (flushed first: a server we started).
pub async fn measure(
    server: &RedisServer,
    users: usize,
    seed: u64,
) -> anyhow::Result<MigrationRow> {
    let port = server.port();
    let url = server.url();
    let (keys_seeded, seed_resp, end_resp) = blocking(move || seed_and_floor(users, seed)).await?;
    let mut conn = unbounded_connection(&url).await?;
    flush_sync(&conn).await?;
    let seed_resp = blocking(move || load(port, &seed_resp, "seeding").map(|()| seed_resp)).await?;
    let floor_load = timed_load(port, end_resp, "writing the floor's end state");
    let (floor, floor_server) = with_server_cpu(&mut conn, floor_load).await?;
    flush_sync(&conn).await?;
    blocking(move || load(port, &seed_resp, "seeding")).await?;

    let migrate_args = [
        "migrate",
        "grid-positions",
        "--redis",
        &url,
        "--force",
        "--json",
    ];
    let (migrate, migrate_server) = with_server_cpu(&mut conn, child(&migrate_args)).await?;
    let report = migrate_report(&migrate, users)?;
    // Generated again rather than kept: at 1M users the keyspace, its
    // seeding RESP and the server's copy together outgrow the machine.
    let stamp = report.stamp.clone();
    let reads = blocking(move || end_state_reads(users, seed, &stamp)).await?;
    let read_load = timed_load(port, reads, "reading the end state back");
    let (read_floor, read_floor_server) = with_server_cpu(&mut conn, read_load).await?;
    let verify_args = ["verify", "grid-positions", "--redis", &url, "--json"];
    let (verify, verify_server) = with_server_cpu(&mut conn, child(&verify_args)).await?;
    let engine_verify = engine_verify(&url).await?;
    // The next size starts on an empty server; this keyspace is done.
    redis::cmd("FLUSHALL")
        .arg("ASYNC")
        .query_async::<()>(&mut conn)
        .await?;

    let cpu = CpuSeconds {
        floor_server,
        migrate_server,
        migrate_client: migrate.cpu_s,
        read_floor_server,
        verify_server,
        verify_client: verify.cpu_s,
    };
    Ok(Measured {
        users,
        keys_seeded,
        report,
        floor,
        migrate,
        read_floor,
        verify,
        engine_verify,
    }
    .row(cpu))
}

/// Times the engine's own verify of the newest run, in this process.
async fn engine_verify(url: &str) -> anyhow::Result<Duration> {
    use keyshift_engine::grid_positions::{latest_run, verify::verify_grid_positions};
    let conn = keyshift_engine::grid_positions::store::standalone::connect(url).await?;
    let started = std::time::Instant::now();
    let run = latest_run(&conn).await?;
    verify_grid_positions(&conn, &run, &|_| {}).await?;
    Ok(started.elapsed())
}

/// The keyspace of one size: the gate's generator, from the seed.
fn keyspace(users: usize, seed: u64) -> Keyspace {
    generate(&GenConfig {
        users,
        seed,
        ..GenConfig::default()
    })
    .keyspace
}

/// The keyspace's seeding commands, and the floor's: its migrated end
/// state written directly. Returns them with the number of keys seeded.
fn seed_and_floor(users: usize, seed: u64) -> anyhow::Result<(usize, Vec<u8>, Vec<u8>)> {
    let keyspace = keyspace(users, seed);
    let mut seed_resp = Vec::new();
    write_resp(&keyspace, &mut seed_resp)?;
    let now = chrono::Utc::now();
    let mut end_resp = Vec::new();
    write_end_state(
        &keyspace,
        &exchanges(None),
        &now.format("%Y%m%d_%H%M%S").to_string(),
        &now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        &mut end_resp,
    )?;
    Ok((keyspace.entries.len(), seed_resp, end_resp))
}

/// The read floor's commands: the migrated end state (backups stamped
/// `stamp`) read back.
fn end_state_reads(users: usize, seed: u64, stamp: &str) -> anyhow::Result<Vec<u8>> {
    let mut reads = Vec::new();
    write_end_state_reads(&keyspace(users, seed), &exchanges(None), stamp, &mut reads)?;
    Ok(reads)
}

/// Runs `work` on the blocking pool (generating and piping are CPU and
/// socket bound).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work).await?
}

/// A connection with no response timeout: a FLUSHALL SYNC of millions of
/// keys takes as long as it takes, and this is a server we started.
async fn unbounded_connection(url: &str) -> anyhow::Result<RedisConn> {
    let conn = redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await?;
    Ok(RedisConn::from(conn))
}

async fn flush_sync(conn: &RedisConn) -> redis::RedisResult<()> {
    let mut c = conn.clone();
    redis::cmd("FLUSHALL")
        .arg("SYNC")
        .query_async::<()>(&mut c)
        .await
}

/// Pipes `resp` to the server; returns how long it took.
async fn timed_load(port: u16, resp: Vec<u8>, what: &'static str) -> anyhow::Result<Duration> {
    blocking(move || {
        let started = Instant::now();
        load(port, &resp, what)?;
        Ok(started.elapsed())
    })
    .await
}

/// A step's result and the server CPU seconds it took.
async fn with_server_cpu<T>(
    conn: &mut RedisConn,
    step: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, f64)> {
    let cpu = ServerCpu::start(conn).await?;
    let out = step.await?;
    Ok((out, cpu.seconds(conn).await?))
}

/// What the migrate report says the run did.
struct MigrateReport {
    keys_migrated: u64,
    positions: u64,
    stamp: String,
}

/// The migrate child's JSON report; an exit other than 0 (or 3, for the
/// seeded malformed keys) is an error.
fn migrate_report(migrate: &ChildRun, users: usize) -> anyhow::Result<MigrateReport> {
    if migrate.code != 0 && migrate.code != 3 {
        bail!(
            "keyshift migrate exited {} at {users} users:\n{}",
            migrate.code,
            migrate.stdout
        );
    }
    let report: serde_json::Value =
        serde_json::from_str(&migrate.stdout).context("reading the migrate report")?;
    let totals = &report["totals"];
    Ok(MigrateReport {
        keys_migrated: totals["keys_migrated"].as_u64().unwrap_or(0),
        positions: totals["positions_migrated"].as_u64().unwrap_or(0),
        stamp: report["stamp"]
            .as_str()
            .context("the migrate report has no backup stamp")?
            .to_owned(),
    })
}

/// One size's measurements, before they are rounded into a row.
struct Measured {
    users: usize,
    keys_seeded: usize,
    report: MigrateReport,
    floor: Duration,
    migrate: ChildRun,
    read_floor: Duration,
    verify: ChildRun,
    engine_verify: Duration,
}

impl Measured {
    fn row(self, cpu: CpuSeconds) -> MigrationRow {
        let positions = self.report.positions;
        let per_s = |d: Duration| (positions as f64 / d.as_secs_f64().max(1e-9)).round();
        let mb = |kb: u64| (kb as f64 / 1024.0 * 10.0).round() / 10.0;
        let secs = |d: Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
        let (floor, migrate, read_floor, verify) =
            (self.floor, &self.migrate, self.read_floor, &self.verify);
        MigrationRow {
            users: self.users,
            keys_seeded: self.keys_seeded,
            legacy_keys_migrated: self.report.keys_migrated,
            positions_migrated: positions,
            floor_s: secs(floor),
            floor_positions_per_s: per_s(floor),
            migrate_s: secs(migrate.wall),
            migrate_positions_per_s: per_s(migrate.wall),
            ratio: ratio(migrate.wall, floor),
            migrate_exit: migrate.code,
            migrate_peak_rss_mb: mb(migrate.peak_rss_kb),
            read_floor_s: secs(read_floor),
            read_floor_positions_per_s: per_s(read_floor),
            verify_s: secs(verify.wall),
            verify_positions_per_s: per_s(verify.wall),
            verify_ratio: ratio(verify.wall, read_floor),
            verify_exit: verify.code,
            verify_peak_rss_mb: mb(verify.peak_rss_kb),
            engine_verify_s: secs(self.engine_verify),
            verify_vs_engine_verify: ratio(verify.wall, self.engine_verify),
            cpu_per_user_us: cpu.per_user_us(self.users),
            cpu,
        }
    }
}

/// CPU seconds spent in each measured step: the server's (`INFO cpu`, all
/// its threads) and the keyshift child's (utime + stime). On a shared,
/// noisy machine wall time swings with the neighbours; CPU time mostly
/// does not, so these show where the ratio's cost lies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuSeconds {
    pub floor_server: f64,
    pub migrate_server: f64,
    pub migrate_client: f64,
    pub read_floor_server: f64,
    pub verify_server: f64,
    pub verify_client: f64,
}

impl CpuSeconds {
    /// The same split per generated user, in microseconds (one decimal):
    /// what a user costs each side, comparable across sizes.
    pub fn per_user_us(&self, users: usize) -> CpuSeconds {
        let us = |s: f64| (s * 1e6 / users.max(1) as f64 * 10.0).round() / 10.0;
        CpuSeconds {
            floor_server: us(self.floor_server),
            migrate_server: us(self.migrate_server),
            migrate_client: us(self.migrate_client),
            read_floor_server: us(self.read_floor_server),
            verify_server: us(self.verify_server),
            verify_client: us(self.verify_client),
        }
    }
}

/// The server's CPU time at the start of a step.
struct ServerCpu(f64);

impl ServerCpu {
    async fn start(conn: &mut RedisConn) -> anyhow::Result<Self> {
        Ok(Self(super::cpu::server_seconds(conn).await?))
    }

    /// Seconds of server CPU since `start`, to the millisecond.
    async fn seconds(self, conn: &mut RedisConn) -> anyhow::Result<f64> {
        let spent = super::cpu::server_seconds(conn).await? - self.0;
        Ok((spent * 1000.0).round() / 1000.0)
    }
}

/// `measured / floor`, two decimals.
fn ratio(measured: Duration, floor: Duration) -> f64 {
    (measured.as_secs_f64() / floor.as_secs_f64().max(1e-9) * 100.0).round() / 100.0
}

fn load(port: u16, resp: &[u8], what: &str) -> anyhow::Result<()> {
    let outcome = pipe(port, resp).with_context(|| format!("{what} through a pipe"))?;
    if outcome.errors > 0 {
        bail!(
            "{what}: {} of {} commands failed, first: {}",
            outcome.errors,
            outcome.replies,
            outcome.first_error.unwrap_or_default()
        );
    }
    Ok(())
}

/// Runs this very binary with `args` as a child, sampling its peak RSS.
///
/// The peak is the child's `VmHWM` (/proc/PID/status), read every
/// [`RSS_SAMPLE`] until it exits: a high-water mark of the child's own
/// memory since its exec, so only growth in its last few milliseconds could
/// be missed. (`wait4`'s `ru_maxrss` would not do: Linux folds the parent's
/// high-water mark into it at exec, and this parent holds the keyspace.)
async fn child(args: &[&str]) -> anyhow::Result<ChildRun> {
    let exe = std::env::current_exe().context("finding the keyshift binary")?;
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut proc = Command::new(&exe)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let drain = |mut from: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = from.read_to_string(&mut s);
                s
            })
        };
        let stdout = drain(Box::new(proc.stdout.take().expect("piped")));
        let stderr = drain(Box::new(proc.stderr.take().expect("piped")));
        let mut peak_rss_kb = 0;
        let mut cpu_s: f64 = 0.0;
        let status = loop {
            if let Some(kb) = vm_hwm_kb(proc.id()) {
                peak_rss_kb = peak_rss_kb.max(kb);
            }
            if let Some(s) = cpu_seconds(proc.id()) {
                cpu_s = cpu_s.max(s);
            }
            if let Some(status) = proc.try_wait()? {
                break status;
            }
            std::thread::sleep(RSS_SAMPLE);
        };
        let wall = started.elapsed();
        let code = status.code().unwrap_or(128);
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        if code != 0 && code != 3 && code != 1 {
            bail!("keyshift {} exited {code}: {stderr}", args.join(" "));
        }
        Ok(ChildRun {
            code,
            stdout,
            wall,
            peak_rss_kb,
            cpu_s: (cpu_s * 100.0).round() / 100.0,
        })
    })
    .await?
}

const RSS_SAMPLE: Duration = Duration::from_millis(5);

/// The `VmHWM` line of /proc/PID/status in KiB; `None` once the process
/// has exited (a zombie has no memory left to report).
fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm(&status)
}

/// utime + stime of /proc/PID/stat, in seconds (dead threads included).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / USER_HZ)
}

/// /proc reports CPU time in USER_HZ ticks, which the kernel fixes at 100
/// for userspace on every architecture Linux ships.
const USER_HZ: f64 = 100.0;

/// Fields 14 and 15 (utime, stime) of a /proc/PID/stat line. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted
/// from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_water_mark_is_read_from_proc_status() {
        let status = "Name:\tkeyshift\nVmPeak:\t  900 kB\nVmHWM:\t   43120 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(43120));
        assert_eq!(parse_vm_hwm("Name:\tzombie\nState:\tZ\n"), None);
        let own = vm_hwm_kb(std::process::id()).expect("this process has a VmHWM");
        assert!(own > 0);
    }

    #[test]
    fn cpu_per_user_is_microseconds_to_a_tenth() {
        let cpu = CpuSeconds {
            floor_server: 7.97,
            migrate_server: 12.38,
            migrate_client: 8.48,
            read_floor_server: 5.19,
            verify_server: 6.32,
            verify_client: 19.4,
        };
        let u = cpu.per_user_us(100_000);
        assert_eq!((u.floor_server, u.migrate_server), (79.7, 123.8));
        assert_eq!(u.verify_client, 194.0);
        assert_eq!(
            cpu.per_user_us(0).floor_server,
            7_970_000.0,
            "no division by zero"
        );
    }

    #[test]
    fn cpu_ticks_are_counted_past_a_command_name_with_spaces() {
        let stat = "4242 (tokio (rt) x) S 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(281));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }
}
