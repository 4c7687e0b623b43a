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

#[test]
fn cursors_round_trip_and_walk_the_primaries_in_order() {
    for (primary, node) in [(0, 0), (0, 17), (2, NODE_CURSOR_MAX), (255, 1)] {
        let c = encode_cursor(primary, node).unwrap();
        assert_eq!(decode_cursor(c), (primary, node));
    }
    // The first primary at its start is the SCAN start, 0.
    assert_eq!(encode_cursor(0, 0).unwrap(), 0);
    assert_eq!(next_cursor(0, 5, 3).unwrap(), encode_cursor(0, 5).unwrap());
    assert_eq!(next_cursor(0, 0, 3).unwrap(), encode_cursor(1, 0).unwrap());
    assert_eq!(next_cursor(2, 0, 3).unwrap(), 0);
}

#[test]
fn cursors_that_do_not_fit_are_refused() {
    assert!(encode_cursor(0, NODE_CURSOR_MAX + 1).is_err());
    assert!(encode_cursor(MAX_PRIMARIES, 0).is_err());
}

#[test]
fn primaries_are_ordered_by_their_first_slot() {
    let node = |h: &str, p: i64| Value::Array(vec![Value::BulkString(h.into()), Value::Int(p)]);
    let range = |s: i64, e: i64, n: Value| Value::Array(vec![Value::Int(s), Value::Int(e), n]);
    let reply = Value::Array(vec![
        range(10923, 16383, node("127.0.0.1", 7002)),
        range(100, 5460, node("127.0.0.1", 7000)),
        range(5461, 10922, node("127.0.0.1", 7001)),
        range(0, 99, node("127.0.0.1", 7001)),
    ]);
    let ports: Vec<(u16, u16)> = primaries_from_slots(reply)
        .unwrap()
        .into_iter()
        .map(|p| (p.port, p.first_slot))
        .collect();
    assert_eq!(ports, [(7001, 0), (7000, 100), (7002, 10923)]);
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
