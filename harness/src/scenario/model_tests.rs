use super::*;

const MINIMAL: &str = r#"
name = "sigkill-at-half"
replays = "The migrator is killed halfway."
[dataset]
generator = { seed = 3, users = 50 }
[[fault]]
kind = "sigkill"
at_progress = 0.5
[[run]]
exit = "killed"
[[run]]
exit = 0
"#;

fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    Scenario::parse(Path::new("scenarios/x.toml"), text)
}

fn error_of(text: &str) -> String {
    parse(text).expect_err("must be refused").to_string()
}

#[test]
fn a_minimal_scenario_parses_with_defaults() {
    let s = parse(MINIMAL).unwrap();
    assert_eq!(s.name, "sigkill-at-half");
    assert_eq!(s.runs.len(), 2);
    assert_eq!(s.runs[0].migration, MigrationName::GridPositions);
    assert!(s.runs[0].exit.accepts(None) && !s.runs[0].exit.accepts(Some(0)));
    assert!(s.runs[1].exit.accepts(Some(0)) && !s.runs[1].exit.accepts(None));
    assert_eq!(s.faults[0].invocation, 1);
    assert_eq!(s.faults[0].timing(), Timing::Progress(0.5));
    let g = s.generator().unwrap().unwrap();
    assert_eq!((g.seed, g.users), (3, 50));
    assert_eq!(g.max_positions, GenConfig::default().max_positions);
    assert!(s.expect.hold.is_none() && !s.expect.rollback && !s.writers.any());
    assert_eq!(s.file, Path::new("scenarios/x.toml"));
}

#[test]
fn an_unknown_field_is_named_with_the_file() {
    let e = error_of(&MINIMAL.replace("at_progress = 0.5", "at_progres = 0.5"));
    assert!(e.starts_with("scenarios/x.toml:"), "{e}");
    assert!(e.contains("at_progres"), "{e}");
}

#[test]
fn a_fault_needs_exactly_one_timing() {
    let e = error_of(&MINIMAL.replace("at_progress = 0.5", "at_progress = 0.5\nafter_ms = 10"));
    assert!(
        e.contains("fault[0].at_progress") && e.contains("exactly one"),
        "{e}"
    );
    let e = error_of(&MINIMAL.replace("at_progress = 0.5", ""));
    assert!(e.contains("fault[0].at_progress"), "{e}");
    let e = error_of(&MINIMAL.replace("at_progress = 0.5", "at_progress = 1.0"));
    assert!(e.contains("[0, 1)"), "{e}");
    let e = error_of(&MINIMAL.replace("at_progress = 0.5", "at_exit = true"));
    assert!(e.contains("fault[0].at_exit"), "{e}");
}

#[test]
fn a_legacy_write_needs_keys_and_a_value() {
    let text = MINIMAL
        .replace(
            "kind = \"sigkill\"\nat_progress = 0.5",
            "kind = \"legacy-write\"\nat_exit = true\nkeys = [\"okx:positions:u\"]\nvalue = \"[]\"",
        )
        .replace("exit = \"killed\"", "exit = 0");
    let s = parse(&text).unwrap();
    assert_eq!(s.faults[0].timing(), Timing::AtExit);
    let e = error_of(&text.replace("value = \"[]\"", ""));
    assert!(e.contains("fault[0].value"), "{e}");
    let e = error_of(&text.replace("keys = [\"okx:positions:u\"]", ""));
    assert!(e.contains("fault[0].keys"), "{e}");
}

#[test]
fn a_fault_must_strike_an_existing_run() {
    let e = error_of(&MINIMAL.replace("at_progress = 0.5", "at_progress = 0.5\ninvocation = 3"));
    assert!(e.contains("fault[0].invocation"), "{e}");
}

#[test]
fn killed_is_the_exit_of_exactly_the_sigkilled_runs() {
    let e = error_of(&MINIMAL.replace("exit = \"killed\"", "exit = 4"));
    assert!(e.contains("run[0].exit") && e.contains("killed"), "{e}");
    let e = error_of(&MINIMAL.replace("exit = 0", "exit = \"killed\""));
    assert!(e.contains("run[1].exit"), "{e}");
    let any = MINIMAL
        .replace("kind = \"sigkill\"", "kind = \"drop-connections\"")
        .replace("exit = \"killed\"", "exit = [4, 5]");
    let s = parse(&any).unwrap();
    assert!(s.runs[0].exit.accepts(Some(5)) && !s.runs[0].exit.accepts(Some(0)));
}

#[test]
fn a_crash_restart_without_aof_is_refused() {
    let text = MINIMAL
        .replace("kind = \"sigkill\"", "kind = \"crash-restart\"")
        .replace("exit = \"killed\"", "exit = 4");
    let e = error_of(&text);
    assert!(
        e.contains("fault[0].kind") && e.contains("server.aof"),
        "{e}"
    );
    let ok = text.replace("[dataset]", "[server]\naof = true\n[dataset]");
    assert!(parse(&ok).is_ok());
}

#[test]
fn pause_needs_a_duration_and_sigkill_refuses_one() {
    let pause = MINIMAL
        .replace("kind = \"sigkill\"", "kind = \"pause\"")
        .replace("exit = \"killed\"", "exit = 0");
    let e = error_of(&pause);
    assert!(e.contains("fault[0].duration_ms"), "{e}");
    let e = error_of(&MINIMAL.replace("at_progress = 0.5", "at_progress = 0.5\nduration_ms = 5"));
    assert!(e.contains("only pause and network-cut"), "{e}");
}

#[test]
fn an_unknown_fault_kind_lists_the_known_ones() {
    let e = error_of(&MINIMAL.replace("kind = \"sigkill\"", "kind = \"meteor\""));
    assert!(e.contains("meteor") && e.contains("sigkill"), "{e}");
}

#[test]
fn a_generator_typo_is_refused_not_defaulted() {
    let e = error_of(&MINIMAL.replace("users = 50", "users = 50, malformd_rate = 0.0"));
    assert!(e.contains("dataset.generator.malformd_rate"), "{e}");
    let e = error_of(&MINIMAL.replace("seed = 3, ", ""));
    assert!(e.contains("dataset.generator.seed"), "{e}");
}

#[test]
fn unknown_invariants_and_contradictions_are_refused() {
    let e = error_of(&format!("{MINIMAL}[expect]\nhold = [\"countz\"]\n"));
    assert!(e.contains("countz") && e.contains("expect.hold"), "{e}");
    let e = error_of(&format!(
        "{MINIMAL}[expect]\nhold = [\"index\"]\nfail = [\"index\"]\n"
    ));
    assert!(e.contains("both hold and fail"), "{e}");
}

#[test]
fn exit_codes_and_args_are_checked() {
    let e = error_of(&MINIMAL.replace("exit = 0", "exit = 9"));
    assert!(e.contains("run[1].exit"), "{e}");
    let e = error_of(&MINIMAL.replace("exit = 0", "exit = 0\nargs = [\"--force\"]"));
    assert!(e.contains("run[1].args") && e.contains("--force"), "{e}");
    let ok = MINIMAL.replace(
        "exit = 0",
        "exit = 0\nargs = [\"--exchange\", \"okx\", \"--skip-closed\"]",
    );
    assert!(parse(&ok).is_ok());
}

#[test]
fn names_are_directory_safe() {
    let e = error_of(&MINIMAL.replace("sigkill-at-half", "Sigkill at half"));
    assert!(e.contains("field `name`"), "{e}");
}

#[test]
fn an_empty_dataset_is_refused() {
    let e = error_of(&MINIMAL.replace("generator = { seed = 3, users = 50 }", ""));
    assert!(e.contains("field `dataset`"), "{e}");
}

#[test]
fn findings_and_messages_parse() {
    let text = format!(
        "{MINIMAL}[[expect.finding]]\nkind = \"quarantined\"\nkey = \"okx:positions:b\"\nreason = \"not_json\"\n[[expect.message]]\ninvocation = 1\ncontains = \"maxmemory\"\n"
    );
    let s = parse(&text).unwrap();
    assert_eq!(s.expect.findings[0].kind, FindingKind::Quarantined);
    assert_eq!(s.expect.messages[0].contains, "maxmemory");
    let e = error_of(&text.replace("invocation = 1\ncontains", "invocation = 7\ncontains"));
    assert!(e.contains("expect.message[0]"), "{e}");
}

#[test]
fn a_directory_with_two_scenarios_of_one_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.toml"), MINIMAL).unwrap();
    std::fs::write(dir.path().join("b.toml"), MINIMAL).unwrap();
    std::fs::write(dir.path().join("notes.md"), "not a scenario").unwrap();
    let e = load_dir(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("sigkill-at-half") && e.contains("a.toml") && e.contains("b.toml"),
        "{e}"
    );
    std::fs::remove_file(dir.path().join("b.toml")).unwrap();
    assert_eq!(load_dir(dir.path()).unwrap().len(), 1);
}

#[test]
fn a_cluster_scenario_takes_only_faults_that_strike_the_migrator_or_keys() {
    let cluster = MINIMAL.replace("[[fault]]", "[server]\ncluster = true\n[[fault]]");
    let s = parse(&cluster).unwrap();
    assert!(s.server.cluster && !s.server.aof);
    assert!(!parse(MINIMAL).unwrap().server.cluster);
    let paused = cluster
        .replace(
            "kind = \"sigkill\"\nat_progress = 0.5",
            "kind = \"pause\"\nat_progress = 0.5\nduration_ms = 100",
        )
        .replace("exit = \"killed\"", "exit = 0");
    let e = error_of(&paused);
    assert!(
        e.contains("field `fault[0].kind`") && e.contains("cluster"),
        "{e}"
    );
    // The same pause on one server is fine.
    let single = paused.replace("cluster = true", "cluster = false");
    if let Err(e) = parse(&single) {
        panic!("{e}");
    }
}
