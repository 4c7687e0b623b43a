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
use keyshift_engine::keys::DEFAULT_EXCHANGES;
use serde::{Deserialize, Serialize};

use super::pipe::pipe;
use crate::backend::RedisServer;
use crate::floor::{write_end_state, write_end_state_reads};
use crate::seed::{generate, write_resp, GenConfig};

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
    pub cpu: CpuSeconds,
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
    let generate_keyspace = move || {
        generate(&GenConfig {
            users,
            seed,
            ..GenConfig::default()
        })
        .keyspace
    };
    let (keys_seeded, seed_resp, end_resp) = tokio::task::spawn_blocking(move || {
        let keyspace = generate_keyspace();
        let mut seed_resp = Vec::new();
        write_resp(&keyspace, &mut seed_resp)?;
        let exchanges: Vec<String> = DEFAULT_EXCHANGES.iter().map(|s| (*s).to_owned()).collect();
        let now = chrono::Utc::now();
        let mut end_resp = Vec::new();
        write_end_state(
            &keyspace,
            &exchanges,
            &now.format("%Y%m%d_%H%M%S").to_string(),
            &now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            &mut end_resp,
        )?;
        Ok::<_, std::io::Error>((keyspace.entries.len(), seed_resp, end_resp))
    })
    .await??;

    // No response timeout: a FLUSHALL SYNC of millions of keys takes as
    // long as it takes, and this is a server we started.
    let mut conn = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
        .map(keyshift_engine::connection::RedisConn::from)?;
    let flush = |mut c: keyshift_engine::connection::RedisConn| async move {
        redis::cmd("FLUSHALL")
            .arg("SYNC")
            .query_async::<()>(&mut c)
            .await
    };
    flush(conn.clone()).await?;
    let seed_resp =
        tokio::task::spawn_blocking(move || load(port, &seed_resp, "seeding").map(|()| seed_resp))
            .await??;
    let cpu = ServerCpu::start(&mut conn).await?;
    let floor = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        load(port, &end_resp, "writing the floor's end state")?;
        Ok::<_, anyhow::Error>(started.elapsed())
    })
    .await??;
    let floor_server_cpu = cpu.seconds(&mut conn).await?;
    flush(conn.clone()).await?;
    tokio::task::spawn_blocking(move || load(port, &seed_resp, "seeding")).await??;

    let cpu = ServerCpu::start(&mut conn).await?;
    let migrate = child(&[
        "migrate",
        "grid-positions",
        "--redis",
        &url,
        "--force",
        "--json",
    ])
    .await?;
    if migrate.code != 0 && migrate.code != 3 {
        bail!(
            "keyshift migrate exited {} at {users} users:\n{}",
            migrate.code,
            migrate.stdout
        );
    }
    let report: serde_json::Value =
        serde_json::from_str(&migrate.stdout).context("reading the migrate report")?;
    let migrate_server_cpu = cpu.seconds(&mut conn).await?;
    let totals = &report["totals"];
    let positions = totals["positions_migrated"].as_u64().unwrap_or(0);
    let stamp = report["stamp"]
        .as_str()
        .context("the migrate report has no backup stamp")?
        .to_owned();
    // Generated again rather than kept: at 1M users the keyspace, its
    // seeding RESP and the server's copy together outgrow the machine.
    let reads = tokio::task::spawn_blocking(move || {
        let exchanges: Vec<String> = DEFAULT_EXCHANGES.iter().map(|s| (*s).to_owned()).collect();
        let mut reads = Vec::new();
        write_end_state_reads(&generate_keyspace(), &exchanges, &stamp, &mut reads)?;
        Ok::<_, anyhow::Error>(reads)
    })
    .await??;
    let cpu = ServerCpu::start(&mut conn).await?;
    let read_floor = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        load(port, &reads, "reading the end state back")?;
        Ok::<_, anyhow::Error>(started.elapsed())
    })
    .await??;
    let read_floor_server_cpu = cpu.seconds(&mut conn).await?;
    let cpu = ServerCpu::start(&mut conn).await?;
    let verify = child(&["verify", "grid-positions", "--redis", &url, "--json"]).await?;
    let verify_server_cpu = cpu.seconds(&mut conn).await?;
    // The next size starts on an empty server; this keyspace is done.
    redis::cmd("FLUSHALL")
        .arg("ASYNC")
        .query_async::<()>(&mut conn)
        .await?;

    let per_s = |d: Duration| (positions as f64 / d.as_secs_f64().max(1e-9)).round();
    let mb = |kb: u64| (kb as f64 / 1024.0 * 10.0).round() / 10.0;
    let secs = |d: Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
    Ok(MigrationRow {
        users,
        keys_seeded,
        legacy_keys_migrated: totals["keys_migrated"].as_u64().unwrap_or(0),
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
        cpu: CpuSeconds {
            floor_server: floor_server_cpu,
            migrate_server: migrate_server_cpu,
            migrate_client: migrate.cpu_s,
            read_floor_server: read_floor_server_cpu,
            verify_server: verify_server_cpu,
            verify_client: verify.cpu_s,
        },
    })
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

/// The server's CPU time at the start of a step.
struct ServerCpu(f64);

impl ServerCpu {
    async fn start(conn: &mut keyshift_engine::connection::RedisConn) -> anyhow::Result<Self> {
        Ok(Self(super::cpu::server_seconds(conn).await?))
    }

    /// Seconds of server CPU since `start`, to the millisecond.
    async fn seconds(
        self,
        conn: &mut keyshift_engine::connection::RedisConn,
    ) -> anyhow::Result<f64> {
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
    fn cpu_ticks_are_counted_past_a_command_name_with_spaces() {
        let stat = "4242 (tokio (rt) x) S 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(281));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }
}
