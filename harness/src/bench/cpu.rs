//! CPU time, the server's and this process's. On a shared machine wall time
//! swings with the neighbours' load; CPU time per call mostly does not, so
//! the reports give it beside the latencies to show where a cost lies.

use anyhow::Context;
use keyshift_engine::connection::RedisConn;

/// used_cpu_user + used_cpu_sys of the server (every thread), in seconds.
pub async fn server_seconds(conn: &mut RedisConn) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    parse_server_cpu(&info).context("INFO cpu has no used_cpu_user/used_cpu_sys")
}

/// used_cpu_user + used_cpu_sys of an `INFO cpu` reply.
fn parse_server_cpu(info: &str) -> Option<f64> {
    let field = |name: &str| -> Option<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    Some(field("used_cpu_user")? + field("used_cpu_sys")?)
}

/// Nanoseconds this process's live threads have run, from
/// /proc/self/task/*/schedstat (nanosecond accounting, where /proc/PID/stat
/// counts 10 ms ticks: too coarse for a 30 ms slice). `None` where the
/// kernel does not provide it.
pub fn process_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += parse_schedstat(&stat)?;
    }
    Some(total)
}

/// The first field of a schedstat line: time spent on the CPU, ns.
fn parse_schedstat(line: &str) -> Option<u64> {
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_cpu_sums_user_and_sys() {
        let info = "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\nused_cpu_sys_children:9.0\r\n";
        assert_eq!(parse_server_cpu(info), Some(3.75));
        assert_eq!(parse_server_cpu("# CPU\r\n"), None);
    }

    #[test]
    fn schedstat_gives_its_first_field() {
        assert_eq!(
            parse_schedstat("258701650 152185318 577\n"),
            Some(258_701_650)
        );
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn this_process_has_run() {
        // Burn a little CPU so the count cannot be zero where it is kept.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        if let Some(ns) = process_ns() {
            assert!(ns > 0, "schedstat gave no CPU time for a busy process");
        }
    }
}
