//! Two implementations of DESIGN §2 checking each other: the engine's
//! planner (`plan_value`) and the oracle's rule (`keyshift_oracle::legacy::
//! expect`), written apart, must agree on every legacy value: the same
//! hashes with the same fields and sides, or both leaving it in place.
//! Where keyshift quarantines more than DESIGN lists, the oracle answers
//! "ambiguous" and either engine answer is accepted. A disagreement
//! prints the value.

use keyshift_engine::grid_positions::plan::{plan_value, PlanOptions, QuarantineReason, UserPlan};
use keyshift_harness::seed::{generate, load_fixture_dir, GenConfig, KeyValue};
use keyshift_oracle::legacy::{expect, Expectation};
use proptest::prelude::*;

/// Quarantine reasons DESIGN §2 lists itself; the others are keyshift's
/// own caution, which the oracle calls ambiguous.
fn design_lists(reason: &QuarantineReason) -> bool {
    matches!(
        reason,
        QuarantineReason::NotAString { .. }
            | QuarantineReason::NotJson { .. }
            | QuarantineReason::NotArrayOrObject { .. }
            | QuarantineReason::PositionNotObject { .. }
            | QuarantineReason::MissingInstId { .. }
            | QuarantineReason::Collision { .. }
    )
}

/// One position as both sides plan it: instId, side, fields.
type Planned = (String, String, Vec<(String, String)>);

fn agree(value: &[u8], skip_closed: bool) -> Result<(), String> {
    let engine = plan_value(value, PlanOptions { skip_closed });
    let oracle = expect(value, skip_closed);
    let shown = String::from_utf8_lossy(value);
    match (&engine, &oracle) {
        (
            UserPlan::Migrate(plan),
            Expectation::Migrate {
                positions,
                skipped_closed,
            },
        ) => {
            let engine_side: Vec<Planned> = plan
                .positions
                .iter()
                .map(|p| {
                    (
                        p.inst_id.clone(),
                        p.side.as_str().to_owned(),
                        p.fields.clone(),
                    )
                })
                .collect();
            let oracle_side: Vec<Planned> = positions
                .iter()
                .map(|p| (p.inst_id.clone(), p.side.to_owned(), p.fields.clone()))
                .collect();
            if engine_side != oracle_side || plan.skipped_closed != *skipped_closed {
                return Err(format!(
                    "value {shown}\n engine: {engine_side:?} skipped {}\n oracle: {oracle_side:?} skipped {skipped_closed}",
                    plan.skipped_closed
                ));
            }
            Ok(())
        }
        // Both leave the key in place (the first reason each finds may
        // differ: a value can be wrong in several ways).
        (UserPlan::Quarantine { .. }, Expectation::Quarantine { .. }) => Ok(()),
        // keyshift's own caution on a value DESIGN does not decide.
        (UserPlan::Quarantine { .. }, Expectation::Ambiguous { .. }) => Ok(()),
        // DESIGN does not decide: migrating is as acceptable as leaving it.
        (UserPlan::Migrate(_), Expectation::Ambiguous { .. }) => Ok(()),
        (engine, oracle) => Err(format!(
            "value {shown}\n engine: {engine:?}{}\n oracle: {oracle:?}",
            match engine {
                UserPlan::Quarantine { reason, .. } if !design_lists(reason) =>
                    " (a reason beyond DESIGN's list)",
                _ => "",
            }
        )),
    }
}

#[test]
fn planner_and_oracle_agree_on_every_generated_and_fixture_value() {
    let mut values: Vec<Vec<u8>> = Vec::new();
    let generated = generate(&GenConfig {
        users: 3000,
        seed: 11,
        ..GenConfig::default()
    });
    let fixtures =
        load_fixture_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures"))
            .expect("fixtures load");
    for entry in generated.keyspace.entries.iter().chain(&fixtures.entries) {
        if entry.key.contains(":positions:") && !entry.key.contains(":backup:") {
            if let KeyValue::String(v) = &entry.value {
                values.push(v.clone());
            }
        }
    }
    assert!(values.len() > 1000, "only {} values", values.len());
    let failures: Vec<String> = values
        .iter()
        .flat_map(|v| [agree(v, false), agree(v, true)])
        .filter_map(Result::err)
        .collect();
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures[..failures.len().min(5)].join("\n")
    );
}

/// A JSON scalar as a position field might hold it, spelled many ways.
fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        (-1000i64..1000).prop_map(|n| n.to_string()),
        Just("3.50".to_owned()),
        Just("1e5".to_owned()),
        Just("-0".to_owned()),
        Just("-0.0".to_owned()),
        Just("12345678901234567890123".to_owned()),
        Just("0.1e-3".to_owned()),
        "[a-zA-Z0-9 _.-]{0,8}".prop_map(|s| format!("{s:?}")),
        Just(r#""\u00e9\n\"q\"""#.to_owned()),
        Just(r#""é😀""#.to_owned()),
        Just(r#"{ "b" : 1 , "a" : [ 2 , "x y" ] }"#.to_owned()),
        Just("[ ]".to_owned()),
    ]
}

fn pos_value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        (-50i64..50).prop_map(|n| Some(format!("\"{n}\""))),
        (-50i64..50).prop_map(|n| Some(n.to_string())),
        Just(Some("\"0\"".to_owned())),
        Just(Some("\"-0\"".to_owned())),
        Just(Some("0.0".to_owned())),
        Just(Some("\"-1.5\"".to_owned())),
        Just(Some("\"abc\"".to_owned())),
        Just(Some("null".to_owned())),
    ]
}

fn pos_side() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("\"long\"".to_owned())),
        Just(Some("\"SHORT\"".to_owned())),
        Just(Some("\"Long\"".to_owned())),
        Just(Some("\"net\"".to_owned())),
        Just(Some("\"\"".to_owned())),
        Just(Some("1".to_owned())),
    ]
}

/// One position object; `inst` None leaves instId out.
fn position() -> impl Strategy<Value = (Option<String>, String)> {
    (
        prop_oneof![
            4 => "[A-C]{1,2}".prop_map(Some),
            1 => Just(None),
            1 => Just(Some("A:B".to_owned())),
            1 => Just(Some(String::new())),
        ],
        pos_side(),
        pos_value(),
        prop::collection::vec(("[a-e]{1,3}", scalar()), 0..4),
        any::<bool>(),
    )
        .prop_map(|(inst, side, pos, extra, spaced)| {
            let sep = if spaced { " , " } else { "," };
            let mut members: Vec<String> = Vec::new();
            if let Some(i) = &inst {
                members.push(format!("\"instId\":\"{i}\""));
            }
            if let Some(s) = side {
                members.push(format!("\"posSide\":{s}"));
            }
            if let Some(p) = pos {
                members.push(format!("\"pos\":{p}"));
            }
            for (k, v) in extra {
                members.push(format!("\"x{k}\":{v}"));
            }
            (inst, format!("{{{}}}", members.join(sep)))
        })
}

fn legacy_value() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(position(), 0..5)
            .prop_map(|ps| format!("[{}]", ps.into_iter().map(|(_, p)| p).collect::<Vec<_>>().join(","))),
        3 => prop::collection::vec(position(), 0..4).prop_map(|ps| {
            let members: Vec<String> = ps
                .into_iter()
                .map(|(inst, p)| format!("\"{}\":{p}", inst.unwrap_or_else(|| "Z".into())))
                .collect();
            format!("{{{}}}", members.join(","))
        }),
        1 => scalar(),
        1 => Just("[1, {\"instId\":\"A\"}]".to_owned()),
        1 => Just("not json".to_owned()),
        1 => Just("[{\"instId\":\"A\"},]".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn planner_and_oracle_agree_on_any_generated_value(v in legacy_value(), skip in any::<bool>()) {
        if let Err(disagreement) = agree(v.as_bytes(), skip) {
            prop_assert!(false, "{}", disagreement);
        }
    }
}
