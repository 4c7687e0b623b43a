//! DESIGN §2, Phase 2, read afresh: what one legacy `{exchange}:positions:
//! {user_id}` value must become. Pure; the judge compares this with what
//! is in Redis.
//!
//! Three answers: migrate (these hashes), quarantine (DESIGN lists the
//! reason: the key must be left untouched), or ambiguous: DESIGN does not
//! decide, or keyshift quarantines more than DESIGN lists (README), so
//! either "left untouched" or "migrated with a byte-identical backup and
//! the legacy key gone" is accepted and the value is reported.

use crate::json::{self, number_sign, Kind, Node, Sign};

/// Fields the migration adds to every hash.
pub const MIGRATED_AT: &str = "migrated_at";
pub const MIGRATED_FROM: &str = "migrated_from";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedPosition {
    pub inst_id: String,
    /// `long` or `short`.
    pub side: &'static str,
    /// Every field of the legacy object, in order: strings decoded, other
    /// values as compact JSON text.
    pub fields: Vec<(String, String)>,
    /// `pos` is zero (a closed position).
    pub closed: bool,
    /// `{instId}:{side}`, made once: judging names it several times.
    member: String,
}

impl ExpectedPosition {
    /// `{instId}:{side}`: the index member and the hash key's tail.
    pub fn member(&self) -> &str {
        &self.member
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expectation {
    /// Hashes for `positions` (closed ones already left out under
    /// `--skip-closed`, counted in `skipped_closed`).
    Migrate {
        positions: Vec<ExpectedPosition>,
        skipped_closed: usize,
    },
    /// DESIGN §2 says: leave it untouched and report it.
    Quarantine { reason: String, positions: usize },
    /// DESIGN does not decide; either outcome is accepted.
    Ambiguous { reason: String, positions: usize },
}

/// What DESIGN §2 makes of one legacy string value.
pub fn expect(value: &[u8], skip_closed: bool) -> Expectation {
    let quarantine = |reason: String, positions| Expectation::Quarantine { reason, positions };
    let ambiguous = |reason: String, positions| Expectation::Ambiguous { reason, positions };
    let Ok(text) = std::str::from_utf8(value) else {
        return quarantine("not JSON: not UTF-8 text".into(), 0);
    };
    let root = match json::parse(text) {
        Ok(root) => root,
        Err(json::Error::TooDeep) => return ambiguous("nested too deep to judge".into(), 0),
        Err(e) => return quarantine(format!("not JSON: {e}"), 0),
    };
    let items: Vec<(Option<Option<String>>, Node)> = match root.kind {
        Kind::Array(items) => items.into_iter().map(|n| (None, n)).collect(),
        Kind::Object(members) => members.into_iter().map(|(k, n)| (Some(k), n)).collect(),
        _ => return quarantine("not an array or object of positions".into(), 0),
    };
    let count = items.len();
    let mut positions = Vec::with_capacity(count);
    let mut members = std::collections::HashSet::new();
    let mut object_keys = std::collections::HashSet::new();
    for (i, (object_key, node)) in items.into_iter().enumerate() {
        let p = match position(node) {
            Read::Position(p) => p,
            Read::Quarantine(why) => return quarantine(format!("position #{i}: {why}"), count),
            Read::Ambiguous(why) => return ambiguous(format!("position #{i}: {why}"), count),
        };
        if let Some(key) = object_key {
            match key {
                Some(k) if k == p.inst_id => {
                    if !object_keys.insert(k) {
                        return ambiguous(format!("instId {:?} keyed twice", p.inst_id), count);
                    }
                }
                _ => {
                    return ambiguous(
                        format!("object key differs from instId {:?}", p.inst_id),
                        count,
                    )
                }
            }
        }
        if !members.insert(p.member().to_owned()) {
            return quarantine(format!("two positions collide on {}", p.member()), count);
        }
        positions.push(p);
    }
    let before = positions.len();
    if skip_closed {
        positions.retain(|p| !p.closed);
    }
    Expectation::Migrate {
        skipped_closed: before - positions.len(),
        positions,
    }
}

enum Read {
    Position(ExpectedPosition),
    Quarantine(String),
    Ambiguous(String),
}

/// What JSON value a field held (its text is in the position's fields).
#[derive(Clone, Copy)]
enum Shape {
    Str,
    Number,
    Other,
}

fn position(node: Node) -> Read {
    let Kind::Object(members) = node.kind else {
        return Read::Quarantine("not a position object".into());
    };
    let mut fields: Vec<(String, String)> = Vec::with_capacity(members.len());
    // Where in `fields` the three fields DESIGN reads are, and what JSON
    // value each was.
    let (mut inst_id, mut pos_side, mut pos) = (None, None, None);
    for (name, value) in members {
        let Some(name) = name else {
            return Read::Ambiguous("a field name does not decode".into());
        };
        if name == MIGRATED_AT || name == MIGRATED_FROM {
            return Read::Ambiguous(format!("already holds {name}"));
        }
        if fields.iter().any(|(n, _)| *n == name) {
            return Read::Ambiguous(format!("field {name:?} twice"));
        }
        let (shape, text) = match value.kind {
            Kind::Str(Some(s)) => (Shape::Str, s),
            Kind::Str(None) => {
                return Read::Ambiguous(format!("field {name:?} is not a Unicode string"))
            }
            Kind::Number => (Shape::Number, json::compact(value.raw)),
            _ => (Shape::Other, json::compact(value.raw)),
        };
        let here = Some((fields.len(), shape));
        match name.as_str() {
            "instId" => inst_id = here,
            "posSide" => pos_side = here,
            "pos" => pos = here,
            _ => {}
        }
        fields.push((name, text));
    }
    let text = |i: usize| fields[i].1.as_str();
    let inst_id = match inst_id {
        None => return Read::Quarantine("no instId".into()),
        Some((i, Shape::Str)) if !text(i).is_empty() && !text(i).contains(':') => {
            text(i).to_owned()
        }
        Some(_) => return Read::Ambiguous("instId is not a usable key segment".into()),
    };
    let declared = match pos_side {
        Some((i, Shape::Str)) if text(i).eq_ignore_ascii_case("long") => Some("long"),
        Some((i, Shape::Str)) if text(i).eq_ignore_ascii_case("short") => Some("short"),
        _ => None,
    };
    let sign = match pos {
        Some((i, Shape::Number | Shape::Str)) => number_sign(text(i)),
        _ => None,
    };
    let side = match (declared, sign) {
        (Some(side), _) => side,
        (None, Some(Sign::Negative)) => "short",
        (None, Some(_)) => "long",
        // A pos that is not a number is not below zero.
        (None, None) => match pos {
            Some((i, Shape::Str)) if looks_numeric(text(i)) => {
                return Read::Ambiguous(format!("pos {:?} is not a plain number", text(i)))
            }
            _ => "long",
        },
    };
    // A pos that is not a number is not closed (it matters only under
    // --skip-closed).
    let closed = sign == Some(Sign::Zero);
    Read::Position(ExpectedPosition {
        member: format!("{inst_id}:{side}"),
        inst_id,
        side,
        fields,
        closed,
    })
}

/// Text a float parser might read as a number though JSON would not
/// (`+3`, ` -3`, `inf`, `.5`): the sign DESIGN's rule needs is unclear.
fn looks_numeric(t: &str) -> bool {
    let t = t.trim();
    let t = t.strip_prefix(['+', '-']).unwrap_or(t);
    t.eq_ignore_ascii_case("inf")
        || t.eq_ignore_ascii_case("infinity")
        || t.eq_ignore_ascii_case("nan")
        || (!t.is_empty()
            && t.bytes().any(|b| b.is_ascii_digit())
            && t.bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migrate(v: &str) -> Vec<ExpectedPosition> {
        match expect(v.as_bytes(), false) {
            Expectation::Migrate { positions, .. } => positions,
            other => panic!("{v}: {other:?}"),
        }
    }

    fn field<'a>(p: &'a ExpectedPosition, name: &str) -> &'a str {
        &p.fields.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn side_follows_pos_side_then_the_sign() {
        let ps = migrate(
            r#"[{"instId":"A","posSide":"SHORT","pos":"5"},{"instId":"B","posSide":"net","pos":-2},
                {"instId":"C","pos":"0"},{"instId":"D","posSide":"Long","pos":"-1"},{"instId":"E"}]"#,
        );
        let sides: Vec<_> = ps.iter().map(|p| p.side).collect();
        assert_eq!(sides, ["short", "short", "long", "long", "long"]);
        assert!(ps[2].closed);
    }

    #[test]
    fn non_strings_keep_their_text_compacted() {
        let ps = migrate(
            r#"[{"instId":"A","px":3.50,"n":1e5,"o":{ "b" : 1, "a" : [ true ] },"s":"x y"}]"#,
        );
        assert_eq!(field(&ps[0], "px"), "3.50");
        assert_eq!(field(&ps[0], "n"), "1e5");
        assert_eq!(field(&ps[0], "o"), r#"{"b":1,"a":[true]}"#);
        assert_eq!(field(&ps[0], "s"), "x y");
    }

    #[test]
    fn object_values_are_keyed_by_inst_id() {
        let ps = migrate(r#"{"A":{"instId":"A","pos":"1"}}"#);
        assert_eq!(ps[0].member(), "A:long");
        assert!(matches!(
            expect(br#"{"B":{"instId":"A"}}"#, false),
            Expectation::Ambiguous { .. }
        ));
    }

    #[test]
    fn design_quarantines() {
        for v in [
            &b"not json"[..],
            b"\xff\xfe",
            b"42",
            b"\"s\"",
            b"[1]",
            br#"[{"pos":"1"}]"#,
            br#"[{"instId":"A","pos":"1"},{"instId":"A","pos":"2"}]"#,
        ] {
            assert!(
                matches!(expect(v, false), Expectation::Quarantine { .. }),
                "{}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn beyond_design_is_ambiguous() {
        for v in [
            r#"[{"instId":"A","instId":"B"}]"#,
            r#"[{"instId":"A:B"}]"#,
            r#"[{"instId":""}]"#,
            r#"[{"instId":7}]"#,
            r#"[{"instId":"A","migrated_at":"x"}]"#,
            r#"[{"instId":"A","s":"\ud800"}]"#,
            r#"[{"instId":"A","pos":"+3"}]"#,
        ] {
            assert!(
                matches!(expect(v.as_bytes(), false), Expectation::Ambiguous { .. }),
                "{v}"
            );
        }
    }

    #[test]
    fn skip_closed_counts_what_it_leaves_out() {
        let e = expect(
            br#"[{"instId":"A","pos":"0"},{"instId":"B","pos":"1"}]"#,
            true,
        );
        let Expectation::Migrate {
            positions,
            skipped_closed,
        } = e
        else {
            panic!()
        };
        assert_eq!((positions.len(), skipped_closed), (1, 1));
    }

    #[test]
    fn an_empty_array_migrates_to_nothing() {
        assert!(migrate("[]").is_empty());
        assert!(migrate(" {} ").is_empty());
    }
}
