//! The faults a scenario applies: to the migrator (SIGKILL), to the
//! server it runs against (freeze, restart, dropped connections, network
//! cut, maxmemory), or to the data under it (keys expired, a rogue legacy
//! write).

use std::time::Duration;

use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::store::standalone::connect;
use tokio::process::Child;

use super::model::{Fault, FaultName};
use crate::backend::{Deployment, RedisServer};

/// Bytes of maxmemory above used memory for the maxmemory fault.
const MAXMEMORY_HEADROOM: u64 = 16 * 1024;

pub async fn client_ids(conn: &mut RedisConn) -> redis::RedisResult<Vec<i64>> {
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

/// Applies one fault; returns what happened. `go_on` lets a run stopped
/// at a checkpoint go on: a freeze or cut calls it once the server is
/// frozen or cut off, so the run meets it (the caller releases the run
/// after the other faults).
pub async fn strike(
    fault: &Fault,
    deployment: &mut Deployment,
    watch: &mut RedisConn,
    child: &mut Child,
    before: &[i64],
    go_on: &mut dyn FnMut(),
) -> anyhow::Result<String> {
    // Server faults strike one server; the scenario model refuses them on
    // a cluster, and this says so should one get through.
    let on_cluster = || {
        anyhow::anyhow!(
            "the {} fault strikes one server; a cluster scenario cannot use it",
            fault.kind.as_str()
        )
    };
    let ms = fault.duration_ms.unwrap_or(0);
    Ok(match fault.kind {
        FaultName::Sigkill => {
            child.kill().await?;
            "SIGKILL of the migrator".into()
        }
        FaultName::Pause => {
            freeze(deployment.server_mut().ok_or_else(on_cluster)?, ms, go_on).await?
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
        FaultName::DropConnections if deployment.is_cluster() => return Err(on_cluster()),
        FaultName::DropConnections => drop_connections(watch, before).await?,
        FaultName::NetworkCut => {
            let server = deployment.server_mut().ok_or_else(on_cluster)?;
            cut_network(server, ms, watch, go_on).await?
        }
        FaultName::Maxmemory if deployment.is_cluster() => return Err(on_cluster()),
        FaultName::Maxmemory => cap_memory(watch).await?,
        FaultName::ExpireKeys => expire_keys(watch, &fault.keys).await?,
        FaultName::LegacyWrite => {
            let value = fault.value.as_deref().unwrap_or_default();
            legacy_write(watch, &fault.keys, value).await?
        }
    })
}

async fn freeze(
    server: &mut RedisServer,
    ms: u64,
    go_on: &mut dyn FnMut(),
) -> anyhow::Result<String> {
    server.pause().await?;
    go_on();
    tokio::time::sleep(Duration::from_millis(ms)).await;
    server.unpause().await?;
    Ok(format!("server frozen {ms} ms ({})", freeze_how(server)))
}

/// CLIENT KILL of every connection opened since `before`, but `watch`'s own.
async fn drop_connections(watch: &mut RedisConn, before: &[i64]) -> anyhow::Result<String> {
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
    Ok(format!("CLIENT KILL of {killed} migrator connection(s)"))
}

async fn cut_network(
    server: &mut RedisServer,
    ms: u64,
    watch: &mut RedisConn,
    go_on: &mut dyn FnMut(),
) -> anyhow::Result<String> {
    server.disconnect_network().await?;
    go_on();
    tokio::time::sleep(Duration::from_millis(ms)).await;
    server.reconnect_network().await?;
    *watch = connect(&server.url()).await?;
    Ok(format!(
        "container disconnected from its network for {ms} ms"
    ))
}

/// maxmemory just above the memory in use: writes soon fail with OOM.
async fn cap_memory(watch: &mut RedisConn) -> anyhow::Result<String> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(watch).await?;
    let used = info_field(&info, "used_memory").unwrap_or(0);
    let limit = used + MAXMEMORY_HEADROOM;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(limit)
        .query_async::<()>(watch)
        .await?;
    Ok(format!("maxmemory set to {limit} bytes ({used} used)"))
}

async fn expire_keys(watch: &mut RedisConn, keys: &[String]) -> anyhow::Result<String> {
    let mut expiring = 0;
    for key in keys {
        let n: i64 = redis::cmd("PEXPIRE")
            .arg(key)
            .arg(1)
            .query_async(watch)
            .await?;
        expiring += n;
    }
    Ok(format!(
        "{expiring} of {} key(s) set to expire in 1 ms (the others were already migrated or gone)",
        keys.len()
    ))
}

/// A rogue writer still writing the legacy layout.
async fn legacy_write(
    watch: &mut RedisConn,
    keys: &[String],
    value: &str,
) -> anyhow::Result<String> {
    for key in keys {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async::<()>(watch)
            .await?;
    }
    Ok(format!("a rogue legacy writer SET {} key(s)", keys.len()))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
