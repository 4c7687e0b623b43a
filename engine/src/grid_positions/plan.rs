//! The pure "what must happen" step of Phase 2: from one legacy value to the
//! hashes it becomes, or the reason it is quarantined. No I/O; the writers
//! and the verifier both call this, so they cannot disagree on semantics.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

use crate::keys::{META_MIGRATED_AT, META_MIGRATED_FROM};

/// The side a position hash is filed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Long,
    Short,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Long => "long",
            Side::Short => "short",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// Reproduce the guide's "skip closed positions" rule (`pos` 0).
    pub skip_closed: bool,
}

/// One position hash to write, without the migration metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPosition {
    pub inst_id: String,
    pub side: Side,
    /// Every field of the legacy object in its original order: strings
    /// verbatim, any other JSON value as compact JSON text.
    pub fields: Vec<(String, String)>,
}

impl PlannedPosition {
    /// The index member and last two key segments: `{instId}:{side}`.
    pub fn index_member(&self) -> String {
        format!("{}:{}", self.inst_id, self.side.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigratePlan {
    pub positions: Vec<PlannedPosition>,
    /// Closed positions left out under `--skip-closed`.
    pub skipped_closed: usize,
    pub shape: ValueShape,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueShape {
    Array,
    ObjectByInstId,
}

/// Why a legacy key is left untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuarantineReason {
    NotAString {
        redis_type: String,
    },
    NotJson {
        detail: String,
    },
    NotArrayOrObject {
        found: &'static str,
    },
    PositionNotObject {
        index: usize,
    },
    /// A position that starts as an object but is not readable JSON, e.g.
    /// a string holding a lone surrogate (`\ud800`).
    PositionUnreadable {
        index: usize,
        detail: String,
    },
    DuplicateField {
        index: usize,
        field: String,
    },
    MissingInstId {
        index: usize,
    },
    InvalidInstId {
        index: usize,
        detail: &'static str,
    },
    ObjectKeyNotInstId {
        key: String,
        inst_id: String,
    },
    ReservedField {
        index: usize,
        field: String,
    },
    Collision {
        member: String,
    },
    /// The key's name is not UTF-8; it is reported with its bytes escaped.
    KeyNotUtf8,
    /// More positions than one bounded step may write (the runner's
    /// `max_positions_per_user`); not a planning rule of DESIGN §2.
    TooManyPositions {
        positions: usize,
        max: usize,
    },
}

impl QuarantineReason {
    /// A stable short tag for reports and counters.
    pub fn tag(&self) -> &'static str {
        match self {
            Self::NotAString { .. } => "not_a_string",
            Self::NotJson { .. } => "not_json",
            Self::NotArrayOrObject { .. } => "not_array_or_object",
            Self::PositionNotObject { .. } => "position_not_object",
            Self::PositionUnreadable { .. } => "position_unreadable",
            Self::DuplicateField { .. } => "duplicate_field",
            Self::MissingInstId { .. } => "missing_inst_id",
            Self::InvalidInstId { .. } => "invalid_inst_id",
            Self::ObjectKeyNotInstId { .. } => "object_key_not_inst_id",
            Self::ReservedField { .. } => "reserved_field",
            Self::Collision { .. } => "collision",
            Self::KeyNotUtf8 => "key_not_utf8",
            Self::TooManyPositions { .. } => "too_many_positions",
        }
    }
}

impl fmt::Display for QuarantineReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAString { redis_type } => {
                write!(f, "value is a Redis {redis_type}, not a string")
            }
            Self::NotJson { detail } => write!(f, "value is not JSON ({detail})"),
            Self::NotArrayOrObject { found } => {
                write!(
                    f,
                    "value is a JSON {found}, not an array or object of positions"
                )
            }
            Self::PositionNotObject { index } => write!(f, "position #{index} is not an object"),
            Self::PositionUnreadable { index, detail } => {
                write!(f, "position #{index} is not readable JSON ({detail})")
            }
            Self::DuplicateField { index, field } => {
                write!(f, "position #{index} has field {field:?} twice")
            }
            Self::MissingInstId { index } => write!(f, "position #{index} has no instId"),
            Self::InvalidInstId { index, detail } => {
                write!(f, "position #{index} has an unusable instId: {detail}")
            }
            Self::ObjectKeyNotInstId { key, inst_id } => {
                write!(
                    f,
                    "object key {key:?} differs from its position's instId {inst_id:?}"
                )
            }
            Self::ReservedField { index, field } => write!(
                f,
                "position #{index} already has field {field:?}, which the migration adds"
            ),
            Self::Collision { member } => {
                write!(f, "two positions map to the same key suffix {member:?}")
            }
            Self::KeyNotUtf8 => f.write_str("the key name is not UTF-8; migrate it by hand"),
            Self::TooManyPositions { positions, max } => write!(
                f,
                "holds {positions} positions, more than --max-positions-per-user {max}: one \
                 atomic step for it would block Redis too long; migrate it in a quiet window \
                 with a higher --max-positions-per-user"
            ),
        }
    }
}

/// What to do with one legacy key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserPlan {
    Migrate(MigratePlan),
    Quarantine {
        reason: QuarantineReason,
        /// Positions the value holds, where that can be told (for the
        /// "counts" invariant); 0 when the value is not a container.
        positions: usize,
    },
}

/// A planner of legacy values. [`plan_value`] is the one that ships; the
/// runner takes its planner from its options so that the gate can be shown
/// a deliberately broken one (keyshift-mutants).
pub type Planner = fn(&[u8], PlanOptions) -> UserPlan;

/// Plans one legacy string value.
pub fn plan_value(value: &[u8], opts: PlanOptions) -> UserPlan {
    let quarantine = |reason, positions| UserPlan::Quarantine { reason, positions };
    let text = match std::str::from_utf8(value) {
        Ok(t) => t,
        Err(e) => {
            let detail = format!("invalid UTF-8 at byte {}", e.valid_up_to());
            return quarantine(QuarantineReason::NotJson { detail }, 0);
        }
    };
    let (shape, entries) = match entries_of(text) {
        Ok(parsed) => parsed,
        Err(reason) => return quarantine(reason, 0),
    };
    let count = entries.len();
    let mut positions = Vec::with_capacity(count);
    let mut skipped_closed = 0;
    // Collisions are checked over every position, skipped ones included:
    // which of two colliding positions is "the" position is not ours to pick.
    let mut members = std::collections::HashSet::with_capacity(count);
    for (index, (object_key, item)) in entries.into_iter().enumerate() {
        let (position, closed) = match plan_position(index, item) {
            Ok(p) => p,
            Err(reason) => return quarantine(reason, count),
        };
        if let Some(key) = object_key {
            if key != position.inst_id {
                let inst_id = position.inst_id;
                let key = key.into_owned();
                return quarantine(QuarantineReason::ObjectKeyNotInstId { key, inst_id }, count);
            }
        }
        let member = position.index_member();
        if !members.insert(member.clone()) {
            return quarantine(QuarantineReason::Collision { member }, count);
        }
        if closed && opts.skip_closed {
            skipped_closed += 1;
        } else {
            positions.push(position);
        }
    }
    UserPlan::Migrate(MigratePlan {
        positions,
        skipped_closed,
        shape,
    })
}

/// The positions a value holds, each with its object key when the value is
/// an object by instId.
type Entries<'a> = Vec<(Option<Cow<'a, str>>, &'a RawValue)>;

/// The value's shape and entries, or why it holds no positions.
fn entries_of(text: &str) -> Result<(ValueShape, Entries<'_>), QuarantineReason> {
    // Each shape is parsed straight from the text: a parse that only
    // validates first would read every byte once more, and planning is the
    // migrating client's largest cost.
    let not_json = |e: serde_json::Error| QuarantineReason::NotJson {
        detail: e.to_string(),
    };
    match text.trim_start().as_bytes().first() {
        Some(b'[') => {
            let items = serde_json::from_str::<Vec<&RawValue>>(text).map_err(not_json)?;
            let entries = items.into_iter().map(|v| (None, v)).collect();
            Ok((ValueShape::Array, entries))
        }
        Some(b'{') => match parse_object(text).map_err(not_json)? {
            Ok(fields) => {
                let entries = fields.into_iter().map(|(k, v)| (Some(k), v)).collect();
                Ok((ValueShape::ObjectByInstId, entries))
            }
            Err(field) => Err(QuarantineReason::DuplicateField { index: 0, field }),
        },
        _ => {
            let other = serde_json::from_str::<&RawValue>(text).map_err(not_json)?;
            let found = json_kind(other.get());
            Err(QuarantineReason::NotArrayOrObject { found })
        }
    }
}

/// Plans one position object; the bool says whether it is closed (`pos` 0).
fn plan_position(
    index: usize,
    item: &RawValue,
) -> Result<(PlannedPosition, bool), QuarantineReason> {
    if !item.get().starts_with('{') {
        return Err(QuarantineReason::PositionNotObject { index });
    }
    let raw_fields = match parse_object(item.get()) {
        Ok(Ok(f)) => f,
        Ok(Err(field)) => return Err(QuarantineReason::DuplicateField { index, field }),
        Err(e) => {
            let detail = e.to_string();
            return Err(QuarantineReason::PositionUnreadable { index, detail });
        }
    };
    let mut fields = Vec::with_capacity(raw_fields.len() + 2);
    let (mut inst_id, mut pos_side, mut pos) = (None, None, None);
    for (name, raw) in raw_fields {
        if name == META_MIGRATED_AT || name == META_MIGRATED_FROM {
            let field = name.into_owned();
            return Err(QuarantineReason::ReservedField { index, field });
        }
        let text = raw.get();
        let is_string = text.starts_with('"');
        let value = if is_string {
            string_value(text).ok_or_else(|| QuarantineReason::PositionUnreadable {
                index,
                detail: format!("field {name:?} holds a string that does not decode"),
            })?
        } else {
            compact_json(text)
        };
        let name = name.into_owned();
        match name.as_str() {
            "instId" => inst_id = Some((is_string, value.clone())),
            "posSide" if is_string => pos_side = Some(value.clone()),
            "pos" => pos = Some(value.clone()),
            _ => {}
        }
        fields.push((name, value));
    }
    let inst_id = match inst_id {
        None => return Err(QuarantineReason::MissingInstId { index }),
        Some((false, _)) => {
            let detail = "not a JSON string";
            return Err(QuarantineReason::InvalidInstId { index, detail });
        }
        Some((true, s)) if s.is_empty() => {
            return Err(QuarantineReason::InvalidInstId {
                index,
                detail: "empty",
            });
        }
        Some((true, s)) if s.contains(':') => {
            let detail = "contains ':', the key separator";
            return Err(QuarantineReason::InvalidInstId { index, detail });
        }
        Some((true, s)) => s,
    };
    let pos_value = pos.as_deref().and_then(parse_number);
    let side = side_of(pos_side.as_deref(), pos_value);
    let closed = pos_value == Some(0.0);
    Ok((
        PlannedPosition {
            inst_id,
            side,
            fields,
        },
        closed,
    ))
}

/// DESIGN §2: `posSide` when it is long or short (any case); otherwise
/// short when `pos` < 0, else long. In long/short mode a short has a
/// positive `pos`, so the sign alone would be wrong there.
pub fn side_of(pos_side: Option<&str>, pos: Option<f64>) -> Side {
    match pos_side {
        Some(s) if s.eq_ignore_ascii_case("long") => Side::Long,
        Some(s) if s.eq_ignore_ascii_case("short") => Side::Short,
        _ if pos.is_some_and(|p| p < 0.0) => Side::Short,
        _ => Side::Long,
    }
}

/// The content of a JSON string literal that the parser has already
/// validated. Without a backslash its content is the text between the
/// quotes, byte for byte (control characters are invalid JSON), so only
/// escaped strings need decoding.
fn string_value(literal: &str) -> Option<String> {
    if literal.contains('\\') {
        serde_json::from_str::<String>(literal).ok()
    } else {
        Some(literal.get(1..literal.len().checked_sub(1)?)?.to_owned())
    }
}

/// A `pos` as OKX sends it (a decimal string) or as a JSON number.
pub fn parse_number(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|v| !v.is_nan())
}

/// Compact JSON text of a valid JSON value: whitespace outside strings
/// removed, everything else (key order, number spelling, escapes) kept as
/// written, so nothing is lost in translation.
pub fn compact_json(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in raw.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

fn json_kind(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

/// An object's members in source order. The inner `Err` names a duplicated
/// field: a hash can hold only one of them, so the value is not understood.
type Members<'a> = Result<Vec<(Cow<'a, str>, &'a RawValue)>, String>;

/// Above this many members, duplicates are found with a set; below, a scan
/// of the few members before is cheaper than hashing each name.
const DUPLICATE_SCAN_LIMIT: usize = 16;

fn parse_object(raw: &str) -> Result<Members<'_>, serde_json::Error> {
    struct ObjectVisitor;
    impl<'de> Visitor<'de> for ObjectVisitor {
        type Value = Members<'de>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::new();
            while let Some((Name(k), v)) = map.next_entry::<Name<'de>, &'de RawValue>()? {
                out.push((k, v));
            }
            Ok(match first_duplicate(&out) {
                Some(d) => Err(d),
                None => Ok(out),
            })
        }
        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(de::Error::custom("expected an object"))
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    let members = (&mut de).deserialize_map(ObjectVisitor)?;
    de.end()?;
    Ok(members)
}

/// The first member name that repeats an earlier one.
fn first_duplicate(members: &[(Cow<'_, str>, &RawValue)]) -> Option<String> {
    let repeated = |i: usize| {
        let name = &members[i].0;
        members[..i].iter().any(|(earlier, _)| earlier == name)
    };
    if members.len() <= DUPLICATE_SCAN_LIMIT {
        return (1..members.len())
            .find(|&i| repeated(i))
            .map(|i| members[i].0.clone().into_owned());
    }
    let mut seen = std::collections::HashSet::with_capacity(members.len());
    members
        .iter()
        .find(|(name, _)| !seen.insert(name.as_ref()))
        .map(|(name, _)| name.clone().into_owned())
}

/// An object member's name, borrowed from the value unless it holds escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s)))
            }
        }
        d.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
