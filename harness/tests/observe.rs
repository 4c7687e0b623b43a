//! What the oracle is shown: `observe::read_keys` reads each key as it is,
//! whatever its name suggests, and leaves out keys that are not there,
//! through the client's connection and through sockets of its own alike.

mod support;

use keyshift_harness::observe::read_keys;
use keyshift_harness::wire::Reader;
use keyshift_oracle::{Image, Value};
use support::redis;

fn bytes(keys: &[&str]) -> Vec<Vec<u8>> {
    keys.iter().map(|k| k.as_bytes().to_vec()).collect()
}

#[tokio::test]
async fn named_keys_are_read_as_they_are_and_absent_ones_left_out() {
    let r = redis().await;
    seed(&r).await;
    let wire = Reader::open(&r.url(), &r.conn).unwrap();
    assert!(matches!(wire, Reader::Wire(_)), "a plain TCP server");
    let through_client = read_keys(&Reader::from(&r.conn), &keys()).await.unwrap();
    let through_wire = read_keys(&wire, &keys()).await.unwrap();
    for image in [&through_client, &through_wire] {
        judge_reads(image);
    }
    // Both read the same values (the TTLs tick between the reads).
    let values = |image: &Image| {
        image
            .keys
            .iter()
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(values(&through_client), values(&through_wire));
}

#[tokio::test]
async fn the_wire_reader_reads_the_database_its_url_names() {
    let r = redis().await;
    let url = format!("{}/3", r.url());
    let db3 = keyshift_engine::connection::connect(&url).await.unwrap();
    for (conn, value) in [(&r.conn, "db0"), (&db3, "db3")] {
        redis::cmd("SET")
            .arg("okx:positions:1")
            .arg(value)
            .query_async::<()>(&mut conn.clone())
            .await
            .unwrap();
    }
    let reader = Reader::open(&url, &db3).unwrap();
    let image = read_keys(&reader, &bytes(&["okx:positions:1"]))
        .await
        .unwrap();
    assert!(matches!(
        &image.get("okx:positions:1").unwrap().value,
        Value::String(v) if v == b"db3"
    ));
}

async fn seed(r: &support::TestRedis) {
    let mut c = r.conn.clone();
    redis::pipe()
        .cmd("HSET")
        .arg("positions:7:okx:BTC:long")
        .arg("pos")
        .arg("1")
        .ignore()
        .cmd("PEXPIRE")
        .arg("positions:7:okx:BTC:long")
        .arg(600_000)
        .ignore()
        .cmd("SADD")
        .arg("positions:index:7:okx")
        .arg("BTC:long")
        .ignore()
        .cmd("SET")
        .arg("okx:positions:7")
        .arg("[]")
        .ignore()
        .cmd("SET")
        .arg("okx:positions:8")
        .arg("")
        .ignore()
        // Names that say one type, holding another.
        .cmd("SET")
        .arg("positions:7:okx:ETH:long")
        .arg("a string")
        .ignore()
        .cmd("HSET")
        .arg("okx:positions:9")
        .arg("f")
        .arg("v")
        .ignore()
        .cmd("RPUSH")
        .arg("positions:index:9:okx")
        .arg("x")
        .ignore()
        // A name that says nothing.
        .cmd("RPUSH")
        .arg("session:7")
        .arg("x")
        .ignore()
        .query_async::<()>(&mut c)
        .await
        .unwrap();
}

fn keys() -> Vec<Vec<u8>> {
    bytes(&[
        "positions:7:okx:BTC:long",
        "positions:index:7:okx",
        "okx:positions:7",
        "okx:positions:8",
        "positions:7:okx:ETH:long",
        "okx:positions:9",
        "positions:index:9:okx",
        "session:7",
        "positions:7:okx:SOL:long",
        "positions:index:8:okx",
        "okx:positions:10",
        "session:8",
    ])
}

fn judge_reads(image: &Image) {
    let kind = |k: &str| image.get(k).map(|e| e.value.kind().to_owned());
    assert_eq!(kind("positions:7:okx:BTC:long").as_deref(), Some("hash"));
    assert_eq!(kind("positions:index:7:okx").as_deref(), Some("set"));
    assert_eq!(kind("okx:positions:7").as_deref(), Some("string"));
    assert_eq!(kind("positions:7:okx:ETH:long").as_deref(), Some("string"));
    assert_eq!(kind("okx:positions:9").as_deref(), Some("hash"));
    assert_eq!(kind("positions:index:9:okx").as_deref(), Some("list"));
    assert_eq!(kind("session:7").as_deref(), Some("list"));
    // An empty string is a value, not an absence.
    assert!(matches!(
        &image.get("okx:positions:8").unwrap().value,
        Value::String(v) if v.is_empty()
    ));
    assert!(matches!(
        &image.get("positions:7:okx:ETH:long").unwrap().value,
        Value::String(v) if v == b"a string"
    ));
    for absent in [
        "positions:7:okx:SOL:long",
        "positions:index:8:okx",
        "okx:positions:10",
        "session:8",
    ] {
        assert!(image.get(absent).is_none(), "{absent} is not there");
    }
    assert_eq!(image.keys.len(), 8);
    let hash = image.get("positions:7:okx:BTC:long").unwrap();
    assert!(hash.pttl_ms > 590_000 && hash.pttl_ms <= 600_000);
    assert_eq!(image.get("okx:positions:7").unwrap().pttl_ms, -1);
    assert!(image.read_until_ms > 0);
}
