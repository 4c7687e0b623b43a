//! bench.json and bench.md. A run measures latency or migration; the other
//! section is kept from the bench.json already in the report directory, so
//! one directory ends up holding both, each with the time it was measured.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::data::{Op, StoreKind};
use super::latency::LatencyRow;
use super::migration::MigrationRow;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchReport {
    pub latency: Option<LatencySection>,
    pub migration: Option<MigrationSection>,
}

/// Where and how a section was measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setting {
    pub measured_at: String,
    pub backend: String,
    pub redis_version: String,
    pub cores: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencySection {
    pub setting: Setting,
    /// Users per positions-per-user dataset.
    pub users: usize,
    pub cell_ms: u64,
    pub rows: Vec<LatencyRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationSection {
    pub setting: Setting,
    pub seed: u64,
    pub rows: Vec<MigrationRow>,
}

impl BenchReport {
    /// The report in `dir`, or an empty one when there is none (or it is
    /// from an incompatible version: it is then replaced whole).
    pub fn load(dir: &Path) -> Self {
        std::fs::read_to_string(dir.join("bench.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("bench.json"), json + "\n")?;
        std::fs::write(dir.join("bench.md"), render(self))
    }
}

fn setting_line(s: &Setting) -> String {
    format!(
        "Measured {} on a disposable Redis {} ({} backend), {} cores shared by client and server.",
        s.measured_at, s.redis_version, s.backend, s.cores
    )
}

/// bench.md.
pub fn render(r: &BenchReport) -> String {
    let mut out = String::from("# keyshift bench\n\n");
    match &r.latency {
        Some(l) => render_latency(&mut out, l),
        None => out.push_str("No latency run yet: `keyshift bench`.\n\n"),
    }
    match &r.migration {
        Some(m) => render_migration(&mut out, m),
        None => out.push_str("No migration run yet: `keyshift bench --migration`.\n"),
    }
    out
}

fn render_latency(out: &mut String, l: &LatencySection) {
    let _ = writeln!(out, "## Data API latency\n\n{}", setting_line(&l.setting));
    let _ = writeln!(
        out,
        "{} users per dataset, {} ms per cell. The stores of one operation, positions and \
         concurrency are measured interleaved, in 10 rounds of one slice each, the order rotated \
         (the first tenth of a slice warms up), so a neighbour's burst on this shared machine \
         lands on all of them alike. Latencies in µs, measured at the caller: round trip plus \
         the store's own client work (JSON parsing and editing for legacy). CPU per call in µs, \
         warm-up included: this process's (the store's client work plus the connection's and \
         the bench loop's, alike for every store) and redis-server's, read around each slice; \
         they move much less with the neighbours' load than latencies do. `remove` times the \
         removal only; the position is put back untimed (its CPU is in the remove's). Charts: \
         `latency_<operation>.svg` (p50 by positions per user).\n",
        l.users, l.cell_ms
    );
    let _ = writeln!(out, "### p50 at concurrency 1 (µs)\n");
    let mut positions: Vec<usize> = l.rows.iter().map(|r| r.positions).collect();
    positions.sort_unstable();
    positions.dedup();
    let _ = write!(out, "| operation | store |");
    for p in &positions {
        let _ = write!(out, " {p} pos |");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "|---|---|{}", "---:|".repeat(positions.len()));
    let min_c = l.rows.iter().map(|r| r.concurrency).min().unwrap_or(1);
    for op in Op::ALL {
        for store in StoreKind::ALL {
            let _ = write!(out, "| {} | {} |", op.name(), store.name());
            for p in &positions {
                let cell = l.rows.iter().find(|r| {
                    r.op == op && r.store == store && r.positions == *p && r.concurrency == min_c
                });
                let _ = write!(
                    out,
                    " {} |",
                    cell.map_or("-".to_owned(), |r| format!("{:.1}", r.p50_us))
                );
            }
            let _ = writeln!(out);
        }
    }
    let _ = writeln!(out, "\n{}\n", read_verdict(l));
    let _ = writeln!(out, "### Every cell\n");
    let _ = writeln!(
        out,
        "| operation | store | positions | concurrency | calls | ops/s | p50 | p90 | p99 | p99.9 | max | client CPU/call | server CPU/call |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let cpu = |v: Option<f64>| v.map_or("-".to_owned(), |us| format!("{us:.1}"));
    for r in &l.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
            r.op.name(),
            r.store.name(),
            r.positions,
            r.concurrency,
            r.calls,
            r.ops_per_sec,
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.p999_us,
            r.max_us,
            cpu(r.client_cpu_us),
            cpu(r.server_cpu_us)
        );
    }
    out.push('\n');
}

/// The acceptance line of issue 6: the hash store's single-position read
/// p50 against the legacy one at 5 positions per user and above.
pub fn read_verdict(l: &LatencySection) -> String {
    let mut lines = Vec::new();
    let cell = |store, p, c| {
        l.rows.iter().find(|r| {
            r.op == Op::GetPosition && r.store == store && r.positions == p && r.concurrency == c
        })
    };
    let mut cells: Vec<(usize, usize)> = l
        .rows
        .iter()
        .filter(|r| r.op == Op::GetPosition && r.positions >= 5)
        .map(|r| (r.positions, r.concurrency))
        .collect();
    cells.sort_unstable();
    cells.dedup();
    for (p, c) in cells {
        if let (Some(h), Some(g)) = (cell(StoreKind::Hash, p, c), cell(StoreKind::Legacy, p, c)) {
            let mut line = format!(
                "{} {p} positions, concurrency {c}: hash {:.1} µs vs legacy {:.1} µs",
                if h.p50_us <= g.p50_us { "ok  " } else { "MISS" },
                h.p50_us,
                g.p50_us
            );
            if let (Some(hc), Some(gc), Some(hs), Some(gs)) = (
                h.client_cpu_us,
                g.client_cpu_us,
                h.server_cpu_us,
                g.server_cpu_us,
            ) {
                line.push_str(&format!(
                    "; CPU per call: client {hc:.1} vs {gc:.1} µs, server {hs:.1} vs {gs:.1} µs"
                ));
            }
            lines.push(line);
        }
    }
    if lines.is_empty() {
        return "Single-position read, hash vs legacy p50: no cell at 5 positions or more.".into();
    }
    format!(
        "Single-position read, hash p50 <= legacy p50 at 5 positions and above:\n\n```\n{}\n```",
        lines.join("\n")
    )
}

fn render_migration(out: &mut String, m: &MigrationSection) {
    let _ = writeln!(
        out,
        "## Phase 2 migration and verify against their floors\n\n{}",
        setting_line(&m.setting)
    );
    let _ = writeln!(
        out,
        "Generated keyspace (seed {}). Floor: the same end state (every hash, index, backup and \
         delete) written by a pipelined bulk load on the same server, no reads and no checks. \
         Read floor: the migrated end state read back by a pipelined bulk read (each index, \
         hash and its TTL, backup and its TTL, and whether the legacy key is gone), the \
         least any verifier must read. Migrate and verify run as child processes; peak RSS is each child's own high-water \
         mark (`VmHWM` of /proc/PID/status, sampled every 5 ms until it exits). Positions/s = positions migrated / wall time.\n",
        m.seed
    );
    let _ = writeln!(
        out,
        "| users | keys | legacy keys migrated | positions | floor s | floor pos/s | migrate s | migrate pos/s | ratio | migrate exit | migrate peak RSS MB | read floor s | verify s | verify pos/s | verify ratio | verify exit | verify peak RSS MB |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &m.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2} | {} | {:.2} | {} | {:.2} | {} | {:.1} | {:.2} | {:.2} | {} | {:.2} | {} | {:.1} |",
            r.users,
            r.keys_seeded,
            r.legacy_keys_migrated,
            r.positions_migrated,
            r.floor_s,
            r.floor_positions_per_s,
            r.migrate_s,
            r.migrate_positions_per_s,
            r.ratio,
            r.migrate_exit,
            r.migrate_peak_rss_mb,
            r.read_floor_s,
            r.verify_s,
            r.verify_positions_per_s,
            r.verify_ratio,
            r.verify_exit,
            r.verify_peak_rss_mb
        );
    }
    let _ = writeln!(out);
    for r in &m.rows {
        let _ = writeln!(
            out,
            "- {} users: migrate took {:.2}x the write floor, verify {:.2}x the read floor ({:.2}x the engine's own verify of the same run, {:.2} s); peak RSS migrate {:.1} MB, verify {:.1} MB{}.",
            r.users,
            r.ratio,
            r.verify_ratio,
            r.verify_vs_engine_verify,
            r.engine_verify_s,
            r.migrate_peak_rss_mb,
            r.verify_peak_rss_mb,
            if r.verify_exit == 0 {
                ", every invariant holds"
            } else {
                ", VERIFY FAILED"
            }
        );
    }
    let _ = writeln!(
        out,
        "\nCPU seconds of each step (server: `INFO cpu` of redis-server; client: utime + \
         stime of the keyshift child). Wall time swings with the machine's other load, CPU \
         time much less, so these show where the ratios' cost lies.\n"
    );
    let _ = writeln!(
        out,
        "| users | floor server | migrate server | migrate client | server ratio | read floor server | verify server | verify client | server ratio |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &m.rows {
        let c = &r.cpu;
        let server_ratio = |x: f64, floor: f64| x / floor.max(1e-3);
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.users,
            c.floor_server,
            c.migrate_server,
            c.migrate_client,
            server_ratio(c.migrate_server, c.floor_server),
            c.read_floor_server,
            c.verify_server,
            c.verify_client,
            server_ratio(c.verify_server, c.read_floor_server),
        );
    }
    let _ = writeln!(
        out,
        "\nThe same per generated user, in microseconds of CPU:\n\n\
         | users | floor server | migrate server | migrate client | read floor server | verify server | verify client |\n\
         |---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &m.rows {
        let u = &r.cpu_per_user_us;
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.users,
            u.floor_server,
            u.migrate_server,
            u.migrate_client,
            u.read_floor_server,
            u.verify_server,
            u.verify_client,
        );
    }
    let _ = writeln!(
        out,
        "\nExit 3 from migrate is expected: the generator seeds malformed legacy keys, which are \
         quarantined and reported. Chart: `migration.svg`."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(store: StoreKind, positions: usize, p50: f64) -> LatencyRow {
        LatencyRow {
            op: Op::GetPosition,
            store,
            positions,
            concurrency: 1,
            calls: 10,
            ops_per_sec: 1.0,
            mean_us: p50,
            p50_us: p50,
            p90_us: p50,
            p99_us: p50,
            p999_us: p50,
            max_us: p50,
            client_cpu_us: Some(p50 / 2.0),
            server_cpu_us: None,
        }
    }

    fn section(rows: Vec<LatencyRow>) -> LatencySection {
        LatencySection {
            setting: Setting {
                measured_at: "t".into(),
                backend: "process".into(),
                redis_version: "7".into(),
                cores: 2,
            },
            users: 1,
            cell_ms: 1,
            rows,
        }
    }

    #[test]
    fn verdict_names_each_cell_at_five_positions_and_above() {
        let l = section(vec![
            row(StoreKind::Hash, 1, 9.0),
            row(StoreKind::Legacy, 1, 5.0),
            row(StoreKind::Hash, 5, 9.0),
            row(StoreKind::Legacy, 5, 10.0),
            row(StoreKind::Hash, 20, 12.0),
            row(StoreKind::Legacy, 20, 11.0),
        ]);
        let v = read_verdict(&l);
        assert!(v.contains("ok   5 positions"), "{v}");
        assert!(v.contains("MISS 20 positions"), "{v}");
        assert!(!v.contains(" 1 positions"), "{v}");
    }

    #[test]
    fn markdown_holds_every_cell_and_both_sections() {
        let r = BenchReport {
            latency: Some(section(vec![row(StoreKind::DualRead, 5, 7.5)])),
            migration: None,
        };
        let md = render(&r);
        assert!(md.contains("| get_position | dual-read | 5 | 1 |"), "{md}");
        assert!(md.contains("No migration run yet"), "{md}");
    }
}
