//! The Phase 2 key grammar of DESIGN §1 as plain functions over strings.
//!
//! Ids that would make a key ambiguous (an empty id, or one containing `:`)
//! are not ours to interpret: such keys classify as unknown and are never
//! written, which is the safe reading of "never touch a key you did not fully
//! understand".

pub mod schema;

/// The exchanges of the trading platform, in the order DESIGN §1 lists them.
pub const DEFAULT_EXCHANGES: [&str; 5] = ["okx", "binance", "bitget", "upbit", "bybit"];

/// TTL of a Phase 2 backup key: 7 days.
pub const BACKUP_TTL_SECS: u64 = 7 * 24 * 3600;

/// Hash fields the migration adds to every position hash.
pub const META_MIGRATED_AT: &str = "migrated_at";
pub const META_MIGRATED_FROM: &str = "migrated_from";

/// A legacy grid positions key, `{exchange}:positions:{user_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegacyPositionsKey {
    pub exchange: String,
    pub user_id: String,
}

/// A well-formed id segment: non-empty and free of the `:` separator.
pub fn is_id_segment(s: &str) -> bool {
    !s.is_empty() && !s.contains(':')
}

impl LegacyPositionsKey {
    pub fn new(exchange: &str, user_id: &str) -> Self {
        Self {
            exchange: exchange.to_owned(),
            user_id: user_id.to_owned(),
        }
    }

    /// Parses `{exchange}:positions:{user_id}` for one of `exchanges`.
    /// Backup keys (`...:backup:...`) and keys whose user id holds a `:`
    /// never parse, so they are never migrated.
    pub fn parse<S: AsRef<str>>(key: &str, exchanges: &[S]) -> Option<Self> {
        let (exchange, rest) = key.split_once(":positions:")?;
        if !exchanges.iter().any(|e| e.as_ref() == exchange) || !is_id_segment(exchange) {
            return None;
        }
        is_id_segment(rest).then(|| Self {
            exchange: exchange.to_owned(),
            user_id: rest.to_owned(),
        })
    }

    pub fn key(&self) -> String {
        format!("{}:positions:{}", self.exchange, self.user_id)
    }

    /// `{legacy key}:backup:{stamp}`.
    pub fn backup_key(&self, stamp: &str) -> String {
        format!("{}:backup:{}", self.key(), stamp)
    }

    /// `positions:index:{user_id}:{exchange}`.
    pub fn index_key(&self) -> String {
        format!("positions:index:{}:{}", self.user_id, self.exchange)
    }

    /// `positions:{user_id}:{exchange}:{inst_id}:{side}`.
    pub fn position_key(&self, index_member: &str) -> String {
        format!(
            "positions:{}:{}:{}",
            self.user_id, self.exchange, index_member
        )
    }
}

/// A backup key `{exchange}:positions:{user_id}:backup:{stamp}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupKey {
    pub legacy: LegacyPositionsKey,
    pub stamp: String,
}

impl BackupKey {
    pub fn parse<S: AsRef<str>>(key: &str, exchanges: &[S]) -> Option<Self> {
        let (legacy, stamp) = key.rsplit_once(":backup:")?;
        let legacy = LegacyPositionsKey::parse(legacy, exchanges)?;
        is_backup_stamp(stamp).then(|| Self {
            legacy,
            stamp: stamp.to_owned(),
        })
    }
}

/// Why a key that the Phase 2 SCAN pattern (`*:positions:*`) matched is
/// not a legacy positions key, for the report; `None` for a legacy key and
/// for a backup (a run leaves one per user: listing them is noise).
pub fn not_legacy_reason<S: AsRef<str>>(key: &str, exchanges: &[S]) -> Option<String> {
    if LegacyPositionsKey::parse(key, exchanges).is_some()
        || BackupKey::parse(key, exchanges).is_some()
    {
        return None;
    }
    let Some((exchange, user_id)) = key.split_once(":positions:") else {
        return Some("not of the form {exchange}:positions:{user_id}".into());
    };
    let configured = |e: &str| exchanges.iter().any(|x| x.as_ref() == e);
    Some(if !configured(exchange) {
        if exchanges
            .iter()
            .any(|x| x.as_ref().eq_ignore_ascii_case(exchange))
        {
            format!("exchange {exchange:?} is not lower case, as keys are")
        } else {
            format!("{exchange:?} is not a configured exchange")
        }
    } else if user_id.is_empty() {
        "the user id is empty".into()
    } else {
        "the user id holds ':', which makes the key ambiguous".into()
    })
}

/// A key name that is not UTF-8, shown with its bytes escaped (`\xff`).
pub fn escape_key(name: &[u8]) -> String {
    name.escape_ascii().to_string()
}

/// `YYYYMMDD_HHMMSS`.
pub fn is_backup_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 15
        && b[8] == b'_'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 8 || c.is_ascii_digit())
}

/// A position hash key `positions:{user_id}:{exchange}:{inst_id}:{side}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PositionHashKey {
    pub user_id: String,
    pub exchange: String,
    pub inst_id: String,
    pub side: String,
}

impl PositionHashKey {
    pub fn parse<S: AsRef<str>>(key: &str, exchanges: &[S]) -> Option<Self> {
        let rest = key.strip_prefix("positions:")?;
        let parts: Vec<&str> = rest.split(':').collect();
        let [user_id, exchange, inst_id, side] = parts.as_slice() else {
            return None;
        };
        let known = exchanges.iter().any(|e| e.as_ref() == *exchange);
        (known
            && [user_id, exchange, inst_id].iter().all(|s| !s.is_empty())
            && (*side == "long" || *side == "short"))
            .then(|| Self {
                user_id: (*user_id).to_owned(),
                exchange: (*exchange).to_owned(),
                inst_id: (*inst_id).to_owned(),
                side: (*side).to_owned(),
            })
    }

    pub fn index_key(&self) -> String {
        format!("positions:index:{}:{}", self.user_id, self.exchange)
    }

    pub fn index_member(&self) -> String {
        format!("{}:{}", self.inst_id, self.side)
    }
}

/// An index set key `positions:index:{user_id}:{exchange}`.
pub fn parse_index_key<S: AsRef<str>>(key: &str, exchanges: &[S]) -> Option<(String, String)> {
    let rest = key.strip_prefix("positions:index:")?;
    let (user_id, exchange) = rest.split_once(':')?;
    (is_id_segment(user_id)
        && is_id_segment(exchange)
        && exchanges.iter().any(|e| e.as_ref() == exchange))
    .then(|| (user_id.to_owned(), exchange.to_owned()))
}

/// The prefix of every "migrating" marker (see [`migrating_sentinel`]).
pub const MIGRATING_SENTINEL_PREFIX: &str = "keyshift-migrating@";

/// The index member a cluster migration run adds to a user's index set
/// while that user is mid-migration: "the legacy key is still the truth".
/// It holds no `:`, so it can never be a `{instId}:{side}` member (those
/// always hold one); a `:` or `%` in the run id is percent-encoded so the
/// marker keeps that property for any id, and distinct ids stay distinct.
pub fn migrating_sentinel(run_id: &str) -> String {
    let mut s = String::with_capacity(MIGRATING_SENTINEL_PREFIX.len() + run_id.len());
    s.push_str(MIGRATING_SENTINEL_PREFIX);
    for c in run_id.chars() {
        match c {
            ':' => s.push_str("%3A"),
            '%' => s.push_str("%25"),
            c => s.push(c),
        }
    }
    s
}

/// Whether an index member is a "migrating" marker of any run: readers
/// skip it, and a route check treats its set as mid-migration.
pub fn is_migrating_sentinel(member: &str) -> bool {
    member.starts_with(MIGRATING_SENTINEL_PREFIX) && !member.contains(':')
}

/// A legacy grid order-placed flags key (Phase 1),
/// `{exchange}:user:{user_id}:symbol:{symbol}:order_placed`; its target is
/// the same key under `orders:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderPlacedKey {
    pub exchange: String,
    pub user_id: String,
    pub symbol: String,
}

/// The prefix Phase 1 puts in front of a legacy order-placed key.
pub const ORDER_PLACED_TARGET_PREFIX: &str = "orders:";

impl OrderPlacedKey {
    pub fn new(exchange: &str, user_id: &str, symbol: &str) -> Self {
        Self {
            exchange: exchange.to_owned(),
            user_id: user_id.to_owned(),
            symbol: symbol.to_owned(),
        }
    }

    /// Parses a legacy key for one of `exchanges`. Targets (`orders:...`),
    /// `..._index` keys and ids holding `:` never parse.
    pub fn parse<S: AsRef<str>>(key: &str, exchanges: &[S]) -> Option<Self> {
        let parts: Vec<&str> = key.split(':').collect();
        let [exchange, "user", user_id, "symbol", symbol, "order_placed"] = parts.as_slice() else {
            return None;
        };
        (exchanges.iter().any(|e| e.as_ref() == *exchange)
            && [exchange, user_id, symbol].iter().all(|s| !s.is_empty()))
        .then(|| Self::new(exchange, user_id, symbol))
    }

    /// Parses a target key `orders:{exchange}:user:{uid}:symbol:{symbol}:order_placed`.
    pub fn parse_target<S: AsRef<str>>(key: &str, exchanges: &[S]) -> Option<Self> {
        Self::parse(key.strip_prefix(ORDER_PLACED_TARGET_PREFIX)?, exchanges)
    }

    pub fn key(&self) -> String {
        format!(
            "{}:user:{}:symbol:{}:order_placed",
            self.exchange, self.user_id, self.symbol
        )
    }

    pub fn target_key(&self) -> String {
        format!("{ORDER_PLACED_TARGET_PREFIX}{}", self.key())
    }

    /// The SCAN MATCH pattern of the legacy keys of one exchange (escaped),
    /// or of every exchange (`None`); keys it matches must still `parse`.
    pub fn scan_pattern(exchange: Option<&str>) -> String {
        let exchange = exchange.map_or_else(|| "*".to_owned(), escape_glob);
        format!("{exchange}:user:*:symbol:*:order_placed")
    }
}

/// Escapes Redis glob metacharacters so an id matches only itself in a SCAN
/// MATCH pattern.
pub fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EX: [&str; 5] = DEFAULT_EXCHANGES;

    #[test]
    fn migrating_sentinel_is_never_a_position_member() {
        let s = migrating_sentinel("grid-positions-20261128_090000-0a1b");
        assert_eq!(s, "keyshift-migrating@grid-positions-20261128_090000-0a1b");
        assert!(is_migrating_sentinel(&s));
        // An id with a `:` is encoded, so the marker still has none.
        let odd = migrating_sentinel("a:b%c");
        assert_eq!(odd, "keyshift-migrating@a%3Ab%25c");
        assert!(is_migrating_sentinel(&odd));
        assert_ne!(migrating_sentinel("a:b"), migrating_sentinel("a%3Ab"));
        // Position members (always `{instId}:{side}`) never read as one,
        // even one whose instId starts like the marker.
        assert!(!is_migrating_sentinel("BTC-USDT-SWAP:long"));
        assert!(!is_migrating_sentinel("keyshift-migrating@x:long"));
        assert!(!is_migrating_sentinel("keyshift-migrating"));
    }

    #[test]
    fn legacy_key_parses_known_exchange_only() {
        let k = LegacyPositionsKey::parse("okx:positions:42", &EX).unwrap();
        assert_eq!((k.exchange.as_str(), k.user_id.as_str()), ("okx", "42"));
        assert_eq!(k.key(), "okx:positions:42");
        assert!(LegacyPositionsKey::parse("kraken:positions:42", &EX).is_none());
        assert!(LegacyPositionsKey::parse("okx:positions:", &EX).is_none());
    }

    #[test]
    fn backup_keys_are_never_legacy_keys() {
        let key = "okx:positions:42:backup:20250101_000000";
        assert!(LegacyPositionsKey::parse(key, &EX).is_none());
        let b = BackupKey::parse(key, &EX).unwrap();
        assert_eq!(b.legacy.user_id, "42");
        assert_eq!(b.stamp, "20250101_000000");
        assert!(BackupKey::parse("okx:positions:42:backup:today", &EX).is_none());
    }

    #[test]
    fn keys_the_scan_matched_but_are_not_legacy_say_why() {
        let ex = ["okx", "binance"];
        assert_eq!(not_legacy_reason("okx:positions:7", &ex), None);
        assert_eq!(
            not_legacy_reason("okx:positions:7:backup:20261128_010203", &ex),
            None
        );
        let why = |k| not_legacy_reason(k, &ex).unwrap();
        assert!(why("okx:positions:a:b").contains("holds ':'"));
        assert!(why("okx:positions:").contains("empty"));
        assert!(why("OKX:positions:upper").contains("not lower case"));
        assert!(why("kraken:positions:1").contains("not a configured exchange"));
        assert_eq!(
            escape_key(b"okx:positions:\xff\xfebin"),
            r"okx:positions:\xff\xfebin"
        );
    }

    #[test]
    fn user_id_with_separator_is_unknown() {
        assert!(LegacyPositionsKey::parse("okx:positions:a:b", &EX).is_none());
    }

    #[test]
    fn new_keys_follow_design() {
        let k = LegacyPositionsKey::parse("bybit:positions:u*1", &EX).unwrap();
        assert_eq!(k.index_key(), "positions:index:u*1:bybit");
        assert_eq!(
            k.position_key("BTC-USDT-SWAP:long"),
            "positions:u*1:bybit:BTC-USDT-SWAP:long"
        );
        assert_eq!(
            k.backup_key("20261128_010203"),
            "bybit:positions:u*1:backup:20261128_010203"
        );
    }

    #[test]
    fn position_hash_key_round_trips() {
        let k = PositionHashKey::parse("positions:7:okx:ETH-USDT-SWAP:short", &EX).unwrap();
        assert_eq!(k.index_key(), "positions:index:7:okx");
        assert_eq!(k.index_member(), "ETH-USDT-SWAP:short");
        assert!(PositionHashKey::parse("positions:index:7:okx", &EX).is_none());
        assert!(PositionHashKey::parse("positions:7:okx:ETH:net", &EX).is_none());
        assert_eq!(
            parse_index_key("positions:index:7:okx", &EX),
            Some(("7".into(), "okx".into()))
        );
    }

    #[test]
    fn order_placed_key_parses_legacy_only_and_maps_to_orders() {
        let k = OrderPlacedKey::parse("okx:user:7:symbol:BTC-USDT:order_placed", &EX).unwrap();
        assert_eq!(k, OrderPlacedKey::new("okx", "7", "BTC-USDT"));
        assert_eq!(
            k.target_key(),
            "orders:okx:user:7:symbol:BTC-USDT:order_placed"
        );
        assert_eq!(OrderPlacedKey::parse_target(&k.target_key(), &EX), Some(k));
        for not_legacy in [
            "orders:okx:user:7:symbol:BTC:order_placed",
            "okx:user:7:symbol:BTC:order_placed_index",
            "kraken:user:7:symbol:BTC:order_placed",
            "okx:user::symbol:BTC:order_placed",
            "okx:user:a:b:symbol:BTC:order_placed",
        ] {
            assert!(
                OrderPlacedKey::parse(not_legacy, &EX).is_none(),
                "{not_legacy}"
            );
        }
        assert_eq!(
            OrderPlacedKey::scan_pattern(Some("o*x")),
            r"o\*x:user:*:symbol:*:order_placed"
        );
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(escape_glob(r"a*b?c[d]e\f"), r"a\*b\?c\[d\]e\\f");
        assert_eq!(escape_glob("plain"), "plain");
    }
}
