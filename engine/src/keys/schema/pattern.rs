//! One key pattern: a template of `:`-separated segments, each either a
//! literal or one placeholder filling the whole segment, and the
//! constraints a placeholder's value must meet. No constraint admits `:`,
//! so a key matches a pattern only if it has as many segments, and each
//! segment matches on its own: matching and overlap analysis are exact.

use std::collections::BTreeMap;

/// What a placeholder's value must be. None admits an empty value or `:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Constraint {
    /// Any non-empty text without `:` (user ids, symbols).
    Id,
    /// Exactly one of these values (the exchange list, `long|short`).
    OneOf(Vec<String>),
    /// As long as the shape; each `#` an ASCII digit, any other character
    /// itself (`########_######` for `YYYYMMDD_HHMMSS`).
    Shape(String),
}

/// The digit wildcard of a [`Constraint::Shape`].
pub const SHAPE_DIGIT: char = '#';

impl Constraint {
    pub fn accepts(&self, value: &str) -> bool {
        match self {
            Constraint::Id => !value.is_empty() && !value.contains(':'),
            Constraint::OneOf(values) => values.iter().any(|v| v == value),
            Constraint::Shape(shape) => {
                value.chars().count() == shape.chars().count()
                    && shape.chars().zip(value.chars()).all(|(s, v)| {
                        if s == SHAPE_DIGIT {
                            v.is_ascii_digit()
                        } else {
                            s == v
                        }
                    })
            }
        }
    }

    /// A value both constraints accept, if there is one.
    pub fn meet(&self, other: &Constraint) -> Option<String> {
        use Constraint::*;
        match (self, other) {
            (Id, Id) => Some("x".to_owned()),
            (OneOf(values), c) | (c, OneOf(values)) => {
                values.iter().find(|v| c.accepts(v)).cloned()
            }
            (Shape(s), Id) | (Id, Shape(s)) => Some(shape_example(s)),
            (Shape(a), Shape(b)) => {
                if a.chars().count() != b.chars().count() {
                    return None;
                }
                a.chars()
                    .zip(b.chars())
                    .map(|(x, y)| match (x == SHAPE_DIGIT, y == SHAPE_DIGIT) {
                        (true, true) => Some('0'),
                        (true, false) => y.is_ascii_digit().then_some(y),
                        (false, true) => x.is_ascii_digit().then_some(x),
                        (false, false) => (x == y).then_some(x),
                    })
                    .collect()
            }
        }
    }

    /// Why this constraint can never be met or admits `:`, if it does.
    pub(crate) fn defect(&self) -> Option<String> {
        match self {
            Constraint::Id => None,
            Constraint::OneOf(values) if values.is_empty() => Some("no values".to_owned()),
            Constraint::OneOf(values) => values
                .iter()
                .find(|v| v.is_empty() || v.contains(':'))
                .map(|v| format!("value {v:?} is empty or holds `:`")),
            Constraint::Shape(s) if s.is_empty() || s.contains(':') => {
                Some(format!("shape {s:?} is empty or holds `:`"))
            }
            Constraint::Shape(_) => None,
        }
    }
}

fn shape_example(shape: &str) -> String {
    shape
        .chars()
        .map(|c| if c == SHAPE_DIGIT { '0' } else { c })
        .collect()
}

/// One `:`-separated segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Placeholder {
        name: String,
        constraint: Constraint,
    },
}

impl Segment {
    pub fn accepts(&self, part: &str) -> bool {
        match self {
            Segment::Literal(l) => l == part,
            Segment::Placeholder { constraint, .. } => constraint.accepts(part),
        }
    }

    /// A segment text both accept, if there is one.
    pub fn meet(&self, other: &Segment) -> Option<String> {
        match (self, other) {
            (Segment::Literal(a), b) | (b, Segment::Literal(a)) => b.accepts(a).then(|| a.clone()),
            (
                Segment::Placeholder { constraint: a, .. },
                Segment::Placeholder { constraint: b, .. },
            ) => a.meet(b),
        }
    }
}

/// Splits a template into segments, resolving each `{name}` against the
/// declared placeholders. Every error says what to change.
pub fn parse_template(
    template: &str,
    placeholders: &BTreeMap<String, Constraint>,
) -> Result<Vec<Segment>, String> {
    let mut seen: Vec<&str> = Vec::new();
    template
        .split(':')
        .map(|part| {
            if part.is_empty() {
                return Err("an empty segment (`::`, or `:` at an end)".to_owned());
            }
            let Some(inner) = part.strip_prefix('{') else {
                if part.contains(['{', '}']) {
                    return Err(format!(
                        "segment {part:?}: a placeholder must fill a whole `:`-separated segment"
                    ));
                }
                return Ok(Segment::Literal(part.to_owned()));
            };
            let Some(name) = inner.strip_suffix('}').filter(|n| !n.contains(['{', '}'])) else {
                return Err(format!(
                    "segment {part:?}: a placeholder must fill a whole `:`-separated segment"
                ));
            };
            if seen.contains(&name) {
                return Err(format!("placeholder {{{name}}} appears twice"));
            }
            seen.push(name);
            let constraint = placeholders.get(name).ok_or_else(|| {
                format!("placeholder {{{name}}} is not declared under [placeholders]")
            })?;
            Ok(Segment::Placeholder {
                name: name.to_owned(),
                constraint: constraint.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl() -> BTreeMap<String, Constraint> {
        BTreeMap::from([
            ("user_id".to_owned(), Constraint::Id),
            (
                "side".to_owned(),
                Constraint::OneOf(vec!["long".into(), "short".into()]),
            ),
            (
                "stamp".to_owned(),
                Constraint::Shape("########_######".into()),
            ),
        ])
    }

    #[test]
    fn template_splits_into_literals_and_placeholders() {
        let segs = parse_template("positions:{user_id}:{side}", &decl()).unwrap();
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[0], Segment::Literal("positions".into()));
        assert!(
            matches!(&segs[1], Segment::Placeholder { name, constraint: Constraint::Id } if name == "user_id")
        );
    }

    #[test]
    fn template_errors_say_what_is_wrong() {
        let err = |t: &str| parse_template(t, &decl()).unwrap_err();
        assert!(err("a:{nope}").contains("not declared"));
        assert!(err("a:x{user_id}").contains("whole"));
        assert!(err("a:{user_id}x").contains("whole"));
        assert!(err("a::b").contains("empty segment"));
        assert!(err("{user_id}:{user_id}").contains("twice"));
    }

    #[test]
    fn constraints_accept_what_design_says() {
        assert!(Constraint::Id.accepts("u*1"));
        assert!(!Constraint::Id.accepts(""));
        assert!(!Constraint::Id.accepts("a:b"));
        let stamp = Constraint::Shape("########_######".into());
        assert!(stamp.accepts("20250101_000000"));
        assert!(!stamp.accepts("2025010_000000"));
        assert!(!stamp.accepts("latest"));
        assert!(!stamp.accepts("２0250101_000000"));
    }

    #[test]
    fn meet_finds_a_common_value_or_none() {
        let side = Constraint::OneOf(vec!["long".into(), "short".into()]);
        let stamp = Constraint::Shape("########_######".into());
        assert_eq!(side.meet(&Constraint::Id).as_deref(), Some("long"));
        assert_eq!(side.meet(&stamp), None);
        assert_eq!(
            stamp.meet(&Constraint::Id).as_deref(),
            Some("00000000_000000")
        );
        assert_eq!(
            stamp
                .meet(&Constraint::Shape("2025####_######".into()))
                .as_deref(),
            Some("20250000_000000")
        );
        assert_eq!(stamp.meet(&Constraint::Shape("#".into())), None);
        let lit = Segment::Literal("index".into());
        let uid = Segment::Placeholder {
            name: "user_id".into(),
            constraint: Constraint::Id,
        };
        assert_eq!(lit.meet(&uid).as_deref(), Some("index"));
        assert_eq!(lit.meet(&Segment::Literal("other".into())), None);
    }
}
