//! What a caller of the position stores sees and writes. Pure: the Phase 2
//! planner decides sides and field text, so the application's view and the
//! migration can never disagree.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::error::{ApiError, ApiResult};
use crate::grid_positions::plan::{
    compact_json, parse_number, plan_value, PlanOptions, PlannedPosition, Side, UserPlan,
};

/// One position: its side and fields (metadata excluded), every field as the
/// hash holds it (strings verbatim, other JSON as compact text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub inst_id: String,
    pub side: Side,
    pub fields: BTreeMap<String, String>,
}

impl Position {
    /// Signed contribution to a symbol's size (DESIGN §3): long +|pos|,
    /// short -|pos|, net as stored.
    pub fn signed_size(&self) -> f64 {
        let pos = self
            .fields
            .get("pos")
            .and_then(|p| parse_number(p))
            .unwrap_or(0.0);
        match self
            .fields
            .get("posSide")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            Some("long") => pos.abs(),
            Some("short") => -pos.abs(),
            _ => pos,
        }
    }

    /// `{instId}:{side}`: the index member and last two key segments.
    pub fn index_member(&self) -> String {
        format!("{}:{}", self.inst_id, self.side.as_str())
    }
}

impl From<PlannedPosition> for Position {
    fn from(p: PlannedPosition) -> Self {
        Position {
            inst_id: p.inst_id,
            side: p.side,
            fields: p.fields.into_iter().collect(),
        }
    }
}

/// A position to write: one JSON object as the exchange reports it. Its
/// instId and side are what the migration would file it under, and
/// [`PositionObject::position`] is exactly what every store reads back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionObject {
    json: String,
    position: Position,
    /// Field/value pairs in the object's order, for the hash.
    fields: Vec<(String, String)>,
}

impl PositionObject {
    /// Parses one position object. Rejected as the migration would
    /// quarantine it: no or a non-string instId, an instId holding `:`, a
    /// field named `migrated_at`/`migrated_from`, a duplicated field.
    pub fn parse(json: &str) -> ApiResult<Self> {
        let invalid = |reason: String| ApiError::InvalidPosition { reason };
        let raw: &RawValue = serde_json::from_str(json).map_err(|e| invalid(e.to_string()))?;
        if !raw.get().starts_with('{') {
            return Err(invalid("not a JSON object".into()));
        }
        let json = compact_json(raw.get());
        match plan_value(format!("[{json}]").as_bytes(), PlanOptions::default()) {
            UserPlan::Migrate(mut plan) if plan.positions.len() == 1 => {
                let planned = plan.positions.remove(0);
                let fields = planned.fields.clone();
                Ok(Self {
                    json,
                    position: planned.into(),
                    fields,
                })
            }
            UserPlan::Migrate(_) => Err(invalid("not one object".into())),
            UserPlan::Quarantine { reason, .. } => Err(invalid(reason.to_string())),
        }
    }

    /// The object as compact JSON text: what a legacy value holds.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// What a read of this position returns once written.
    pub fn position(&self) -> &Position {
        &self.position
    }

    pub fn inst_id(&self) -> &str {
        &self.position.inst_id
    }

    pub fn side(&self) -> Side {
        self.position.side
    }

    /// Hash field/value pairs, in the object's field order.
    pub fn hash_fields(&self) -> &[(String, String)] {
        &self.fields
    }
}

/// The fields [`Position::signed_size`] reads: all a size needs.
pub(crate) const SIZE_FIELDS: [&str; 2] = ["pos", "posSide"];

/// Orders positions as every store returns them: by (instId, side).
pub(crate) fn sorted(mut positions: Vec<Position>) -> Vec<Position> {
    positions.sort_by(|a, b| (&a.inst_id, a.side).cmp(&(&b.inst_id, b.side)));
    positions
}

/// Sum of signed sizes, in a fixed order so every store gives the same bits.
pub fn net_size<'a>(positions: impl IntoIterator<Item = &'a Position>, inst_id: &str) -> f64 {
    let mut matching: Vec<&Position> = positions
        .into_iter()
        .filter(|p| p.inst_id == inst_id)
        .collect();
    matching.sort_by_key(|p| p.side);
    // `+ 0.0` turns the -0.0 of an empty sum or a closed short into 0.
    matching.iter().map(|p| p.signed_size()).sum::<f64>() + 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(inst: &str, side: Side, pos_side: &str, pos: &str) -> Position {
        let fields = [("instId", inst), ("posSide", pos_side), ("pos", pos)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Position {
            inst_id: inst.into(),
            side,
            fields,
        }
    }

    #[test]
    fn size_is_signed_net() {
        let ps = [
            pos("A", Side::Long, "long", "3"),
            pos("A", Side::Short, "short", "5"),
            pos("B", Side::Short, "net", "-2"),
        ];
        assert_eq!(net_size(&ps, "A"), -2.0);
        assert_eq!(net_size(&ps, "B"), -2.0);
        assert_eq!(net_size(&ps, "C").to_bits(), 0.0f64.to_bits());
        let closed_short = [pos("D", Side::Short, "short", "0")];
        assert_eq!(net_size(&closed_short, "D").to_bits(), 0.0f64.to_bits());
    }

    #[test]
    fn object_is_filed_as_the_migration_files_it() {
        let p = PositionObject::parse(
            r#"{ "instId": "BTC-USDT-SWAP", "posSide": "net", "pos": "-2", "x": {"b": 1, "a": [ ]} }"#,
        )
        .unwrap();
        assert_eq!((p.inst_id(), p.side()), ("BTC-USDT-SWAP", Side::Short));
        assert_eq!(
            p.json(),
            r#"{"instId":"BTC-USDT-SWAP","posSide":"net","pos":"-2","x":{"b":1,"a":[]}}"#
        );
        assert_eq!(p.position().fields["x"], r#"{"b":1,"a":[]}"#);
        assert_eq!(p.position().index_member(), "BTC-USDT-SWAP:short");
        let names: Vec<&str> = p.hash_fields().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["instId", "posSide", "pos", "x"]);
    }

    #[test]
    fn object_rejected_where_the_migration_quarantines() {
        for bad in [
            r#"[{"instId":"A"}]"#,
            r#"{"pos":"1"}"#,
            r#"{"instId":"A:B"}"#,
            r#"{"instId":7}"#,
            r#"{"instId":"A","migrated_at":"x"}"#,
            r#"{"instId":"A","pos":"1","pos":"2"}"#,
            r#"{"instId":"A"} {"instId":"B"}"#,
            "not json",
        ] {
            assert!(
                matches!(
                    PositionObject::parse(bad),
                    Err(ApiError::InvalidPosition { .. })
                ),
                "{bad}"
            );
        }
    }
}
