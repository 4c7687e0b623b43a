//! Resume after SIGKILL (issue 4, DESIGN §2 last paragraph): a
//! `keyshift migrate grid-positions` killed at any point of its progress and
//! run again continues the same run from the journal and ends in the keyspace
//! an uninterrupted run gives, timestamps aside.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use keyshift_engine::run::journal::{is_journal_key, outcomes_key, read_run, runs_key, RunState};
use keyshift_engine::run::lock::{LOCK_KEY, TTL_ENV};
use keyshift_harness::seed::{generate, load, GenConfig, Keyspace};
use support::cli::{keyshift_on, run, Ran};
use support::{redis, TestRedis};

/// Users in the generated keyspace (it also holds malformed legacy keys,
/// so a complete run exits 3). 1000 users give ~1300 journaled outcomes;
/// more would not fit 24 kill points into 90 s with a debug build (each
/// point runs `verify`, ~1.7 s of CPU per 1000 users).
const USERS: usize = 1000;
const KEYSPACE_SEED: u64 = 0x6b73_6869_6674;
/// Picks the kill points.
const KILL_POINTS_SEED: u64 = 0x0053_4947_4b49_4c4c;
/// Kill points the first round tries (4 of them early); more rounds follow
/// while fewer than [`MIN_MID_RUN_KILLS`] landed mid-run.
const FIRST_ROUND_POINTS: usize = 22;
const MIN_MID_RUN_KILLS: usize = 20;
/// Kill points run at once, each on its own server (they spend part of
/// their time waiting for a dead runner's lock to expire).
const CONCURRENT_POINTS: usize = 4;
/// A short runner-lock TTL, so a killed runner's lock frees fast. Not
/// shorter: the runner renews its lock on the same single thread that plans
/// its batches, and a debug build sharing two cores with other runners
/// stalls for over a second at times; with 300 ms it loses its lock (exit 5)
/// every second or so and barely progresses.
const LOCK_TTL_MS: &str = "2000";
/// How long a resumed run keeps retrying while it exits 5.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// How often the journal's progress is read while waiting for a kill point
/// (a busy loop would take a core from the runners it watches).
const POLL_INTERVAL: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------- kill points

/// SplitMix64: a tiny seeded generator, so the kill points replay exactly.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `[lo, hi)`; `lo` when the range is empty.
    fn in_range(&mut self, lo: usize, hi: usize) -> usize {
        if hi <= lo {
            return lo;
        }
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

/// Journal progress (outcomes recorded) at which to SIGKILL the runner.
/// `0` means "as soon as the run record exists, before any progress".
/// The first round includes very early points; every round spreads the
/// rest over `[1, total)`, one point per stratum.
fn choose_kill_targets(seed: u64, round: u64, total: usize, count: usize) -> Vec<usize> {
    let mut rng = SplitMix64(seed ^ round.wrapping_mul(0xa076_1d64_78bd_642f));
    let mut targets = Vec::with_capacity(count);
    if round == 0 {
        targets.extend([0, 1, rng.in_range(2, 9), rng.in_range(9, 40)]);
    }
    let strata = count - targets.len();
    let span = total.saturating_sub(1);
    for i in 0..strata {
        let lo = 1 + i * span / strata;
        let hi = 1 + (i + 1) * span / strata;
        targets.push(rng.in_range(lo, hi));
    }
    targets.retain(|&t| t < total.max(1));
    targets.sort_unstable();
    targets.dedup();
    targets
}

// --------------------------------------------------------- running keyshift

/// `keyshift migrate grid-positions --force --json`; `lock_ttl_ms` sets
/// `KEYSHIFT_LOCK_TTL_MS` (else the default 30 s TTL applies).
fn keyshift_migrate_command(url: &str, lock_ttl_ms: Option<&str>) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("keyshift"));
    cmd.args([
        "migrate",
        "grid-positions",
        "--force",
        "--json",
        "--redis",
        url,
    ])
    .env_remove(TTL_ENV)
    .env_remove("REDIS_URL")
    .env_remove("RUST_LOG")
    .stdin(Stdio::null());
    if let Some(ttl) = lock_ttl_ms {
        cmd.env(TTL_ENV, ttl);
    }
    cmd
}

/// Runs `keyshift migrate` (short lock TTL) until it ends otherwise than
/// with exit 5: a killed runner's lock turns it away until the lock expires,
/// and a runner stalled for longer than the short TTL loses its own lock
/// and stops (its run is then resumed by the next attempt). Returns the
/// last run and how many attempts exited 5.
async fn migrate_until_unlocked(r: &TestRedis) -> (Ran, usize) {
    let started = Instant::now();
    let mut exited_5 = 0;
    loop {
        let ran = run(keyshift_migrate_command(&r.url(), Some(LOCK_TTL_MS))).await;
        if ran.code == Some(5) && started.elapsed() < LOCK_WAIT {
            exited_5 += 1;
            // Retry once the lock that turned it away has expired.
            let lock_pttl: i64 = r.cmd(&["PTTL", LOCK_KEY]).await;
            let wait = Duration::from_millis(lock_pttl.max(0) as u64 + 20);
            tokio::time::sleep(wait).await;
            continue;
        }
        return (ran, exited_5);
    }
}

async fn run_ids(r: &TestRedis) -> Vec<String> {
    r.cmd(&["ZRANGE", &runs_key("grid-positions"), "0", "-1"])
        .await
}

async fn journaled_outcomes(r: &TestRedis, run_id: &str) -> usize {
    r.cmd(&["HLEN", &outcomes_key(run_id)]).await
}

/// Where a SIGKILL landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillLanded {
    /// The run was interrupted with this many outcomes journaled (read after
    /// the kill: commands the runner had already sent still apply).
    MidRun { journaled: usize },
    /// The runner had finished (or recorded its run as done) first.
    AfterCompletion,
}

/// Spawns `keyshift migrate` (short lock TTL) and SIGKILLs it once the
/// journal of its run records `target` outcomes (`0`: once the run record
/// exists), polling `HLEN keyshift:run:{id}:users` every millisecond. A
/// runner that stops on its own with exit 5 (it stalled past the short TTL
/// and lost its lock) is started again, as an operator would; the second
/// value counts those.
async fn kill_migrate_at_progress(r: &TestRedis, target: usize) -> (KillLanded, usize) {
    let spawn = || {
        keyshift_migrate_command(&r.url(), Some(LOCK_TTL_MS))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn keyshift")
    };
    let mut child: Child = spawn();
    let mut exited_5 = 0;
    let deadline = Instant::now() + LOCK_WAIT * 3;
    let mut run_id: Option<String> = None;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            match status.code() {
                Some(5) => {
                    exited_5 += 1;
                    child = spawn();
                }
                Some(0 | 3) => return (KillLanded::AfterCompletion, exited_5),
                _ => panic!("the runner to be killed at {target} failed on its own: {status}"),
            }
        }
        assert!(
            Instant::now() < deadline,
            "no progress to {target} in {:?}",
            LOCK_WAIT * 3
        );
        if run_id.is_none() {
            run_id = run_ids(r).await.into_iter().next();
        }
        if let Some(id) = &run_id {
            if target == 0 || journaled_outcomes(r, id).await >= target {
                break;
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    child.kill().expect("SIGKILL");
    tokio::task::spawn_blocking(move || child.wait().expect("wait"))
        .await
        .expect("reaper thread");
    let id = run_id.expect("a run id");
    let record = read_run(&r.conn, &id)
        .await
        .expect("the killed run's record");
    if record.state == RunState::Done {
        return (KillLanded::AfterCompletion, exited_5);
    }
    let journaled = journaled_outcomes(r, &id).await;
    (KillLanded::MidRun { journaled }, exited_5)
}

// ------------------------------------------------------------ canonical dump

/// One key of a canonical dump: its type, whether it has a TTL, and a SHA-1
/// of its canonical content (computed server-side, see
/// [`CANONICAL_KEYS_LUA`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct CanonicalKey {
    /// The key's real name on its server (the dump is keyed by the name
    /// with the run's stamp replaced).
    name: String,
    kind: String,
    has_ttl: bool,
    content_sha1: String,
}

impl CanonicalKey {
    fn same_as(&self, other: &CanonicalKey) -> bool {
        (&self.kind, self.has_ttl, &self.content_sha1)
            == (&other.kind, other.has_ttl, &other.content_sha1)
    }
}

/// Every non-journal key by its canonical name: the name with this run's
/// backup stamp replaced by a placeholder, so runs started at different
/// times compare equal.
struct CanonicalDump(BTreeMap<String, CanonicalKey>);

/// Per key, `{type}|{1 if it has a TTL else 0}|{sha1}` where the SHA-1
/// covers its content, each part length-prefixed: a string's bytes; a
/// hash's (field, value) pairs sorted by field WITHOUT `migrated_at`; a
/// set's members sorted; a list's items; a zset's (member, score) in Redis
/// order; any other type its DUMP. Server-side, because reading ~30k keys
/// through a debug build of the client takes seconds.
const CANONICAL_KEYS_LUA: &str = r#"
local function encode(parts)
  local out = {}
  for _, s in ipairs(parts) do out[#out + 1] = #s .. ':' .. s end
  return table.concat(out, ',')
end
local res = {}
for i, k in ipairs(KEYS) do
  local t = redis.call('TYPE', k)['ok']
  local parts
  if t == 'string' then
    parts = {redis.call('GET', k)}
  elseif t == 'hash' then
    local flat = redis.call('HGETALL', k)
    local fields = {}
    for j = 1, #flat, 2 do
      if flat[j] ~= 'migrated_at' then fields[#fields + 1] = {flat[j], flat[j + 1]} end
    end
    table.sort(fields, function(a, b) return a[1] < b[1] end)
    parts = {}
    for _, f in ipairs(fields) do parts[#parts + 1] = f[1]; parts[#parts + 1] = f[2] end
  elseif t == 'set' then
    parts = redis.call('SMEMBERS', k)
    table.sort(parts)
  elseif t == 'list' then
    parts = redis.call('LRANGE', k, 0, -1)
  elseif t == 'zset' then
    parts = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
  elseif t == 'none' then
    parts = {}
  else
    parts = {redis.call('DUMP', k)}
  end
  local ttl = redis.call('PTTL', k) >= 0 and '1' or '0'
  res[i] = t .. '|' .. ttl .. '|' .. redis.sha1hex(encode(parts))
end
return res
"#;

const STAMP_PLACEHOLDER: &str = "<STAMP>";
const DUMP_CHUNK: usize = 1000;

fn canonical_key_name(key: &str, run_stamp: &str) -> String {
    match key.strip_suffix(run_stamp) {
        Some(head) if head.ends_with(":backup:") => format!("{head}{STAMP_PLACEHOLDER}"),
        _ => key.to_owned(),
    }
}

/// A canonical dump of every non-journal key (type + content + TTL
/// presence), timestamps aside: `run_stamp` in backup key names replaced,
/// `migrated_at` hash fields dropped.
async fn canonical_dump_timestamps_aside(r: &TestRedis, run_stamp: &str) -> CanonicalDump {
    let mut c = r.conn.clone();
    let keys: Vec<String> = r
        .keys()
        .await
        .into_iter()
        .filter(|k| !is_journal_key(k))
        .collect();
    let script = redis::Script::new(CANONICAL_KEYS_LUA);
    let mut dump = BTreeMap::new();
    for chunk in keys.chunks(DUMP_CHUNK) {
        let mut call = script.prepare_invoke();
        for k in chunk {
            call.key(k);
        }
        let canonical: Vec<String> = call.invoke_async(&mut c).await.unwrap();
        for (k, line) in chunk.iter().zip(canonical) {
            let mut parts = line.splitn(3, '|');
            let (kind, ttl, sha) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            assert_ne!(kind, "none", "{k} vanished while dumping");
            dump.insert(
                canonical_key_name(k, run_stamp),
                CanonicalKey {
                    name: k.clone(),
                    kind: kind.to_owned(),
                    has_ttl: ttl == "1",
                    content_sha1: sha.to_owned(),
                },
            );
        }
    }
    CanonicalDump(dump)
}

/// A key's type, TTL and raw content, for a failure message.
async fn describe_key(r: &TestRedis, key: &str) -> String {
    let kind: String = r.cmd(&["TYPE", key]).await;
    let pttl: i64 = r.cmd(&["PTTL", key]).await;
    let content: redis::Value = match kind.as_str() {
        "string" => r.cmd(&["GET", key]).await,
        "hash" => r.cmd(&["HGETALL", key]).await,
        "set" => r.cmd(&["SMEMBERS", key]).await,
        "list" => r.cmd(&["LRANGE", key, "0", "-1"]).await,
        "zset" => r.cmd(&["ZRANGE", key, "0", "-1", "WITHSCORES"]).await,
        _ => redis::Value::Nil,
    };
    format!("{key} ({kind}, pttl {pttl}): {content:?}")
}

/// How two dumps differ: counts, and a few keys of each kind read back
/// from both servers.
async fn describe_dump_diff(
    expected_on: &TestRedis,
    expected: &CanonicalDump,
    found_on: &TestRedis,
    found: &CanonicalDump,
) -> String {
    let (e, f) = (&expected.0, &found.0);
    let missing: Vec<&CanonicalKey> = e
        .iter()
        .filter(|(k, _)| !f.contains_key(*k))
        .map(|(_, v)| v)
        .collect();
    let extra: Vec<&CanonicalKey> = f
        .iter()
        .filter(|(k, _)| !e.contains_key(*k))
        .map(|(_, v)| v)
        .collect();
    let changed: Vec<(&CanonicalKey, &CanonicalKey)> = e
        .iter()
        .filter_map(|(k, v)| f.get(k).filter(|w| !w.same_as(v)).map(|w| (v, w)))
        .collect();
    let mut out = format!(
        "{} keys expected, {} found: {} missing, {} extra, {} changed\n",
        e.len(),
        f.len(),
        missing.len(),
        extra.len(),
        changed.len()
    );
    for k in missing.iter().take(5) {
        out += &format!("  missing  {}\n", describe_key(expected_on, &k.name).await);
    }
    for k in extra.iter().take(5) {
        out += &format!("  extra    {}\n", describe_key(found_on, &k.name).await);
    }
    for (was, is) in changed.iter().take(5) {
        out += &format!(
            "  expected {}\n  found    {}\n",
            describe_key(expected_on, &was.name).await,
            describe_key(found_on, &is.name).await
        );
    }
    out
}

fn dumps_equal(a: &CanonicalDump, b: &CanonicalDump) -> bool {
    a.0.len() == b.0.len()
        && a.0
            .iter()
            .zip(&b.0)
            .all(|((ka, va), (kb, vb))| ka == kb && va.same_as(vb))
}

// ------------------------------------------------------------------- the test

/// The uninterrupted run everything is compared with (its server stays up
/// so a failure can show both sides of a difference).
struct Reference {
    server: TestRedis,
    dump: CanonicalDump,
    exit_code: Option<i32>,
    /// Outcomes its journal records: the end of the progress scale.
    journaled: usize,
}

async fn seeded_server(keyspace: &Keyspace) -> TestRedis {
    let r = redis().await;
    load(&r.conn, keyspace).await.unwrap();
    r
}

async fn verify_exits_0(r: &TestRedis, context: &str) {
    let verified = keyshift_on(r, &["verify", "grid-positions"]).await;
    assert_eq!(verified.code, Some(0), "{context}: verify: {verified}");
}

async fn uninterrupted_reference(keyspace: &Keyspace) -> Reference {
    let server = seeded_server(keyspace).await;
    // The default 30 s lock TTL: no stall interrupts this run.
    let ran = run(keyshift_migrate_command(&server.url(), None)).await;
    assert!(matches!(ran.code, Some(0 | 3)), "reference run: {ran}");
    let ids = run_ids(&server).await;
    assert_eq!(ids.len(), 1, "one run: {ids:?}");
    let record = read_run(&server.conn, &ids[0]).await.unwrap();
    assert_eq!(record.state, RunState::Done, "{record:?}");
    assert_eq!(record.resumes, 0, "{record:?}");
    verify_exits_0(&server, "reference").await;
    Reference {
        dump: canonical_dump_timestamps_aside(&server, &record.stamp).await,
        exit_code: ran.code,
        journaled: journaled_outcomes(&server, &ids[0]).await,
        server,
    }
}

/// What one kill point did.
#[derive(Debug)]
struct KillPointResult {
    target: usize,
    landed: KillLanded,
    /// Times the runner to be killed stopped on its own first (lock lost).
    lost_lock_before_kill: usize,
    /// Attempts of the resumed run that exited 5 (the dead runner's lock,
    /// or its own lost to a stall).
    resume_exits_5: usize,
    resumes: u32,
    elapsed: Duration,
}

/// Seeds a fresh server, SIGKILLs a run at `target`, runs migrate again,
/// and checks the resumed run against the uninterrupted one.
async fn kill_then_resume(
    keyspace: &Keyspace,
    reference: &Reference,
    target: usize,
) -> KillPointResult {
    let started = Instant::now();
    let r = seeded_server(keyspace).await;
    let (landed, lost_lock_before_kill) = kill_migrate_at_progress(&r, target).await;
    let killed_run = run_ids(&r).await;

    let (ran, resume_exits_5) = migrate_until_unlocked(&r).await;
    let at = format!("kill at {target} ({landed:?})");
    assert!(matches!(ran.code, Some(0 | 3)), "{at}: resumed run: {ran}");
    assert_eq!(ran.code, reference.exit_code, "{at}: resumed run: {ran}");
    verify_exits_0(&r, &at).await;

    let ids = run_ids(&r).await;
    let record = read_run(&r.conn, ids.last().expect("a run")).await.unwrap();
    assert_eq!(record.state, RunState::Done, "{at}: {record:?}");
    if let KillLanded::MidRun { .. } = landed {
        assert_eq!(
            ids, killed_run,
            "{at}: the killed run continues, no new run"
        );
        assert!(record.resumes >= 1, "{at}: {record:?}");
        assert_eq!(ran.json()["resumed"], true, "{at}: {ran}");
    }
    assert_eq!(
        journaled_outcomes(&r, &record.run_id).await,
        reference.journaled,
        "{at}: one outcome per legacy key in the run's journal"
    );

    let dump = canonical_dump_timestamps_aside(&r, &record.stamp).await;
    if !dumps_equal(&dump, &reference.dump) {
        panic!(
            "{at}: the end state differs from the uninterrupted run's (timestamps aside):\n{}",
            describe_dump_diff(&reference.server, &reference.dump, &r, &dump).await
        );
    }
    KillPointResult {
        target,
        landed,
        lost_lock_before_kill,
        resume_exits_5,
        resumes: record.resumes,
        elapsed: started.elapsed(),
    }
}

fn mid_run_kills(results: &[KillPointResult]) -> usize {
    results
        .iter()
        .filter(|p| matches!(p.landed, KillLanded::MidRun { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_runs_resume_to_the_uninterrupted_end_state() {
    let started = Instant::now();
    let keyspace = generate(&GenConfig {
        users: USERS,
        seed: KEYSPACE_SEED,
        ..GenConfig::default()
    })
    .keyspace;
    let reference = uninterrupted_reference(&keyspace).await;
    assert_eq!(
        reference.exit_code,
        Some(3),
        "the generated keyspace has malformed keys to quarantine"
    );
    let distinct: std::collections::BTreeSet<&str> = reference
        .dump
        .0
        .values()
        .map(|k| k.content_sha1.as_str())
        .collect();
    assert!(
        distinct.len() > reference.dump.0.len() / 2,
        "the canonical dump sees content: {} distinct of {}",
        distinct.len(),
        reference.dump.0.len()
    );
    eprintln!(
        "reference: {} keys, {} outcomes journaled, {:.1?}",
        reference.dump.0.len(),
        reference.journaled,
        started.elapsed()
    );

    let mut results: Vec<KillPointResult> = Vec::new();
    let mut round = 0;
    while mid_run_kills(&results) < MIN_MID_RUN_KILLS {
        assert!(round < 3, "too few kills landed mid-run: {results:#?}");
        let count = if round == 0 {
            FIRST_ROUND_POINTS
        } else {
            MIN_MID_RUN_KILLS - mid_run_kills(&results) + 2
        };
        let targets = choose_kill_targets(KILL_POINTS_SEED, round, reference.journaled, count);
        let done: Vec<KillPointResult> = stream::iter(targets)
            .map(|t| kill_then_resume(&keyspace, &reference, t))
            .buffer_unordered(CONCURRENT_POINTS)
            .collect()
            .await;
        results.extend(done);
        round += 1;
    }

    results.sort_by_key(|p| p.target);
    for p in &results {
        let landed = match p.landed {
            KillLanded::MidRun { journaled } => format!("mid-run, {journaled} journaled"),
            KillLanded::AfterCompletion => "after completion (not counted)".into(),
        };
        eprintln!(
            "kill at {:>5}: {landed:<32} resumes {} | exit 5: {} before the kill, {} resuming | {:.1?}",
            p.target, p.resumes, p.lost_lock_before_kill, p.resume_exits_5, p.elapsed
        );
    }
    assert!(
        results
            .iter()
            .any(|p| p.landed == KillLanded::MidRun { journaled: 0 }),
        "one kill landed before any progress"
    );
    eprintln!(
        "{} kill points, {} mid-run; {:.1?} in all",
        results.len(),
        mid_run_kills(&results),
        started.elapsed()
    );
}
