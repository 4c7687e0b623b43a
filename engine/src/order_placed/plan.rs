//! The pure "what must happen" step of Phase 1: from what a legacy
//! order-placed key and its target hold to move, drop, conflict or
//! quarantine. No I/O; the runner plans with it (dry runs included) and the
//! move script only re-checks, atomically, that the plan still applies.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// A hash's (field, value) pairs, sorted by field: byte strings, as Redis
/// keeps them.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// One key as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRead {
    Absent,
    /// A hash, fields sorted by name.
    Hash(Fields),
    /// Any other Redis type (`string`, `list`, ...).
    Other {
        redis_type: String,
    },
}

impl KeyRead {
    /// A hash from HGETALL's pairs in any order; no pairs means no key
    /// (Redis never keeps an empty hash).
    pub fn hash(mut fields: Fields) -> Self {
        if fields.is_empty() {
            return KeyRead::Absent;
        }
        fields.sort();
        KeyRead::Hash(fields)
    }
}

/// What to do with one legacy key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPlan {
    /// Gone between SCAN and read (expired, deleted): nothing to do.
    Vanished,
    Quarantine(QuarantineReason),
    /// The target is absent: rename the legacy key to it.
    Move,
    /// The target already holds the same hash: delete the legacy key.
    DropEqual,
    /// The target exists and differs: touch neither.
    Conflict(ConflictReason),
}

/// Why a legacy key is left untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuarantineReason {
    NotAHash {
        redis_type: String,
    },
    /// The key's name is not UTF-8; it is reported with its bytes escaped.
    KeyNotUtf8,
}

impl QuarantineReason {
    /// A stable short tag for reports and counters.
    pub fn tag(&self) -> &'static str {
        match self {
            Self::NotAHash { .. } => "not_a_hash",
            Self::KeyNotUtf8 => "key_not_utf8",
        }
    }
}

impl fmt::Display for QuarantineReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAHash { redis_type } => {
                write!(f, "value is a Redis {redis_type}, not a hash")
            }
            Self::KeyNotUtf8 => f.write_str("the key name is not UTF-8; migrate it by hand"),
        }
    }
}

/// Why a legacy key and its target are both left as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictReason {
    TargetNotAHash {
        redis_type: String,
    },
    Differs(FieldDiff),
    /// The legacy key or its target changed under a writer on every attempt.
    KeptChanging {
        attempts: usize,
    },
}

impl ConflictReason {
    pub fn tag(&self) -> &'static str {
        match self {
            Self::TargetNotAHash { .. } => "target_not_a_hash",
            Self::Differs(_) => "target_differs",
            Self::KeptChanging { .. } => "changed_under_writer",
        }
    }
}

impl fmt::Display for ConflictReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TargetNotAHash { redis_type } => {
                write!(f, "the target is a Redis {redis_type}, not a hash")
            }
            Self::Differs(d) => write!(f, "the target differs: {d}"),
            Self::KeptChanging { attempts } => write!(
                f,
                "the keys changed under a writer {attempts} times in a row; rerun to retry"
            ),
        }
    }
}

/// How two hashes differ: field names (lossy UTF-8) in each bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldDiff {
    pub only_legacy: Vec<String>,
    pub only_target: Vec<String>,
    pub different_values: Vec<String>,
}

impl fmt::Display for FieldDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (what, names) in [
            ("other value", &self.different_values),
            ("only in legacy", &self.only_legacy),
            ("only in target", &self.only_target),
        ] {
            if names.is_empty() {
                continue;
            }
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            let shown: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
            let more = names.len().saturating_sub(shown.len());
            write!(f, "{} field(s) {what} {shown:?}", names.len())?;
            if more > 0 {
                write!(f, " and {more} more")?;
            }
        }
        Ok(())
    }
}

/// A planner of legacy order-placed keys. [`plan_key`] is the one that
/// ships; the runner takes its planner from its options so that the gate
/// can be shown a deliberately broken one (keyshift-mutants).
pub type KeyPlanner = fn(&KeyRead, &KeyRead) -> KeyPlan;

/// DESIGN §2 Phase 1 for one legacy key and its target.
pub fn plan_key(legacy: &KeyRead, target: &KeyRead) -> KeyPlan {
    let legacy = match legacy {
        KeyRead::Absent => return KeyPlan::Vanished,
        KeyRead::Other { redis_type } => {
            let redis_type = redis_type.clone();
            return KeyPlan::Quarantine(QuarantineReason::NotAHash { redis_type });
        }
        KeyRead::Hash(fields) => fields,
    };
    match target {
        KeyRead::Absent => KeyPlan::Move,
        KeyRead::Other { redis_type } => KeyPlan::Conflict(ConflictReason::TargetNotAHash {
            redis_type: redis_type.clone(),
        }),
        KeyRead::Hash(target) if target == legacy => KeyPlan::DropEqual,
        KeyRead::Hash(target) => KeyPlan::Conflict(ConflictReason::Differs(diff(legacy, target))),
    }
}

/// Compares two sorted field lists.
pub fn diff(legacy: &Fields, target: &Fields) -> FieldDiff {
    let name = |f: &[u8]| String::from_utf8_lossy(f).into_owned();
    let mut d = FieldDiff::default();
    let (mut l, mut t) = (legacy.iter().peekable(), target.iter().peekable());
    loop {
        match (l.peek(), t.peek()) {
            (None, None) => return d,
            (Some((lf, _)), None) => {
                d.only_legacy.push(name(lf));
                l.next();
            }
            (None, Some((tf, _))) => {
                d.only_target.push(name(tf));
                t.next();
            }
            (Some((lf, lv)), Some((tf, tv))) => match lf.cmp(tf) {
                std::cmp::Ordering::Less => {
                    d.only_legacy.push(name(lf));
                    l.next();
                }
                std::cmp::Ordering::Greater => {
                    d.only_target.push(name(tf));
                    t.next();
                }
                std::cmp::Ordering::Equal => {
                    if lv != tv {
                        d.different_values.push(name(lf));
                    }
                    l.next();
                    t.next();
                }
            },
        }
    }
}

/// SHA-256 (lowercase hex) of a hash's canonical encoding: the pair count,
/// then each (field, value) pair sorted by field, every count and byte
/// string prefixed by its length as a big-endian u64. Equal hashes, and
/// only those, give equal digests; the order HGETALL returns does not
/// matter.
pub fn fields_digest(fields: &[(Vec<u8>, Vec<u8>)]) -> String {
    let mut sorted: Vec<&(Vec<u8>, Vec<u8>)> = fields.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    h.update((sorted.len() as u64).to_be_bytes());
    for (f, v) in sorted {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f);
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(pairs: &[(&str, &str)]) -> KeyRead {
        KeyRead::hash(
            pairs
                .iter()
                .map(|(f, v)| (f.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn plan_moves_when_the_target_is_absent() {
        let legacy = hash(&[("1", "0"), ("2", "1")]);
        assert_eq!(plan_key(&legacy, &KeyRead::Absent), KeyPlan::Move);
    }

    #[test]
    fn plan_drops_legacy_when_the_target_is_equal_in_any_field_order() {
        let legacy = hash(&[("2", "1"), ("1", "0")]);
        let target = hash(&[("1", "0"), ("2", "1")]);
        assert_eq!(plan_key(&legacy, &target), KeyPlan::DropEqual);
    }

    #[test]
    fn plan_reports_a_differing_target_as_a_conflict_naming_the_fields() {
        let legacy = hash(&[("1", "0"), ("2", "1"), ("3", "1")]);
        let target = hash(&[("1", "1"), ("2", "1"), ("4", "0")]);
        let KeyPlan::Conflict(reason) = plan_key(&legacy, &target) else {
            panic!("expected a conflict");
        };
        assert_eq!(reason.tag(), "target_differs");
        assert_eq!(
            reason,
            ConflictReason::Differs(FieldDiff {
                only_legacy: vec!["3".into()],
                only_target: vec!["4".into()],
                different_values: vec!["1".into()],
            })
        );
        assert!(reason
            .to_string()
            .contains(r#"1 field(s) other value ["1"]"#));
    }

    #[test]
    fn plan_conflicts_with_a_target_of_another_type() {
        let target = KeyRead::Other {
            redis_type: "string".into(),
        };
        let plan = plan_key(&hash(&[("1", "0")]), &target);
        assert!(matches!(
            plan,
            KeyPlan::Conflict(ConflictReason::TargetNotAHash { .. })
        ));
    }

    #[test]
    fn plan_quarantines_a_legacy_key_that_is_not_a_hash() {
        let legacy = KeyRead::Other {
            redis_type: "list".into(),
        };
        let plan = plan_key(&legacy, &KeyRead::Absent);
        let KeyPlan::Quarantine(reason) = plan else {
            panic!("expected quarantine");
        };
        assert_eq!(reason.tag(), "not_a_hash");
        assert_eq!(reason.to_string(), "value is a Redis list, not a hash");
    }

    #[test]
    fn plan_skips_a_vanished_key() {
        assert_eq!(
            plan_key(&KeyRead::hash(Vec::new()), &KeyRead::Absent),
            KeyPlan::Vanished
        );
    }

    #[test]
    fn digest_ignores_order_and_sees_every_byte() {
        let a = [
            (b"1".to_vec(), b"0".to_vec()),
            (b"2".to_vec(), b"1".to_vec()),
        ];
        let b = [a[1].clone(), a[0].clone()];
        assert_eq!(fields_digest(&a), fields_digest(&b));
        assert_eq!(fields_digest(&a).len(), 64);
        let value_changed = [a[0].clone(), (b"2".to_vec(), b"0".to_vec())];
        assert_ne!(fields_digest(&a), fields_digest(&value_changed));
        // Length prefixes keep the field/value boundary.
        let joined = [(b"ab".to_vec(), b"c".to_vec())];
        let split = [(b"a".to_vec(), b"bc".to_vec())];
        assert_ne!(fields_digest(&joined), fields_digest(&split));
        assert_ne!(fields_digest(&a[..1]), fields_digest(&a));
    }
}
