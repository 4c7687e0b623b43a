//! The application's data layer for grid positions (DESIGN §3), modelled so
//! the harness can prove callers see the same answers before and after a
//! migration. One trait, one implementation per structure.
//!
//! A [`Position`] is what a caller sees: every field as the hash holds it
//! (strings verbatim, other JSON as compact text), metadata aside.

mod hash_store;
mod legacy_store;

pub use hash_store::HashStore;
pub use legacy_store::LegacyStore;

use std::collections::BTreeMap;

use crate::error::Result;
use crate::plan::{parse_number, Side};

/// One position: its side and fields (metadata excluded).
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
}

/// Orders positions as every store returns them: by (instId, side).
fn sorted(mut positions: Vec<Position>) -> Vec<Position> {
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
    matching.iter().map(|p| p.signed_size()).sum()
}

/// The read and write operations of DESIGN §3 for grid positions.
#[allow(async_fn_in_trait)]
pub trait PositionStore {
    /// Every position of a user on an exchange, sorted by (instId, side).
    async fn all_positions(&self, user_id: &str, exchange: &str) -> Result<Vec<Position>>;
    /// One position, if present.
    async fn get_position(
        &self,
        user_id: &str,
        exchange: &str,
        inst_id: &str,
        side: Side,
    ) -> Result<Option<Position>>;
    /// Signed net size of a symbol.
    async fn position_size(&self, user_id: &str, exchange: &str, inst_id: &str) -> Result<f64> {
        Ok(net_size(
            &self.all_positions(user_id, exchange).await?,
            inst_id,
        ))
    }
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
        assert_eq!(net_size(&ps, "C"), 0.0);
    }
}
