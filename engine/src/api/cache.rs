//! The trading cache of HYPERRSI (DESIGN §1, §3): one JSON string per
//! position at `position:{user_id}:{exchange}:{symbol}:{side}`, TTL 300 s,
//! the exchange `okx` when the caller names none.
//!
//! Only the standard keys are read or written. The legacy cache keys
//! (`position:{uid}:{symbol}`, `user:{uid}:position:{symbol}:{side}`) are not
//! migrated but deleted by Phase 1.5 ("a cache, it refills itself"), and
//! expire within 300 s anyway: a miss is the designed answer after the
//! switch, so no legacy-reading variant is modelled. Those keys carry no
//! exchange, which is why `okx` is the default here.

use redis::aio::ConnectionLike;
use serde_json::value::RawValue;

use super::error::{check_id, ApiError, ApiResult};
use crate::grid_positions::plan::Side;

/// TTL of a cached position.
pub const POSITION_CACHE_TTL_SECS: u64 = 300;
/// The exchange of a call that names none.
pub const DEFAULT_CACHE_EXCHANGE: &str = "okx";

/// `position:{user_id}:{exchange}:{symbol}:{side}`, exchange defaulting to okx.
pub fn cache_key(user_id: &str, exchange: Option<&str>, symbol: &str, side: Side) -> String {
    let exchange = exchange.unwrap_or(DEFAULT_CACHE_EXCHANGE);
    format!("position:{user_id}:{exchange}:{symbol}:{}", side.as_str())
}

pub struct TradingCache<C> {
    conn: C,
}

impl<C: ConnectionLike + Clone + Send> TradingCache<C> {
    pub fn new(conn: C) -> Self {
        Self { conn }
    }

    /// Caches `position` (JSON, stored as given) for 300 s, replacing any
    /// cached one and restarting its TTL.
    pub async fn set_position(
        &self,
        user_id: &str,
        symbol: &str,
        side: Side,
        position: &str,
        exchange: Option<&str>,
    ) -> ApiResult<()> {
        check_id("user id", user_id)?;
        check_id("symbol", symbol)?;
        check_id("exchange", exchange.unwrap_or(DEFAULT_CACHE_EXCHANGE))?;
        serde_json::from_str::<&RawValue>(position).map_err(|e| ApiError::NotJson {
            detail: e.to_string(),
        })?;
        let mut c = self.conn.clone();
        redis::cmd("SET")
            .arg(cache_key(user_id, exchange, symbol, side))
            .arg(position)
            .arg("EX")
            .arg(POSITION_CACHE_TTL_SECS)
            .query_async::<()>(&mut c)
            .await
            .map_err(ApiError::redis("caching a position"))
    }

    /// The cached JSON, or `None` on a miss.
    pub async fn get_position(
        &self,
        user_id: &str,
        symbol: &str,
        side: Side,
        exchange: Option<&str>,
    ) -> ApiResult<Option<String>> {
        let mut c = self.conn.clone();
        redis::cmd("GET")
            .arg(cache_key(user_id, exchange, symbol, side))
            .query_async(&mut c)
            .await
            .map_err(ApiError::redis("reading a cached position"))
    }

    /// Drops a cached position; `true` when one was cached.
    pub async fn remove_position(
        &self,
        user_id: &str,
        symbol: &str,
        side: Side,
        exchange: Option<&str>,
    ) -> ApiResult<bool> {
        let mut c = self.conn.clone();
        let removed: u64 = redis::cmd("DEL")
            .arg(cache_key(user_id, exchange, symbol, side))
            .query_async(&mut c)
            .await
            .map_err(ApiError::redis("removing a cached position"))?;
        Ok(removed == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_defaults_to_okx() {
        assert_eq!(
            cache_key("7", None, "BTC-USDT-SWAP", Side::Short),
            "position:7:okx:BTC-USDT-SWAP:short"
        );
        assert_eq!(
            cache_key("7", Some("bybit"), "BTCUSDT", Side::Long),
            "position:7:bybit:BTCUSDT:long"
        );
    }
}
