use super::*;

const LOG_NEWER: &str = "24819:C 28 Nov 2026 08:42:53.379 # oO0OoO0OoO0Oo Redis is starting oO0OoO0OoO0Oo
24819:C 28 Nov 2026 08:42:53.379 # Redis version=7.0.15, bits=64, commit=00000000, modified=0, pid=24819, just started
24819:M 28 Nov 2026 08:42:53.380 # Server initialized
24819:M 28 Nov 2026 08:42:53.381 # Can't handle RDB format version 12
24819:M 28 Nov 2026 08:42:53.381 # Fatal error loading the DB: Invalid argument. Exiting.";

fn snap(version: u32) -> Snapshot {
    Snapshot {
        file: PathBuf::from("/backups/dump.rdb"),
        rdb_version: version,
        bytes: 1234,
    }
}

#[test]
fn header_gives_the_rdb_version() {
    assert_eq!(parse_header(b"REDIS0010\xfa\x09redis-ver"), Ok(10));
    assert_eq!(parse_header(b"REDIS0012"), Ok(12));
    assert_eq!(parse_header(b"REDIS0009"), Ok(9));
}

#[test]
fn header_refuses_what_is_not_an_rdb() {
    for bad in [
        &b"hello world"[..],
        b"",
        b"REDIS",
        b"REDIS00x1",
        b"redis0010",
        b"*1\r\n$4\r\nPING",
    ] {
        let err = parse_header(bad).unwrap_err();
        assert!(err.starts_with("not an RDB file"), "{bad:?}: {err}");
    }
}

#[test]
fn diagnoses_each_load_failure_from_the_log() {
    assert_eq!(diagnose(LOG_NEWER), Some(LoadFailure::Version(12)));
    assert_eq!(
        diagnose("# Wrong signature trying to load DB from file\n# Fatal error loading the DB: Invalid argument. Exiting."),
        Some(LoadFailure::Signature)
    );
    assert_eq!(
        diagnose("# Wrong RDB checksum expected: (1) got (2). Aborting now."),
        Some(LoadFailure::Checksum)
    );
    assert_eq!(
        diagnose("# Short read or OOM loading DB. Unrecoverable error, aborting now."),
        Some(LoadFailure::ShortRead)
    );
    assert!(matches!(
        diagnose("# Fatal error loading the DB: Permission denied. Exiting."),
        Some(LoadFailure::Other(l)) if l.contains("Permission denied")
    ));
    assert_eq!(diagnose("* Ready to accept connections tcp"), None);
}

#[test]
fn reads_the_server_version_from_its_startup_line() {
    assert_eq!(server_version(LOG_NEWER), Some("7.0.15"));
    assert_eq!(server_version("no version here"), None);
}

#[test]
fn a_newer_rdb_names_file_versions_and_what_to_do() {
    let err = BackendError::ProcessExited {
        port: 1,
        status: "exit status: 1".into(),
        log_tail: LOG_NEWER.into(),
    };
    let explained = explain(err, &snap(12), BackendKind::Process, None).to_string();
    for part in [
        "/backups/dump.rdb",
        "RDB format version 12",
        "Redis 7.4 or newer",
        "Redis 7.0.15 cannot read",
        "at least as new",
        "PATH",
    ] {
        assert!(
            explained.contains(part),
            "{part:?} missing from: {explained}"
        );
    }
    let on_docker = explain(
        BackendError::ContainerNotReady {
            id: "abc".into(),
            waited: Duration::from_secs(1),
            logs: LOG_NEWER.into(),
        },
        &snap(12),
        BackendKind::Docker,
        Some("9.9.9"),
    );
    assert!(matches!(on_docker, BackendError::RdbNotLoaded { .. }));
    assert!(on_docker.to_string().contains("KEYSHIFT_REDIS_IMAGE"));
    assert!(
        on_docker.to_string().contains("Redis 7.0.15"),
        "{on_docker}"
    );
}

#[test]
fn without_a_version_line_the_process_binary_names_the_version() {
    let log = "# Wrong RDB checksum expected: (1) got (2). Aborting now.";
    let err = || BackendError::ProcessExited {
        port: 1,
        status: "exit status: 1".into(),
        log_tail: log.into(),
    };
    let named = explain(err(), &snap(10), BackendKind::Process, Some("7.0.15")).to_string();
    assert!(
        named.contains("Redis 7.0.15 found a wrong checksum"),
        "{named}"
    );
    let unnamed = explain(err(), &snap(10), BackendKind::Process, None).to_string();
    assert!(
        unnamed.contains("this Redis found a wrong checksum"),
        "{unnamed}"
    );
}

#[test]
fn failures_without_a_load_error_pass_through() {
    let err = BackendError::RedisServerNotFound;
    assert!(matches!(
        explain(err, &snap(10), BackendKind::Process, None),
        BackendError::RedisServerNotFound
    ));
    let err = BackendError::ProcessExited {
        port: 1,
        status: "exit status: 1".into(),
        log_tail: "# Address already in use".into(),
    };
    assert!(matches!(
        explain(err, &snap(10), BackendKind::Process, None),
        BackendError::ProcessExited { .. }
    ));
}

#[test]
fn open_refuses_a_missing_directory_or_foreign_file_as_usage() {
    let dir = tempfile::tempdir().unwrap();
    let missing = open(&dir.path().join("nope.rdb")).unwrap_err().to_string();
    assert!(
        missing.contains("nope.rdb") && missing.contains("cannot read it"),
        "{missing}"
    );
    let is_dir = open(dir.path()).unwrap_err().to_string();
    assert!(is_dir.contains("not a regular file"), "{is_dir}");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    let foreign = open(&text).unwrap_err();
    assert!(matches!(foreign, HarnessError::Usage(_)));
    assert!(foreign.to_string().contains("not an RDB file"), "{foreign}");
    let rdb = dir.path().join("dump.rdb");
    std::fs::write(&rdb, b"REDIS0011\xfa").unwrap();
    let ok = open(&rdb).unwrap();
    assert_eq!((ok.rdb_version, ok.bytes), (11, 10));
}

#[test]
fn setup_places_the_file_as_dump_rdb_and_waits_longer_for_big_files() {
    let mut big = snap(10);
    big.bytes = 2_000_000_000;
    let s = setup(&big);
    assert_eq!(
        s.files,
        vec![(PathBuf::from("/backups/dump.rdb"), "dump.rdb".to_owned())]
    );
    assert_eq!(s.ready_timeout, Some(Duration::from_secs(230)));
    assert_eq!(
        setup(&snap(10)).ready_timeout,
        Some(Duration::from_secs(30))
    );
}

fn digest_of(keys: &[(&str, &str)]) -> Digest {
    let mut ks = Keyspace::new();
    for (k, v) in keys {
        ks.push(KeyEntry::new(*k, KeyValue::String(v.as_bytes().to_vec())));
    }
    crate::digest::digest_keyspace(&ks)
}

#[test]
fn counts_judge_outcomes_against_the_snapshot() {
    let exchanges = vec!["okx".to_owned()];
    let legacy_keys = [
        ("okx:positions:1", r#"[{"a":1},{"b":2}]"#),
        ("okx:positions:2", "not json"),
        ("other", "x"),
    ];
    let pre = digest_of(&legacy_keys);
    let mut legacy = Keyspace::new();
    for (k, v) in &legacy_keys[..2] {
        legacy.push(KeyEntry::new(*k, KeyValue::String(v.as_bytes().to_vec())));
    }
    let report = |found| MigrationReport {
        migration: "grid-positions",
        run_id: None,
        resumed: false,
        stamp: String::new(),
        dry_run: false,
        skip_closed: false,
        exchanges: exchanges.clone(),
        totals: keyshift_engine::grid_positions::runner::Counts {
            legacy_keys_found: found,
            ..Default::default()
        },
        per_exchange: BTreeMap::new(),
        samples: Vec::new(),
        quarantined: Vec::new(),
        conflicts: Vec::new(),
        skipped: Vec::new(),
        skipped_keys: 0,
        elapsed_ms: 0,
    };
    let migrated = |positions| Outcome::Migrated {
        positions,
        skipped: 0,
        pttl: -1,
        at: 0,
        digest: String::new(),
    };
    let quarantined = Outcome::Quarantined {
        reason: "not_json".into(),
        detail: String::new(),
        digest: None,
    };
    let run = |outcomes: BTreeMap<String, Outcome>, found| {
        let mut r = InvariantResult::new("counts", "");
        check_counts(
            &mut r,
            &pre,
            &legacy,
            &exchanges,
            &report(found),
            &report(found),
            &outcomes,
        );
        r
    };
    let good: BTreeMap<String, Outcome> = [
        ("okx:positions:1".to_owned(), migrated(2)),
        ("okx:positions:2".to_owned(), quarantined.clone()),
    ]
    .into();
    assert!(run(good.clone(), 2).passed);
    assert!(!run(good.clone(), 3).passed, "the run found another count");

    let mut wrong_count = good.clone();
    wrong_count.insert("okx:positions:1".into(), migrated(1));
    let r = run(wrong_count, 2);
    assert!(
        !r.passed && r.samples[0].contains("2 entries"),
        "{:?}",
        r.samples
    );

    let mut missing = good.clone();
    missing.remove("okx:positions:2");
    assert!(!run(missing, 2).passed);

    let mut stray = good;
    stray.insert("okx:positions:9".into(), migrated(0));
    assert!(!run(stray, 2).passed);
}

#[test]
fn other_databases_come_from_info_keyspace() {
    let info = "# Keyspace\r\ndb0:keys=771,expires=52,avg_ttl=0\r\ndb3:keys=5,expires=0,avg_ttl=0\r\ndb12:keys=1,expires=1,avg_ttl=9\r\n";
    assert_eq!(other_databases(info), BTreeMap::from([(3, 5), (12, 1)]));
    assert!(other_databases("# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n").is_empty());
    assert!(other_databases("").is_empty());
}
