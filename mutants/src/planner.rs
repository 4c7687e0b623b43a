//! Broken planners: bugs inside the plan itself, not after it. Each wraps
//! the shipped planner ([`plan_value`], [`plan_key`]) and edits its answer
//! the way the buggy plan would have come out, and the runner takes it in
//! the shipped planner's place. So the run's journal, its counts and its
//! dry run all agree with the bug: only a check that does not trust the
//! plan can catch it.

use std::collections::HashMap;

use keyshift_engine::grid_positions::plan::{
    parse_number, plan_value, side_of, MigratePlan, PlanOptions, PlannedPosition, UserPlan,
    ValueShape,
};
use keyshift_engine::order_placed::plan::{plan_key, ConflictReason, KeyPlan, KeyRead};
use serde_json::Value;

fn pos(p: &PlannedPosition) -> Option<f64> {
    let (_, text) = p.fields.iter().find(|(f, _)| f == "pos")?;
    parse_number(text)
}

/// The shipped plan with `edit` applied when it migrates the value.
fn edited(value: &[u8], opts: PlanOptions, edit: impl FnOnce(&mut MigratePlan)) -> UserPlan {
    let mut plan = plan_value(value, opts);
    if let UserPlan::Migrate(p) = &mut plan {
        edit(p);
    }
    plan
}

/// Files each position by the sign of `pos` alone, `posSide` unread: a
/// long/short-mode short (positive `pos`) becomes a long.
pub fn sign_only_side(value: &[u8], opts: PlanOptions) -> UserPlan {
    edited(value, opts, |plan| {
        for p in &mut plan.positions {
            p.side = side_of(None, pos(p));
        }
    })
}

/// Leaves closed positions (`pos` 0) out without `--skip-closed`, and
/// without counting them as skipped.
pub fn closed_skipped_uncounted(value: &[u8], opts: PlanOptions) -> UserPlan {
    edited(value, opts, |plan| {
        plan.positions.retain(|p| pos(p) != Some(0.0));
    })
}

/// Parses numbers into f64 and prints them back: `3.50` becomes `3.5`,
/// `1e5` `100000`, `1.0` `1`, and an integer beyond 2^53 loses digits.
pub fn numbers_through_f64(value: &[u8], opts: PlanOptions) -> UserPlan {
    let numeric = number_fields(value);
    edited(value, opts, |plan| {
        for p in &mut plan.positions {
            let Some(names) = numeric.get(&p.index_member()) else {
                continue;
            };
            for (_, text) in p.fields.iter_mut().filter(|(n, _)| names.contains(n)) {
                if let Ok(n) = text.parse::<f64>() {
                    *text = n.to_string();
                }
            }
        }
    })
}

/// The fields holding a JSON number, per position (`{instId}:{side}`, as
/// the planner files it): a string field stays verbatim even when it
/// looks like a number.
fn number_fields(value: &[u8]) -> HashMap<String, Vec<String>> {
    let positions: Vec<serde_json::Map<String, Value>> = match serde_json::from_slice(value) {
        Ok(Value::Array(items)) => items,
        Ok(Value::Object(by_id)) => by_id.into_iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    }
    .into_iter()
    .filter_map(|v| match v {
        Value::Object(o) => Some(o),
        _ => None,
    })
    .collect();
    let mut out = HashMap::new();
    for o in positions {
        let Some(inst_id) = o.get("instId").and_then(Value::as_str) else {
            continue;
        };
        let pos = match o.get("pos") {
            Some(Value::String(s)) => parse_number(s),
            Some(n @ Value::Number(_)) => parse_number(&n.to_string()),
            _ => None,
        };
        let side = side_of(o.get("posSide").and_then(Value::as_str), pos);
        let names = o.iter().filter(|(_, v)| v.is_number());
        out.insert(
            format!("{inst_id}:{}", side.as_str()),
            names.map(|(k, _)| k.clone()).collect(),
        );
    }
    out
}

/// Reads only arrays: an object keyed by instId holds no position, so the
/// user is backed up and its legacy key deleted with no hash written.
pub fn objects_not_understood(value: &[u8], opts: PlanOptions) -> UserPlan {
    edited(value, opts, |plan| {
        if plan.shape == ValueShape::ObjectByInstId {
            plan.positions.clear();
            plan.skipped_closed = 0;
        }
    })
}

/// Phase 1 deciding "the target is equal" by a digest of the field names
/// only: a target with the same levels and other flags counts as equal,
/// so the legacy key is planned to be dropped.
pub fn equal_ignoring_values(legacy: &KeyRead, target: &KeyRead) -> KeyPlan {
    match plan_key(legacy, target) {
        KeyPlan::Conflict(ConflictReason::Differs(d))
            if d.only_legacy.is_empty() && d.only_target.is_empty() =>
        {
            KeyPlan::DropEqual
        }
        plan => plan,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions(plan: UserPlan) -> Vec<PlannedPosition> {
        match plan {
            UserPlan::Migrate(p) => p.positions,
            other => panic!("expected a migration, got {other:?}"),
        }
    }

    fn field<'p>(p: &'p PlannedPosition, name: &str) -> &'p str {
        p.fields
            .iter()
            .find(|(f, _)| f == name)
            .map_or("", |(_, v)| v.as_str())
    }

    const HEDGED: &str = r#"[{"instId":"A","posSide":"short","pos":"2"},{"instId":"B","posSide":"net","pos":"-1"},{"instId":"C","pos":"0"}]"#;

    #[test]
    fn sign_only_side_files_a_positive_short_as_long() {
        let sides: Vec<String> =
            positions(sign_only_side(HEDGED.as_bytes(), PlanOptions::default()))
                .iter()
                .map(PlannedPosition::index_member)
                .collect();
        assert_eq!(sides, ["A:long", "B:short", "C:long"]);
    }

    #[test]
    fn closed_positions_vanish_uncounted() {
        let plan = closed_skipped_uncounted(HEDGED.as_bytes(), PlanOptions::default());
        let UserPlan::Migrate(p) = plan else { panic!() };
        assert_eq!(p.positions.len(), 2);
        assert_eq!(p.skipped_closed, 0);
    }

    #[test]
    fn numbers_are_reprinted_strings_kept() {
        let v = r#"{"X":{"instId":"X","pos":"3.50","a":3.50,"b":1e5,"c":1.0,"d":12345678901234567891,"f":"1e5"}}"#;
        let ps = positions(numbers_through_f64(v.as_bytes(), PlanOptions::default()));
        let got: Vec<&str> = ["pos", "a", "b", "c", "d", "f"]
            .iter()
            .map(|n| field(&ps[0], n))
            .collect();
        assert_eq!(
            got,
            ["3.50", "3.5", "100000", "1", "12345678901234567000", "1e5"]
        );
    }

    #[test]
    fn only_object_shaped_values_lose_their_positions() {
        let obj = r#" {"A":{"instId":"A","pos":"1"}}"#;
        assert!(positions(objects_not_understood(
            obj.as_bytes(),
            PlanOptions::default()
        ))
        .is_empty());
        let arr = r#"[{"instId":"A","pos":"1"}]"#;
        assert_eq!(
            positions(objects_not_understood(
                arr.as_bytes(),
                PlanOptions::default()
            ))
            .len(),
            1
        );
    }

    #[test]
    fn other_values_count_as_equal_other_fields_do_not() {
        let hash = |pairs: &[(&str, &str)]| {
            KeyRead::hash(
                pairs
                    .iter()
                    .map(|(f, v)| (f.as_bytes().to_vec(), v.as_bytes().to_vec()))
                    .collect(),
            )
        };
        let legacy = hash(&[("0", "1"), ("1", "0")]);
        let flipped = hash(&[("0", "0"), ("1", "1")]);
        let more = hash(&[("0", "1"), ("1", "0"), ("2", "1")]);
        assert_eq!(equal_ignoring_values(&legacy, &flipped), KeyPlan::DropEqual);
        assert!(matches!(plan_key(&legacy, &flipped), KeyPlan::Conflict(_)));
        assert!(matches!(
            equal_ignoring_values(&legacy, &more),
            KeyPlan::Conflict(_)
        ));
    }
}
