//! Unit tests of `connection`: URL schemes, cursors, topology, routing.
use super::cluster::*;
use super::*;
use redis::cluster_routing::{Route, SlotAddr};

#[test]
fn cluster_schemes_give_one_node_url_per_seed() {
    assert_eq!(
        url_mode("redis+cluster://127.0.0.1:7000").unwrap(),
        UrlMode::Cluster(vec!["redis://127.0.0.1:7000".into()])
    );
    assert_eq!(
        url_mode("rediss+cluster://bot:pw@a:7000,b:7001/0").unwrap(),
        UrlMode::Cluster(vec![
            "rediss://bot:pw@a:7000/0".into(),
            "rediss://bot:pw@b:7001/0".into()
        ])
    );
    assert_eq!(
        url_mode("REDIS+CLUSTER://h:1?protocol=resp3").unwrap(),
        UrlMode::Cluster(vec!["redis://h:1?protocol=resp3".into()])
    );
}

#[test]
fn other_schemes_stay_single_urls() {
    for url in [
        "redis://h:6379/0",
        "rediss://u:p@h:6380",
        "redis+unix:///s.sock",
    ] {
        assert_eq!(url_mode(url).unwrap(), UrlMode::Single(url.into()));
    }
}

#[test]
fn a_cluster_url_without_a_node_is_refused_without_its_password() {
    let e = url_mode("redis+cluster://bot:s3cret@")
        .unwrap_err()
        .to_string();
    assert!(e.contains("names no node"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
}

fn at(primary: usize, slot_map: u32, node_cursor: u64) -> ClusterCursor {
    ClusterCursor {
        primary,
        slot_map,
        node_cursor,
    }
}

#[test]
fn cursors_round_trip_and_walk_the_primaries_in_order() {
    for c in [
        at(0, 0, 0),
        at(0, 0xabcde, 17),
        at(2, 1, NODE_CURSOR_MAX),
        at(255, 0xfffff, 1),
    ] {
        assert_eq!(decode_cursor(encode_cursor(c).unwrap()), c);
    }
    // The first primary at its start, with no slot map yet, is the SCAN start, 0.
    assert_eq!(encode_cursor(at(0, 0, 0)).unwrap(), 0);
    // The slot map's fingerprint rides along every step.
    let m = 0x12345;
    assert_eq!(
        next_cursor(at(0, m, 9), 5, 3).unwrap(),
        encode_cursor(at(0, m, 5)).unwrap()
    );
    assert_eq!(
        next_cursor(at(0, m, 5), 0, 3).unwrap(),
        encode_cursor(at(1, m, 0)).unwrap()
    );
    assert_eq!(next_cursor(at(2, m, 5), 0, 3).unwrap(), 0);
}

#[test]
fn cursors_that_do_not_fit_are_refused() {
    assert!(encode_cursor(at(0, 0, NODE_CURSOR_MAX + 1)).is_err());
    assert!(encode_cursor(at(MAX_PRIMARIES, 0, 0)).is_err());
}

fn slots_node(h: &str, p: i64, id: &str) -> Value {
    Value::Array(vec![
        Value::BulkString(h.into()),
        Value::Int(p),
        Value::BulkString(id.into()),
    ])
}

fn slots_range(s: i64, e: i64, n: Value) -> Value {
    Value::Array(vec![Value::Int(s), Value::Int(e), n])
}

#[test]
fn primaries_are_ordered_by_their_first_slot() {
    let reply = Value::Array(vec![
        slots_range(10923, 16383, slots_node("127.0.0.1", 7002, "c")),
        slots_range(100, 5460, slots_node("127.0.0.1", 7000, "a")),
        slots_range(5461, 10922, slots_node("127.0.0.1", 7001, "b")),
        slots_range(0, 99, slots_node("127.0.0.1", 7001, "b")),
    ]);
    let ports: Vec<(u16, String, u16)> = slot_map_from_slots(reply)
        .unwrap()
        .primaries
        .into_iter()
        .map(|p| (p.port, p.id, p.first_slot))
        .collect();
    assert_eq!(
        ports,
        [
            (7001, "b".into(), 0),
            (7000, "a".into(), 100),
            (7002, "c".into(), 10923)
        ]
    );
}

const NODES: &str = "\
aaa 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-99 101-5460
bbb 127.0.0.1:7001@17001 master - 0 1 2 connected 100 5461-10922
ccc 127.0.0.1:7002@17002 master - 0 1 3 connected 10923-16383
";

#[test]
fn cluster_slots_and_cluster_nodes_agree_on_one_slot_map() {
    // The same map, cut into other ranges and listed in another order.
    let reply = Value::Array(vec![
        slots_range(10923, 16383, slots_node("127.0.0.1", 7002, "ccc")),
        slots_range(0, 99, slots_node("127.0.0.1", 7000, "aaa")),
        slots_range(100, 100, slots_node("127.0.0.1", 7001, "bbb")),
        slots_range(101, 5460, slots_node("127.0.0.1", 7000, "aaa")),
        slots_range(5461, 10922, slots_node("127.0.0.1", 7001, "bbb")),
    ]);
    let map = slot_map_from_slots(reply).unwrap();
    let view = node_view(NODES).unwrap();
    assert_eq!(view.fingerprint, map.fingerprint);
    assert!(view.moving.is_empty());
    // One slot handed to another node is another map.
    let moved = NODES
        .replace("connected 100 ", "connected ")
        .replace("0-99 ", "0-100 ");
    assert_ne!(node_view(&moved).unwrap().fingerprint, map.fingerprint);
}

#[test]
fn a_node_shows_its_own_slot_moves_only() {
    let migrating = NODES.replace("101-5460", "101-5460 [5460->-bbb]");
    assert_eq!(
        node_view(&migrating).unwrap().moving,
        ["slot 5460 migrating to node bbb"]
    );
    let importing = NODES.replace("101-5460", "101-5460 [6000-<-bbb]");
    assert_eq!(
        node_view(&importing).unwrap().moving,
        ["slot 6000 importing from node bbb"]
    );
    // Another node's brackets are not this node's moves.
    let elsewhere = NODES.replace("5461-10922", "5461-10922 [5461->-aaa]");
    assert!(node_view(&elsewhere).unwrap().moving.is_empty());
    assert!(node_view("garbage").is_err());
}

#[test]
fn a_resharded_scan_is_its_own_error_telling_to_rerun() {
    let e = crate::error::EngineError::redis("scanning for legacy keys")(resharded(
        "127.0.0.1:7000 has slot 5460 migrating to node bbb".into(),
    ));
    let text = e.to_string();
    assert!(
        matches!(e, crate::error::EngineError::Resharded { .. }),
        "{text}"
    );
    assert!(text.contains("slot 5460 migrating"), "{text}");
    assert!(text.contains("rerun the same command"), "{text}");
}

#[test]
fn only_cluster_enabled_1_means_cluster() {
    assert!(info_says_cluster("# Cluster\r\ncluster_enabled:1\r\n"));
    assert!(!info_says_cluster("# Cluster\r\ncluster_enabled:0\r\n"));
}

#[test]
fn pipelined_commands_go_to_their_first_keys_slot_or_to_redis_rs() {
    let at = |k: &str| Some(Route::with_key(k, SlotAddr::Master));
    assert_eq!(route_of(redis::cmd("GET").arg("a")), at("a"));
    assert_eq!(route_of(redis::cmd("hgetall").arg("b")), at("b"));
    assert_eq!(route_of(redis::cmd("DEL").arg("c")), at("c"));
    assert_eq!(route_of(redis::cmd("DEL").arg("c").arg("d")), None);
    let script = |n: usize| {
        let mut c = redis::cmd("EVALSHA");
        c.arg("sha").arg(n).arg("k1").arg("k2").arg("argv");
        c
    };
    assert_eq!(route_of(&script(2)), at("k1"));
    assert_eq!(route_of(&script(0)), None);
    for keyless in ["TIME", "DBSIZE", "SCAN", "PING"] {
        assert_eq!(route_of(redis::cmd(keyless).arg("0")), None, "{keyless}");
    }
}

#[test]
fn reads_are_told_from_writes() {
    for read in ["GET", "hgetall", "PTTL", "EXISTS", "TYPE", "HMGET"] {
        assert!(only_reads(redis::cmd(read).arg("k")), "{read}");
    }
    for write in ["SET", "HSET", "DEL", "PEXPIREAT", "EVAL", "EVALSHA", "SADD"] {
        assert!(!only_reads(redis::cmd(write).arg("k")), "{write}");
    }
}

#[test]
fn scan_commands_are_recognised_with_their_arguments() {
    let mut cmd = redis::cmd("scan");
    cmd.arg(42).arg("MATCH").arg("a*").arg("COUNT").arg(10);
    let (cursor, rest) = is_scan(&cmd).unwrap();
    assert_eq!(cursor, 42);
    assert_eq!(
        rest,
        [
            b"MATCH".to_vec(),
            b"a*".to_vec(),
            b"COUNT".to_vec(),
            b"10".to_vec()
        ]
    );
    assert!(is_scan(redis::cmd("HSCAN").arg("k").arg(0)).is_none());
}

#[test]
fn a_password_with_an_unescaped_delimiter_is_named_not_echoed() {
    for (url, c) in [
        ("redis://bot:pa/s3cret@127.0.0.1:6379/0", '/'),
        ("redis://bot:pa@s3cret@127.0.0.1:6379", '@'),
        ("rediss://:pa?s3cret@h:6380", '?'),
        ("redis://bot:pa#s3cret@h:6379", '#'),
    ] {
        assert_eq!(unescaped_in_userinfo(url), Some(c), "{url}");
        let message = match connection_info(url) {
            Err(e) => e.to_string(),
            // redis-rs may read some such URLs as valid, with the wrong
            // password: then the server refuses it, with the advice of
            // `error::unreachable_advice`.
            Ok(_) => continue,
        };
        assert!(message.contains("percent-encode"), "{url}: {message}");
        assert!(!message.contains("s3cret"), "{url}: {message}");
    }
    // The reported case: a `/` in the password.
    let slash = connection_info("redis://bot:pa/s3cret@127.0.0.1:6379/0").unwrap_err();
    assert!(slash.to_string().contains("percent-encode"), "{slash}");
    assert_eq!(unescaped_in_userinfo("redis://bot:p%40ss@h:6379"), None);
    assert_eq!(unescaped_in_userinfo("redis://h:6379/0"), None);
    assert!(connection_info("redis://bot:p%2Fss@h:6379/0").is_ok());
}
