//! The pure part of the Phase 2 mutants at the store seam: each turns one
//! user's correctly planned write into the write the buggy engine would
//! have planned.

use keyshift_engine::grid_positions::store::{PositionWrite, UserWrite};

/// The fields a "dashboard" engine copies; everything else is lost.
pub const FIXED_FIELDS: [&str; 8] = [
    "instId", "instType", "posSide", "pos", "avgPx", "upl", "lever", "mgnMode",
];

fn pos(p: &PositionWrite) -> Option<f64> {
    p.fields
        .iter()
        .find(|(f, _)| f == "pos")
        .and_then(|(_, v)| v.parse::<f64>().ok())
}

/// Files each position under `short` when `pos` < 0, else `long`,
/// whatever its `posSide` says.
pub fn sign_only_side(u: &UserWrite) -> UserWrite {
    let mut out = u.clone();
    for p in &mut out.positions {
        let Some((inst_id, _)) = p.member.rsplit_once(':') else {
            continue;
        };
        let side = if pos(p).is_some_and(|v| v < 0.0) {
            "short"
        } else {
            "long"
        };
        let member = format!("{inst_id}:{side}");
        let prefix = p.key.strip_suffix(p.member.as_str()).unwrap_or_default();
        p.key = format!("{prefix}{member}");
        p.member = member;
    }
    out
}

/// Keeps only [`FIXED_FIELDS`].
pub fn fixed_field_list(u: &UserWrite) -> UserWrite {
    let mut out = u.clone();
    for p in &mut out.positions {
        p.fields.retain(|(f, _)| FIXED_FIELDS.contains(&f.as_str()));
    }
    out
}

/// Drops closed positions (`pos` 0) without counting them as skipped.
pub fn closed_skipped_silently(u: &UserWrite) -> UserWrite {
    let mut out = u.clone();
    out.positions.retain(|p| pos(p) != Some(0.0));
    out
}

/// An object-shaped legacy value migrates no position (the engine only
/// iterates arrays), but is still backed up and deleted.
pub fn object_values_skipped(u: &UserWrite) -> UserWrite {
    let mut out = u.clone();
    if u.expected.trim_ascii_start().first() == Some(&b'{') {
        out.positions.clear();
        out.skipped_closed = 0;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(inst: &str, side: &str, pos: &str) -> PositionWrite {
        PositionWrite {
            key: format!("positions:7:okx:{inst}:{side}"),
            member: format!("{inst}:{side}"),
            fields: vec![
                ("instId".into(), inst.into()),
                ("posSide".into(), side.into()),
                ("pos".into(), pos.into()),
                ("liqPx".into(), "84445.6".into()),
            ],
        }
    }

    fn user(value: &str, positions: Vec<PositionWrite>) -> UserWrite {
        UserWrite {
            legacy_key: "okx:positions:7".into(),
            expected: value.as_bytes().to_vec(),
            backup_key: "okx:positions:7:backup:20260101_000000".into(),
            index_key: "positions:index:7:okx".into(),
            positions,
            skipped_closed: 0,
        }
    }

    #[test]
    fn sign_only_side_files_a_positive_short_as_long() {
        let u = user("[]", vec![position("BTC-USDT-SWAP", "short", "2")]);
        let m = sign_only_side(&u);
        assert_eq!(m.positions[0].member, "BTC-USDT-SWAP:long");
        assert_eq!(m.positions[0].key, "positions:7:okx:BTC-USDT-SWAP:long");
    }

    #[test]
    fn fixed_field_list_drops_other_fields() {
        let m = fixed_field_list(&user("[]", vec![position("ETH-USDT", "long", "1")]));
        assert!(m.positions[0].fields.iter().all(|(f, _)| f != "liqPx"));
        assert_eq!(m.positions[0].fields.len(), 3);
    }

    #[test]
    fn closed_positions_vanish_uncounted() {
        let u = user(
            "[]",
            vec![
                position("A-USDT", "long", "0"),
                position("B-USDT", "long", "3"),
            ],
        );
        let m = closed_skipped_silently(&u);
        assert_eq!(m.positions.len(), 1);
        assert_eq!(m.skipped_closed, 0);
    }

    #[test]
    fn only_object_shaped_values_lose_their_positions() {
        let p = || vec![position("A-USDT", "long", "1")];
        assert!(object_values_skipped(&user(r#" {"A-USDT":{}}"#, p()))
            .positions
            .is_empty());
        assert_eq!(object_values_skipped(&user("[{}]", p())).positions.len(), 1);
    }
}
