//! DESIGN §1's key names, read afresh for the oracle: which family a key
//! belongs to. An id segment is non-empty and holds no `:` (the separator).

/// One key's place in the grid-positions families.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GridKey<'a> {
    /// `{exchange}:positions:{user_id}`.
    Legacy {
        exchange: &'a str,
        user: &'a str,
    },
    /// A legacy-looking name that is not UTF-8: no rule decides it.
    LegacyNotUtf8,
    /// `{legacy key}:backup:{YYYYMMDD_HHMMSS}`.
    Backup {
        legacy: &'a str,
        stamp: &'a str,
    },
    /// `positions:{user_id}:{exchange}:{instId}:{side}`.
    Hash {
        user: &'a str,
        exchange: &'a str,
        member: &'a str,
    },
    /// `positions:index:{user_id}:{exchange}`.
    Index {
        user: &'a str,
        exchange: &'a str,
    },
    Other,
}

fn segment(s: &str) -> bool {
    !s.is_empty() && !s.contains(':')
}

pub fn is_stamp(s: &str) -> bool {
    s.len() == 15
        && s.bytes().enumerate().all(|(i, b)| {
            if i == 8 {
                b == b'_'
            } else {
                b.is_ascii_digit()
            }
        })
}

pub fn classify<'a>(key: &'a [u8], exchanges: &[String]) -> GridKey<'a> {
    let Ok(key) = std::str::from_utf8(key) else {
        let legacy_like = exchanges.iter().any(|ex| {
            let prefix = format!("{ex}:positions:");
            key.starts_with(prefix.as_bytes()) && !key[prefix.len()..].contains(&b':')
        });
        return if legacy_like {
            GridKey::LegacyNotUtf8
        } else {
            GridKey::Other
        };
    };
    let known = |ex: &str| exchanges.iter().any(|e| e == ex);
    if let Some(rest) = key.strip_prefix("positions:") {
        let parts: Vec<&str> = rest.split(':').collect();
        return match parts.as_slice() {
            ["index", user, exchange] if segment(user) && known(exchange) => {
                GridKey::Index { user, exchange }
            }
            [user, exchange, inst, side]
                if segment(user) && known(exchange) && segment(inst) && is_side(side) =>
            {
                let member = &rest[user.len() + exchange.len() + 2..];
                GridKey::Hash {
                    user,
                    exchange,
                    member,
                }
            }
            _ => GridKey::Other,
        };
    }
    if let Some((legacy, stamp)) = key.rsplit_once(":backup:") {
        return match classify(legacy.as_bytes(), exchanges) {
            GridKey::Legacy { .. } if is_stamp(stamp) => GridKey::Backup { legacy, stamp },
            _ => GridKey::Other,
        };
    }
    match key.split_once(":positions:") {
        Some((exchange, user)) if known(exchange) && segment(user) => {
            GridKey::Legacy { exchange, user }
        }
        _ => GridKey::Other,
    }
}

fn is_side(s: &str) -> bool {
    s == "long" || s == "short"
}

pub fn hash_key(user: &str, exchange: &str, member: &str) -> String {
    format!("positions:{user}:{exchange}:{member}")
}

pub fn index_key(user: &str, exchange: &str) -> String {
    format!("positions:index:{user}:{exchange}")
}

pub fn legacy_key(user: &str, exchange: &str) -> String {
    format!("{exchange}:positions:{user}")
}

pub fn backup_key(legacy: &str, stamp: &str) -> String {
    format!("{legacy}:backup:{stamp}")
}

/// [`hash_key`] of an index member as Redis holds it (any bytes).
pub fn member_hash_key(user: &str, exchange: &str, member: &[u8]) -> Vec<u8> {
    let mut key = format!("positions:{user}:{exchange}:").into_bytes();
    key.extend_from_slice(member);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex() -> Vec<String> {
        vec!["okx".into(), "binance".into()]
    }

    #[test]
    fn families() {
        let e = ex();
        assert_eq!(
            classify(b"okx:positions:7", &e),
            GridKey::Legacy {
                exchange: "okx",
                user: "7"
            }
        );
        assert_eq!(
            classify(b"okx:positions:7:backup:20261207_010203", &e),
            GridKey::Backup {
                legacy: "okx:positions:7",
                stamp: "20261207_010203"
            }
        );
        assert_eq!(
            classify(b"positions:7:okx:BTC-USDT:long", &e),
            GridKey::Hash {
                user: "7",
                exchange: "okx",
                member: "BTC-USDT:long"
            }
        );
        assert_eq!(
            classify(b"positions:index:7:okx", &e),
            GridKey::Index {
                user: "7",
                exchange: "okx"
            }
        );
        for other in [
            &b"kraken:positions:7"[..],
            b"okx:positions:a:b",
            b"okx:positions:7:backup:2026",
            b"positions:7:okx:BTC:net",
            b"okx:positions:",
        ] {
            assert_eq!(classify(other, &e), GridKey::Other, "{other:?}");
        }
        assert_eq!(classify(b"okx:positions:\xff", &e), GridKey::LegacyNotUtf8);
    }
}
