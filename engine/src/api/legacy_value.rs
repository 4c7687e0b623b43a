//! Pure edits of one legacy value `{exchange}:positions:{user_id}`: what an
//! upsert or remove turns it into. The planner reads the value (sides,
//! validity), so an edit files a position exactly where a read and the
//! migration find it.
//!
//! An edit keeps the value's shape (array, or object keyed by instId) and
//! every other position's JSON text byte for byte, unknown fields included;
//! only the separators between positions are rewritten compactly. A value
//! the planner would quarantine is never rewritten.

use std::collections::HashMap;

use serde_json::value::RawValue;

use super::error::{ApiError, ApiResult};
use super::position::{net_size, Position, PositionObject, SIZE_FIELDS};
use crate::grid_positions::plan::{
    plan_value, PlanOptions, PlannedPosition, Side, UserPlan, ValueShape,
};

/// What to do to one position of a legacy value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Edit<'a> {
    /// Replace the position at the object's (instId, side), or add it.
    Upsert(&'a PositionObject),
    Remove {
        inst_id: &'a str,
        side: Side,
    },
}

/// The positions of a legacy value as the planner files them; a value the
/// migration would quarantine holds none, as the deployed code treats it.
fn planned(value: Option<&[u8]>) -> Vec<PlannedPosition> {
    match value.map(|v| plan_value(v, PlanOptions::default())) {
        Some(UserPlan::Migrate(plan)) => plan.positions,
        Some(UserPlan::Quarantine { .. }) | None => Vec::new(),
    }
}

/// Every position a legacy value holds, sorted by (instId, side).
pub(crate) fn read_positions(value: Option<&[u8]>) -> Vec<Position> {
    super::position::sorted(planned(value).into_iter().map(Position::from).collect())
}

/// The position at (instId, side), if the value holds it.
pub(crate) fn read_position(value: Option<&[u8]>, inst_id: &str, side: Side) -> Option<Position> {
    planned(value)
        .into_iter()
        .find(|p| p.inst_id == inst_id && p.side == side)
        .map(Position::from)
}

/// The signed net size of a symbol, from the size fields alone.
pub(crate) fn read_size(value: Option<&[u8]>, inst_id: &str) -> f64 {
    let sized: Vec<Position> = planned(value)
        .into_iter()
        .filter(|p| p.inst_id == inst_id)
        .map(|p| Position {
            fields: p
                .fields
                .into_iter()
                .filter(|(name, _)| SIZE_FIELDS.contains(&name.as_str()))
                .collect(),
            inst_id: p.inst_id,
            side: p.side,
        })
        .collect();
    net_size(&sized, inst_id)
}

/// The value after `edit`, or `None` when the edit changes nothing (remove
/// of an absent position). An absent key upserted becomes a JSON array; a
/// value whose last position is removed stays, as `[]` or `{}`.
pub(crate) fn edit_value(
    key: &str,
    current: Option<&[u8]>,
    edit: Edit<'_>,
) -> ApiResult<Option<Vec<u8>>> {
    let Some(current) = current else {
        return Ok(match edit {
            Edit::Upsert(p) => Some(format!("[{}]", p.json()).into_bytes()),
            Edit::Remove { .. } => None,
        });
    };
    let unreadable = |reason: String| ApiError::UnreadableLegacy {
        key: key.to_owned(),
        reason,
    };
    let plan = match plan_value(current, PlanOptions::default()) {
        UserPlan::Migrate(plan) => plan,
        UserPlan::Quarantine { reason, .. } => return Err(unreadable(reason.to_string())),
    };
    // The planner accepted the value, so it is UTF-8 JSON of this shape.
    let text = std::str::from_utf8(current).map_err(|e| unreadable(e.to_string()))?;
    let mut entries: Vec<(Option<String>, String)> = match plan.shape {
        ValueShape::Array => serde_json::from_str::<Vec<&RawValue>>(text)
            .map_err(|e| unreadable(e.to_string()))?
            .into_iter()
            .map(|raw| (None, raw.get().to_owned()))
            .collect(),
        ValueShape::ObjectByInstId => {
            // Members are keyed by their instId (planner-checked), so the
            // planner's order is the object's order.
            let mut members: HashMap<String, &RawValue> =
                serde_json::from_str(text).map_err(|e| unreadable(e.to_string()))?;
            plan.positions
                .iter()
                .map(|p| {
                    let raw = members
                        .remove(&p.inst_id)
                        .expect("planned from this object");
                    (Some(p.inst_id.clone()), raw.get().to_owned())
                })
                .collect()
        }
    };
    let ids: Vec<(&str, Side)> = plan
        .positions
        .iter()
        .map(|p| (p.inst_id.as_str(), p.side))
        .collect();
    match edit {
        Edit::Upsert(p) => {
            let found = ids
                .iter()
                .position(|&(i, s)| i == p.inst_id() && s == p.side());
            let entry = (
                (plan.shape == ValueShape::ObjectByInstId).then(|| p.inst_id().to_owned()),
                p.json().to_owned(),
            );
            match found {
                Some(at) => entries[at] = entry,
                None => {
                    if let (ValueShape::ObjectByInstId, Some(&(_, held))) =
                        (plan.shape, ids.iter().find(|&&(i, _)| i == p.inst_id()))
                    {
                        return Err(ApiError::ObjectShapeHoldsOneSide {
                            key: key.to_owned(),
                            inst_id: p.inst_id().to_owned(),
                            held: held.as_str(),
                            wanted: p.side().as_str(),
                        });
                    }
                    entries.push(entry);
                }
            }
        }
        Edit::Remove { inst_id, side } => {
            let Some(at) = ids.iter().position(|&(i, s)| i == inst_id && s == side) else {
                return Ok(None);
            };
            entries.remove(at);
        }
    }
    Ok(Some(render(plan.shape, &entries).into_bytes()))
}

fn render(shape: ValueShape, entries: &[(Option<String>, String)]) -> String {
    let parts: Vec<String> = entries
        .iter()
        .map(|(key, raw)| match key {
            Some(k) => format!("{}:{raw}", serde_json::Value::from(k.as_str())),
            None => raw.clone(),
        })
        .collect();
    match shape {
        ValueShape::Array => format!("[{}]", parts.join(",")),
        ValueShape::ObjectByInstId => format!("{{{}}}", parts.join(",")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(json: &str) -> PositionObject {
        PositionObject::parse(json).unwrap()
    }

    fn upsert(current: Option<&str>, json: &str) -> ApiResult<Option<String>> {
        let p = obj(json);
        edit_value(
            "okx:positions:u1",
            current.map(str::as_bytes),
            Edit::Upsert(&p),
        )
        .map(|v| v.map(|b| String::from_utf8(b).unwrap()))
    }

    fn remove(current: &str, inst_id: &str, side: Side) -> Option<String> {
        edit_value(
            "okx:positions:u1",
            Some(current.as_bytes()),
            Edit::Remove { inst_id, side },
        )
        .unwrap()
        .map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn upsert_into_absent_key_makes_an_array() {
        assert_eq!(
            upsert(None, r#"{"instId":"A","pos":"1"}"#)
                .unwrap()
                .unwrap(),
            r#"[{"instId":"A","pos":"1"}]"#
        );
    }

    #[test]
    fn upsert_replaces_in_place_and_keeps_other_positions_byte_for_byte() {
        let current = r#"[ {"instId":"A", "pos":"1", "odd": {"z":1,"a":[1.50]}} , {"instId":"B","pos":"2"} ]"#;
        assert_eq!(
            upsert(Some(current), r#"{"instId":"B","pos":"3","new":true}"#)
                .unwrap()
                .unwrap(),
            r#"[{"instId":"A", "pos":"1", "odd": {"z":1,"a":[1.50]}},{"instId":"B","pos":"3","new":true}]"#
        );
    }

    #[test]
    fn upsert_of_the_other_side_appends_to_an_array() {
        let current = r#"[{"instId":"A","posSide":"long","pos":"1"}]"#;
        assert_eq!(
            upsert(
                Some(current),
                r#"{"instId":"A","posSide":"short","pos":"1"}"#
            )
            .unwrap()
            .unwrap(),
            r#"[{"instId":"A","posSide":"long","pos":"1"},{"instId":"A","posSide":"short","pos":"1"}]"#
        );
    }

    #[test]
    fn object_shape_is_kept_and_keyed_by_inst_id() {
        let current = r#"{"A":{"instId":"A","pos":"1"},"B":{"instId":"B","pos":"-2"}}"#;
        assert_eq!(
            upsert(Some(current), r#"{"instId":"B","pos":"-5"}"#)
                .unwrap()
                .unwrap(),
            r#"{"A":{"instId":"A","pos":"1"},"B":{"instId":"B","pos":"-5"}}"#
        );
        assert_eq!(
            upsert(Some(current), r#"{"instId":"C","pos":"1"}"#)
                .unwrap()
                .unwrap(),
            r#"{"A":{"instId":"A","pos":"1"},"B":{"instId":"B","pos":"-2"},"C":{"instId":"C","pos":"1"}}"#
        );
        assert_eq!(
            remove(current, "A", Side::Long).unwrap(),
            r#"{"B":{"instId":"B","pos":"-2"}}"#
        );
    }

    #[test]
    fn object_shape_refuses_both_sides_of_one_inst_id() {
        let current = r#"{"A":{"instId":"A","pos":"1"}}"#;
        assert!(matches!(
            upsert(Some(current), r#"{"instId":"A","pos":"-1"}"#),
            Err(ApiError::ObjectShapeHoldsOneSide {
                held: "long",
                wanted: "short",
                ..
            })
        ));
    }

    #[test]
    fn remove_of_the_last_position_keeps_the_shape() {
        assert_eq!(
            remove(r#"[{"instId":"A","pos":"1"}]"#, "A", Side::Long).unwrap(),
            "[]"
        );
        assert_eq!(
            remove(r#"{"A":{"instId":"A","pos":"1"}}"#, "A", Side::Long).unwrap(),
            "{}"
        );
    }

    #[test]
    fn remove_of_an_absent_position_changes_nothing() {
        assert_eq!(
            remove(r#"[{"instId":"A","pos":"1"}]"#, "A", Side::Short),
            None
        );
        assert_eq!(remove("[]", "A", Side::Long), None);
    }

    #[test]
    fn unreadable_values_are_never_rewritten() {
        for bad in [
            "42",
            "not json",
            r#"[{"pos":"1"}]"#,
            r#"[{"instId":"A"},{"instId":"A"}]"#,
        ] {
            assert!(
                matches!(
                    upsert(Some(bad), r#"{"instId":"A"}"#),
                    Err(ApiError::UnreadableLegacy { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn reads_agree_with_every_position() {
        let v = br#"[{"instId":"A","posSide":"long","pos":"3","x":1},{"instId":"A","posSide":"short","pos":"5"}]"#;
        let all = read_positions(Some(v));
        assert_eq!(
            read_position(Some(v), "A", Side::Short).as_ref(),
            Some(&all[1])
        );
        assert_eq!(read_position(Some(v), "B", Side::Long), None);
        assert_eq!(read_size(Some(v), "A"), net_size(&all, "A"));
        assert_eq!(read_size(Some(v), "A"), -2.0);
        assert_eq!(read_size(Some(b"not json"), "A").to_bits(), 0f64.to_bits());
    }

    #[test]
    fn read_then_edit_round_trips() {
        let p = obj(r#"{"instId":"A","posSide":"short","pos":"2","lever":10}"#);
        let v = edit_value("k", Some(b"[]"), Edit::Upsert(&p))
            .unwrap()
            .unwrap();
        assert_eq!(read_positions(Some(&v)), vec![p.position().clone()]);
    }
}
