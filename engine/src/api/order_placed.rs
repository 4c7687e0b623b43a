//! The GRID bot's order-placed flags (DESIGN §1, §3): a hash per
//! (exchange, user, symbol), grid level -> `1` (an order is placed at that
//! level) or `0`. The same operations over either layout, since Phase 1
//! moves the hash unchanged: the standard key
//! `orders:{exchange}:user:{uid}:symbol:{symbol}:order_placed` or the legacy
//! `{exchange}:user:{uid}:symbol:{symbol}:order_placed`.
//!
//! Every write is one Redis command or script, so atomic, and keeps the
//! key's TTL. `upload` sets many levels at once and leaves the others as
//! they are; `reset` sets every level present to 0 and keeps the key (its
//! levels are the grid's, and Phase 1 carries the TTL a delete would lose).
//!
//! `..._order_placed_index` and `...:orders` are standard keys of DESIGN §1
//! with no type, no legacy counterpart and no migration: they belong to the
//! bot's order bookkeeping, not to the flags. These operations neither read
//! nor write them, so old and new layouts hold the same keys for the flags.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::Script;

use super::error::{check_id, ApiError, ApiResult};
use crate::keys::OrderPlacedKey;

static RESET_FLAGS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/reset_flags.lua")));

/// Which key of an (exchange, user, symbol) holds the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagsLayout {
    /// `orders:{exchange}:user:{uid}:symbol:{symbol}:order_placed` (after Phase 1).
    Standard,
    /// `{exchange}:user:{uid}:symbol:{symbol}:order_placed` (before).
    Legacy,
}

pub struct OrderPlacedFlags<C> {
    conn: C,
    layout: FlagsLayout,
}

fn flag(placed: bool) -> &'static str {
    if placed {
        "1"
    } else {
        "0"
    }
}

fn parse_flag(key: &str, level: &str, value: String) -> ApiResult<bool> {
    match value.as_str() {
        "1" => Ok(true),
        "0" => Ok(false),
        _ => Err(ApiError::BadFlag {
            key: key.to_owned(),
            level: level.to_owned(),
            value,
        }),
    }
}

impl<C: ConnectionLike + Clone + Send> OrderPlacedFlags<C> {
    pub fn new(conn: C, layout: FlagsLayout) -> Self {
        Self { conn, layout }
    }

    /// The hash these flags live in.
    pub fn key(&self, exchange: &str, user_id: &str, symbol: &str) -> String {
        let key = OrderPlacedKey::new(exchange, user_id, symbol);
        match self.layout {
            FlagsLayout::Standard => key.target_key(),
            FlagsLayout::Legacy => key.key(),
        }
    }

    fn write_key(&self, exchange: &str, user_id: &str, symbol: &str) -> ApiResult<String> {
        check_id("exchange", exchange)?;
        check_id("user id", user_id)?;
        check_id("symbol", symbol)?;
        Ok(self.key(exchange, user_id, symbol))
    }

    /// Whether an order is placed at `level`; an absent level or key is not.
    pub async fn get(
        &self,
        exchange: &str,
        user_id: &str,
        symbol: &str,
        level: impl Display,
    ) -> ApiResult<bool> {
        let key = self.key(exchange, user_id, symbol);
        let level = level.to_string();
        let mut c = self.conn.clone();
        let value: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg(&level)
            .query_async(&mut c)
            .await
            .map_err(ApiError::redis("reading an order-placed flag"))?;
        value.map_or(Ok(false), |v| parse_flag(&key, &level, v))
    }

    /// Every level present, level -> placed.
    pub async fn get_all(
        &self,
        exchange: &str,
        user_id: &str,
        symbol: &str,
    ) -> ApiResult<BTreeMap<String, bool>> {
        let key = self.key(exchange, user_id, symbol);
        let mut c = self.conn.clone();
        let raw: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut c)
            .await
            .map_err(ApiError::redis("reading order-placed flags"))?;
        raw.into_iter()
            .map(|(level, v)| Ok((level.clone(), parse_flag(&key, &level, v)?)))
            .collect()
    }

    pub async fn set(
        &self,
        exchange: &str,
        user_id: &str,
        symbol: &str,
        level: impl Display,
        placed: bool,
    ) -> ApiResult<()> {
        self.upload(exchange, user_id, symbol, [(level, placed)])
            .await
    }

    /// Sets many levels in one command; levels not named are left as they are.
    pub async fn upload<L: Display>(
        &self,
        exchange: &str,
        user_id: &str,
        symbol: &str,
        levels: impl IntoIterator<Item = (L, bool)>,
    ) -> ApiResult<()> {
        let key = self.write_key(exchange, user_id, symbol)?;
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&key);
        let mut any = false;
        for (level, placed) in levels {
            cmd.arg(level.to_string()).arg(flag(placed));
            any = true;
        }
        if !any {
            return Ok(());
        }
        let mut c = self.conn.clone();
        cmd.query_async::<()>(&mut c)
            .await
            .map_err(ApiError::redis("writing order-placed flags"))
    }

    /// Sets every level present to 0 atomically; returns how many.
    pub async fn reset(&self, exchange: &str, user_id: &str, symbol: &str) -> ApiResult<usize> {
        let key = self.write_key(exchange, user_id, symbol)?;
        let mut c = self.conn.clone();
        RESET_FLAGS
            .key(key)
            .invoke_async(&mut c)
            .await
            .map_err(ApiError::redis("resetting order-placed flags"))
    }
}
