//! TLS, ACL users and credentials, through the `keyshift` binary as an
//! operator runs it: the shipped least-privilege users (docs/acl) run what
//! they are for and nothing else, `rediss://` works with a private CA and
//! fails clearly without it, and no password reaches any output.

#[path = "security/certs.rs"]
mod certs;
#[path = "security/cluster.rs"]
mod cluster;
#[path = "security/cluster_tls.rs"]
mod cluster_tls;
#[path = "security/servers.rs"]
mod servers;
mod support;

use std::path::Path;

use keyshift_harness::seed::{self, generate, GenConfig};
use support::cli::{keyshift, run, Ran};

use certs::Pki;
use servers::{Secured, MIGRATE_PASSWORD, MIGRATE_USER, READONLY_PASSWORD, READONLY_USER};

/// TLS environment variables and the files they name.
type TlsEnv<'a> = &'a [(&'a str, &'a Path)];

const TLS_VARS: [&str; 3] = [
    "KEYSHIFT_TLS_CA_CERT",
    "KEYSHIFT_TLS_CLIENT_CERT",
    "KEYSHIFT_TLS_CLIENT_KEY",
];

/// The binary with `REDIS_URL` set (as an operator keeps a password off
/// the command line) and `env` on top of an environment without TLS files.
async fn keyshift_as(url: &str, args: &[&str], env: &[(&str, &Path)]) -> Ran {
    let mut cmd = keyshift(args);
    for var in TLS_VARS {
        cmd.env_remove(var);
    }
    cmd.env("REDIS_URL", url);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(cmd).await
}

/// Users with grid positions, order-placed hashes, position-cache keys and
/// unrelated keys; nothing malformed, so every run ends with exit 0.
async fn seed(db: &Secured) {
    let g = generate(&GenConfig {
        users: 40,
        seed: 7,
        malformed_rate: 0.0,
        order_placed_rate: 0.5,
        position_cache_rate: 0.5,
        unrelated_rate: 0.5,
        ..GenConfig::default()
    });
    seed::load(&db.admin, &g.keyspace).await.expect("seeding");
}

fn legacy(key: &str) -> bool {
    (key.contains(":positions:") && !key.contains(":backup:"))
        || (key.ends_with(":order_placed") && !key.starts_with("orders:"))
}

#[tokio::test]
async fn the_migrate_user_migrates_verifies_rolls_back_and_cleans_up() {
    let db = Secured::start(None).await;
    seed(&db).await;
    let before = db.snapshot().await;
    let url = db.url(MIGRATE_USER, MIGRATE_PASSWORD);
    for args in [
        &["migrate", "order-placed", "--force"][..],
        &["verify", "order-placed"],
        &["cleanup-legacy", "--force"],
        &["migrate", "grid-positions", "--dry-run"],
        &["migrate", "grid-positions", "--force"],
        &["verify", "grid-positions"],
        &["validate"],
        &["status"],
        &["cleanup-migration", "grid-positions", "--force"],
        &["rollback", "grid-positions", "--force"],
        &["rollback", "order-placed", "--force"],
    ] {
        let ran = keyshift_as(&url, args, &[]).await;
        assert_eq!(ran.code, Some(0), "{args:?} as {MIGRATE_USER}: {ran}");
    }
    let after = db.snapshot().await;
    let restored: Vec<_> = before.keys().filter(|k| legacy(k)).collect();
    assert!(
        restored.len() > 20,
        "too few legacy keys seeded: {restored:?}"
    );
    for k in restored {
        assert_eq!(after.get(k), before.get(k), "{k} not restored by rollback");
    }
}

#[tokio::test]
async fn the_readonly_user_cannot_write_but_validates_verifies_and_reads_status() {
    let db = Secured::start(None).await;
    seed(&db).await;
    let before = db.snapshot().await;
    let ro = db.url(READONLY_USER, READONLY_PASSWORD);
    for args in [
        &["migrate", "grid-positions", "--force"][..],
        &["migrate", "order-placed", "--force"],
        &["cleanup-legacy", "--force"],
        &["rollback", "grid-positions", "--force"],
    ] {
        let ran = keyshift_as(&ro, args, &[]).await;
        assert_eq!(ran.code, Some(2), "{args:?} as {READONLY_USER}: {ran}");
        assert!(
            ran.stderr.contains("no permission") && ran.stderr.contains("keyshift-migrate.acl"),
            "{args:?}: {ran}"
        );
        assert!(!ran.stderr.contains(READONLY_PASSWORD), "{ran}");
    }
    assert!(before == db.snapshot().await, "the read-only user wrote");

    let url = db.url(MIGRATE_USER, MIGRATE_PASSWORD);
    for args in [
        &["migrate", "order-placed", "--force"][..],
        &["cleanup-legacy", "--force"],
        &["migrate", "grid-positions", "--force"],
    ] {
        let ran = keyshift_as(&url, args, &[]).await;
        assert_eq!(ran.code, Some(0), "{args:?} as {MIGRATE_USER}: {ran}");
    }
    let migrated = db.snapshot().await;
    // As docs/security.md says: these dry runs read only; those of migrate and
    // rollback load keyshift's scripts (SCRIPT LOAD) first.
    for (args, code) in [
        (&["cleanup-legacy", "--dry-run"][..], 0),
        (&["cleanup-migration", "grid-positions", "--dry-run"], 0),
        (&["migrate", "grid-positions", "--dry-run"], 2),
        (&["rollback", "order-placed", "--dry-run"], 2),
    ] {
        let ran = keyshift_as(&ro, args, &[]).await;
        assert_eq!(ran.code, Some(code), "{args:?} as {READONLY_USER}: {ran}");
    }
    for args in [
        &["validate"][..],
        &["validate", "--json"],
        &["verify", "grid-positions"],
        &["verify", "order-placed", "--json"],
        &["status"],
        &["status", "--json"],
    ] {
        let ran = keyshift_as(&ro, args, &[]).await;
        assert_eq!(ran.code, Some(0), "{args:?} as {READONLY_USER}: {ran}");
    }
    let now = db.snapshot().await;
    let changed: Vec<_> = migrated
        .keys()
        .chain(now.keys())
        .filter(|k| migrated.get(*k) != now.get(*k))
        .collect();
    assert!(changed.is_empty(), "a read-only command wrote: {changed:?}");
}

/// The shipped users reach no further than keyshift needs.
#[tokio::test]
async fn the_shipped_users_are_denied_what_keyshift_never_does() {
    let db = Secured::start(None).await;
    let mut admin = db.admin.clone();
    redis::cmd("SET")
        .arg("session:u1")
        .arg("private")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let connect = |user: &str, password: &str| {
        let url = db.url(user, password);
        async move {
            redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap()
        }
    };
    let mut migrate = connect(MIGRATE_USER, MIGRATE_PASSWORD).await;
    let mut readonly = connect(READONLY_USER, READONLY_PASSWORD).await;
    let denied = |r: redis::RedisResult<redis::Value>| match r {
        Err(e) => e.code() == Some("NOPERM"),
        Ok(v) => panic!("allowed: {v:?}"),
    };
    for args in [
        &["GET", "session:u1"][..],
        &["SET", "session:u1", "x"],
        &["DEL", "session:u1"],
        &["FLUSHALL"],
        &["CONFIG", "GET", "requirepass"],
        &["KEYS", "*"],
        &["ACL", "LIST"],
    ] {
        let mut cmd = redis::cmd(args[0]);
        cmd.arg(&args[1..]);
        assert!(
            denied(cmd.query_async(&mut migrate).await),
            "{MIGRATE_USER}: {args:?}"
        );
    }
    for args in [
        &["SET", "okx:positions:u1", "[]"][..],
        &["HSET", "positions:u1:okx:BTC:long", "pos", "1"],
        &["DEL", "session:u1"],
        &["EVAL", "return 1", "0"],
        &["SCRIPT", "LOAD", "return 1"],
        &["FLUSHALL"],
    ] {
        let mut cmd = redis::cmd(args[0]);
        cmd.arg(&args[1..]);
        assert!(
            denied(cmd.query_async(&mut readonly).await),
            "{READONLY_USER}: {args:?}"
        );
    }
    // The read-only user reads any key (validate classifies them all).
    let v: String = redis::cmd("GET")
        .arg("session:u1")
        .query_async(&mut readonly)
        .await
        .unwrap();
    assert_eq!(v, "private");
}

#[tokio::test]
async fn a_wrong_password_exits_4_and_is_never_echoed() {
    let db = Secured::start(None).await;
    let wrong = "wr0ng-Pq9sDxLm";
    let port = db.server.port();
    for (url, shown) in [
        (
            db.url(MIGRATE_USER, wrong),
            format!("redis://{MIGRATE_USER}:***@127.0.0.1:{port}"),
        ),
        (
            format!("redis://:{wrong}@127.0.0.1:{port}"),
            format!("redis://:***@127.0.0.1:{port}"),
        ),
    ] {
        let ran = keyshift_as(&url, &["validate"], &[]).await;
        assert_eq!(ran.code, Some(4), "{ran}");
        assert!(ran.stderr.contains(&shown), "{ran}");
        assert!(
            ran.stderr.contains("refused the user name or password"),
            "{ran}"
        );
        assert!(
            !ran.stderr.contains(wrong) && !ran.stdout.contains(wrong),
            "{ran}"
        );
    }
}

#[tokio::test]
async fn rediss_works_with_the_private_ca_and_fails_clearly_without_it() {
    let pki = Pki::new();
    let db = Secured::start(Some(&pki)).await;
    seed(&db).await;
    let url = db.tls_url(MIGRATE_USER, MIGRATE_PASSWORD);
    let ca = pki.path(certs::CA);
    let (cert, key) = (pki.path(certs::CLIENT_CERT), pki.path(certs::CLIENT_KEY));
    let full = [
        ("KEYSHIFT_TLS_CA_CERT", ca.as_path()),
        ("KEYSHIFT_TLS_CLIENT_CERT", cert.as_path()),
        ("KEYSHIFT_TLS_CLIENT_KEY", key.as_path()),
    ];
    for args in [
        &["migrate", "grid-positions", "--force"][..],
        &["verify", "grid-positions"],
        &["status"],
    ] {
        let ran = keyshift_as(&url, args, &full).await;
        assert_eq!(ran.code, Some(0), "{args:?} over TLS: {ran}");
    }

    let other_ca = pki.path(certs::OTHER_CA);
    let missing = pki.dir().join("no-such-ca.crt");
    let cases: [(TlsEnv, i32, &str); 4] = [
        // The system's roots do not know a private CA.
        (&full[1..], 4, "KEYSHIFT_TLS_CA_CERT"),
        (
            &[
                ("KEYSHIFT_TLS_CA_CERT", other_ca.as_path()),
                full[1],
                full[2],
            ],
            4,
            "KEYSHIFT_TLS_CA_CERT",
        ),
        // The server asks for a client certificate.
        (&full[..1], 4, "KEYSHIFT_TLS_CLIENT_CERT"),
        (
            &[
                ("KEYSHIFT_TLS_CA_CERT", missing.as_path()),
                full[1],
                full[2],
            ],
            2,
            "no-such-ca.crt: cannot be read",
        ),
    ];
    for (env, code, says) in cases {
        let ran = keyshift_as(&url, &["validate"], env).await;
        assert_eq!(ran.code, Some(code), "{env:?}: {ran}");
        assert!(ran.stderr.contains(says), "{env:?}: {ran}");
        assert!(!ran.stderr.contains(MIGRATE_PASSWORD), "{ran}");
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("reading a dir") {
        let path = entry.expect("a dir entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The password of the user `leaky`, with characters a URL must escape;
/// as a URL holds it; and a wrong one.
const LEAKY_PASSWORD: &str = "Le@k/y:S3cr?t#9";
const LEAKY_ESCAPED: &str = "Le%40k%2Fy%3AS3cr%3Ft%239";
const WRONG_PASSWORD: &str = "Wr0ng%2FGu3ss";

/// One run of the binary: URL, arguments, exit code (`None`: any failure).
type PasswordRun = (String, Vec<&'static str>, Option<i32>);

/// A password with characters a URL must escape, set through
/// `ACL SETUSER` with the shipped migrate grants; every command an
/// operator or a CI gate runs, with `RUST_LOG=trace`, failing ones
/// included; then no byte of any output or file holds the password, raw
/// or URL-escaped.
#[tokio::test]
async fn no_output_log_or_file_holds_a_password() {
    let db = Secured::start(None).await;
    seed(&db).await;
    add_leaky_user(&db).await;
    let runs = password_runs(db.server.port());
    let out = tempfile::tempdir().expect("a temp dir");
    for (i, (url, args, code)) in runs.iter().enumerate() {
        // Half through --redis, half through REDIS_URL.
        let ran = run_traced(out.path(), url, args, i % 2 == 0).await;
        // The trace log is there to be searched (each run builds a client).
        assert!(
            ran.stderr.contains("building a Redis client") || matches!(code, Some(2) | None),
            "{args:?}: no trace log: {ran}"
        );
        match code {
            Some(code) => assert_eq!(ran.code, Some(*code), "{args:?}: {ran}"),
            None => assert!(!matches!(ran.code, Some(0) | None), "{args:?}: {ran}"),
        }
        assert!(
            !ran.stderr.is_empty() || !ran.stdout.is_empty(),
            "{args:?} printed nothing"
        );
        std::fs::write(out.path().join(format!("{i:02}.stdout")), &ran.stdout).unwrap();
        std::fs::write(out.path().join(format!("{i:02}.stderr")), &ran.stderr).unwrap();
    }
    assert_no_file_holds_a_password(out.path(), 2 * runs.len());
}

/// The user `leaky`, with the shipped migrate grants and [`LEAKY_PASSWORD`].
async fn add_leaky_user(db: &Secured) {
    let grants = servers::shipped_acl("keyshift-migrate");
    let rules = grants.split_whitespace().skip(2).map(|r| {
        if r == "#PASSWORD_SHA256" {
            format!(">{LEAKY_PASSWORD}")
        } else {
            r.to_owned()
        }
    });
    let mut admin = db.admin.clone();
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg("leaky")
        .arg(rules.collect::<Vec<_>>())
        .query_async::<()>(&mut admin)
        .await
        .expect("ACL SETUSER with the shipped grants");
}

/// Every command an operator or a CI gate runs as `leaky` on the server
/// at `port`, then the ways to get the URL or the password wrong.
fn password_runs(port: u16) -> Vec<PasswordRun> {
    let url = format!("redis://leaky:{LEAKY_ESCAPED}@127.0.0.1:{port}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let leaky = |args: Vec<&'static str>, code| (url.clone(), args, Some(code));
    vec![
        leaky(vec!["validate", "--json"], 1),
        leaky(vec!["migrate", "grid-positions", "--dry-run", "--json"], 0),
        leaky(vec!["migrate", "order-placed", "--force", "--json"], 0),
        leaky(vec!["verify", "order-placed", "--json"], 0),
        leaky(vec!["cleanup-legacy", "--dry-run"], 0),
        leaky(vec!["migrate", "grid-positions", "--force"], 0),
        leaky(vec!["verify", "grid-positions"], 0),
        leaky(vec!["status"], 0),
        leaky(vec!["status", "--json"], 0),
        leaky(vec!["cleanup-migration", "grid-positions", "--dry-run"], 0),
        leaky(vec!["rollback", "grid-positions", "--dry-run"], 0),
        leaky(vec!["rollback", "grid-positions", "--force"], 0),
        // Failures: a wrong password, nothing listening, an unescaped
        // password (the URL means something else), a URL that does not
        // parse, TLS to a plain port, a write nobody confirmed.
        (
            format!("redis://leaky:{WRONG_PASSWORD}@127.0.0.1:{port}"),
            vec!["validate"],
            Some(4),
        ),
        (
            format!("redis://leaky:{LEAKY_ESCAPED}@127.0.0.1:{closed}"),
            vec!["validate"],
            Some(4),
        ),
        (
            format!("redis://leaky:{LEAKY_PASSWORD}@127.0.0.1:{port}"),
            vec!["validate"],
            None,
        ),
        (
            format!("redis://leaky:{LEAKY_ESCAPED}@127.0.0.1:notaport"),
            vec!["status"],
            Some(2),
        ),
        (
            format!("rediss://leaky:{LEAKY_ESCAPED}@127.0.0.1:{port}"),
            vec!["validate"],
            Some(4),
        ),
        leaky(vec!["migrate", "grid-positions"], 2),
    ]
}

/// The binary run in `dir` with `RUST_LOG=trace` and no TLS files, the URL
/// given by `--redis` or else through `REDIS_URL`.
async fn run_traced(dir: &Path, url: &str, args: &[&str], url_as_flag: bool) -> Ran {
    let mut cmd = if url_as_flag {
        let mut all = args.to_vec();
        all.extend(["--redis", url]);
        keyshift(&all)
    } else {
        let mut cmd = keyshift(args);
        cmd.env("REDIS_URL", url);
        cmd
    };
    for var in TLS_VARS {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "trace").current_dir(dir);
    run(cmd).await
}

/// `dir` holds the `expected` output files the test wrote (keyshift wrote
/// none), and no byte of them any part of a password.
fn assert_no_file_holds_a_password(dir: &Path, expected: usize) {
    let files = files_under(dir);
    assert_eq!(files.len(), expected, "keyshift wrote files: {files:?}");
    for file in files {
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
        for secret in [
            LEAKY_PASSWORD,
            LEAKY_ESCAPED,
            WRONG_PASSWORD,
            "S3cr",
            "Gu3ss",
        ] {
            assert!(
                !text.contains(secret),
                "{} holds {secret:?}:\n{text}",
                file.display()
            );
        }
    }
}

/// docs/security.md shows the users as shipped: the text the tests load.
#[test]
fn the_readme_shows_the_shipped_acl_lines() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md"))
            .expect("docs/security.md");
    for name in ["keyshift-migrate", "keyshift-readonly"] {
        let line = servers::shipped_acl(name);
        let line = line.trim_end();
        assert_eq!(line.lines().count(), 1, "{name}.acl: one user line");
        assert!(
            readme.contains(line),
            "docs/security.md lacks docs/acl/{name}.acl:\n{line}"
        );
    }
}
