//! A plain pipeline on a cluster: split by hash slot, each slot's part sent
//! on its own, the replies put back in the pipeline's order. Why each kind
//! of part goes the way it does is said at the function that sends it.

use futures_util::future::try_join_all;
use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisResult, Value};

use super::client_error;
use super::cluster::{only_reads, route_of};

/// Sends each slot's part of a plain pipeline on its own and puts the
/// replies back in the pipeline's order.
pub(super) async fn cluster_pipeline(
    conn: &ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let sends = slot_parts(&cmds).into_iter().map(|(route, members)| {
        let conn = conn.clone();
        let mut part = redis::pipe();
        for &i in &members {
            part.add_command(cmds[i].clone());
        }
        async move {
            let replies = send_part(conn, route, part, members.len()).await?;
            Ok::<_, redis::RedisError>((members, replies))
        }
    });
    let done = try_join_all(sends).await?;
    let mut replies = vec![Value::Nil; cmds.len()];
    for (members, values) in done {
        for (i, v) in members.into_iter().zip(values) {
            replies[i] = v;
        }
    }
    Ok(replies.into_iter().skip(offset).take(count).collect())
}

/// The commands' indexes grouped by where they route (`None`: no single
/// slot). Insertion order keeps the sends deterministic; a slot's commands
/// keep their relative order inside its part.
fn slot_parts(cmds: &[&Cmd]) -> Vec<(Option<Route>, Vec<usize>)> {
    let mut groups: Vec<(Option<Route>, Vec<usize>)> = Vec::new();
    let mut group_of: std::collections::HashMap<Option<Route>, usize> =
        std::collections::HashMap::new();
    for (i, cmd) in cmds.iter().enumerate() {
        let route = route_of(cmd);
        let g = *group_of.entry(route).or_insert_with(|| {
            groups.push((route, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    groups
}

/// The replies to one part of `n` commands, all routed to `route`.
async fn send_part(
    mut conn: ClusterConnection,
    route: Option<Route>,
    part: Pipeline,
    n: usize,
) -> RedisResult<Vec<Value>> {
    match route {
        // One command: a pipeline of one is redirected whole, ASKING
        // included.
        Some(route) if n == 1 => {
            let route = SingleNodeRoutingInfo::SpecificNode(route);
            conn.route_pipeline(part, 0, 1, route).await
        }
        Some(route) if part.cmd_iter().all(only_reads) => send_reads(conn, route, part, n).await,
        Some(route) => send_writes(conn, route, part, n).await,
        // Each to where redis-rs routes it, all at once.
        None => {
            let each = part.cmd_iter().map(|cmd| {
                let mut conn = conn.clone();
                async move { as_reply(conn.req_packed_command(cmd).await) }
            });
            try_join_all(each).await
        }
    }
}

/// Reads only: one pipeline (the read-only ACL user has no MULTI). While
/// the slot moves, redis-rs resends it whole after one ASKING, so the reads
/// past the first meet MOVED until its retries run out; reads run again
/// harmlessly, so then each goes on its own.
async fn send_reads(
    mut conn: ClusterConnection,
    route: Route,
    part: Pipeline,
    n: usize,
) -> RedisResult<Vec<Value>> {
    let at = SingleNodeRoutingInfo::SpecificNode(route);
    match conn.route_pipeline(part.clone(), 0, n, at).await {
        Ok(replies) => Ok(replies),
        Err(e) if redirected(&e) => {
            let each = part.cmd_iter().map(|cmd| command_at(&conn, route, cmd));
            try_join_all(each).await
        }
        Err(e) => Err(e),
    }
}

/// Several commands of one slot that write. While the slot moves, its
/// source runs the commands whose keys it still holds and answers ASK for
/// the others; redis-rs then resends the whole pipeline to the target after
/// a single ASKING, which covers its first command only: commands would run
/// twice, on both nodes, or not at all. So the part goes as MULTI/EXEC,
/// which the source refuses whole (EXECABORT, nothing run) when any key
/// needs ASK; then each command goes on its own, in order, and is
/// redirected on its own.
async fn send_writes(
    mut conn: ClusterConnection,
    route: Route,
    part: Pipeline,
    n: usize,
) -> RedisResult<Vec<Value>> {
    let mut atomic = redis::pipe();
    atomic.atomic();
    for cmd in part.cmd_iter() {
        atomic.add_command(cmd.clone());
    }
    let at = SingleNodeRoutingInfo::SpecificNode(route);
    let tried = conn.route_pipeline(atomic, n + 1, 1, at).await;
    if let Some(replies) = exec_replies(tried, n)? {
        return Ok(replies);
    }
    let mut replies = Vec::with_capacity(n);
    for cmd in part.cmd_iter() {
        replies.push(command_at(&conn, route, cmd).await?);
    }
    Ok(replies)
}

/// One command sent on its own to `route`'s node, so redis-rs follows its
/// own redirect.
async fn command_at(conn: &ClusterConnection, route: Route, cmd: &Cmd) -> RedisResult<Value> {
    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
    as_reply(conn.clone().route_command(cmd.clone(), routing).await)
}

/// A command's refusal stays a reply, as in a pipeline; a failure to get
/// one (connection, redirects exhausted) stays an error.
fn as_reply(result: RedisResult<Value>) -> RedisResult<Value> {
    match result {
        Ok(v) => Ok(v),
        Err(e) => match e.clone().into_server_errors() {
            Some(errs) if errs.len() == 1 => Ok(Value::ServerError(errs[0].1.clone())),
            _ => Err(e),
        },
    }
}

/// An error that says a key is elsewhere or on its way (ASK, MOVED,
/// TRYAGAIN), left after redis-rs's own redirects.
fn redirected(e: &redis::RedisError) -> bool {
    matches!(e.code(), Some("ASK" | "MOVED" | "TRYAGAIN"))
}

/// The replies of a MULTI/EXEC of `n` commands, or `None` when the server
/// refused it whole (EXECABORT: a key was elsewhere, ASK or MOVED, so
/// nothing ran).
fn exec_replies(tried: RedisResult<Vec<Value>>, n: usize) -> RedisResult<Option<Vec<Value>>> {
    let aborted = |code: Option<&str>| code == Some("EXECABORT");
    match tried {
        Err(e) if aborted(e.code()) => Ok(None),
        Err(e) => Err(e),
        Ok(mut v) => match v.pop() {
            Some(Value::Array(replies)) if replies.len() == n && v.is_empty() => Ok(Some(replies)),
            Some(Value::ServerError(e)) if aborted(Some(e.code())) => Ok(None),
            other => Err(client_error(format!(
                "a MULTI/EXEC of {n} commands answered {other:?}"
            ))),
        },
    }
}
