//! What the generator wrote, counted as it wrote it.

use std::collections::BTreeMap;

/// Counts for one exchange's legacy keys.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ExchangeTruth {
    pub legacy_keys: usize,
    pub well_formed_legacy_keys: usize,
    pub positions: usize,
    pub closed_positions: usize,
    pub quarantined: usize,
}

/// What was generated.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Truth {
    pub users: usize,
    /// Every `{exchange}:positions:{uid}` key = well-formed + quarantined.
    pub legacy_keys: usize,
    /// Arrays (empty included) and objects of position objects.
    pub well_formed_legacy_keys: usize,
    pub object_shaped: usize,
    pub empty_arrays: usize,
    /// Legacy keys (well-formed or not) with a TTL.
    pub legacy_with_ttl: usize,
    /// Positions in well-formed legacy keys = long + short.
    pub positions: usize,
    /// Of those, `pos` "0" (they migrate unless `--skip-closed`).
    pub closed_positions: usize,
    /// By the design's side rule (`posSide` long/short in any case; else
    /// the sign of `pos`, 0 counting as long).
    pub long_positions: usize,
    pub short_positions: usize,
    /// instIds held both long and short in one legacy key.
    pub hedged_pairs: usize,
    /// Legacy key -> reason tag: `not_json`, `not_array_or_object`,
    /// `missing_inst_id`, `collision`, `not_a_string`.
    pub quarantined: BTreeMap<String, &'static str>,
    pub per_exchange: BTreeMap<String, ExchangeTruth>,
    /// Keys no migration may touch: user hashes, pre-existing backups,
    /// unrelated keys.
    pub neighbour_keys: usize,
    pub preexisting_backups: usize,
    /// Phase 1 input: `{exchange}:user:{uid}:symbol:{symbol}:order_placed`.
    pub order_placed_keys: usize,
    /// Phase 1.5 input: `position:{uid}:{symbol}`, `user:{uid}:position:{symbol}:{side}`.
    pub position_cache_keys: usize,
    /// Every key in the keyspace.
    pub total_keys: usize,
}

impl Truth {
    /// Adds the counts of a chunk (everything but `users`, `total_keys`).
    pub(crate) fn absorb(&mut self, o: Truth) {
        self.legacy_keys += o.legacy_keys;
        self.well_formed_legacy_keys += o.well_formed_legacy_keys;
        self.object_shaped += o.object_shaped;
        self.empty_arrays += o.empty_arrays;
        self.legacy_with_ttl += o.legacy_with_ttl;
        self.positions += o.positions;
        self.closed_positions += o.closed_positions;
        self.long_positions += o.long_positions;
        self.short_positions += o.short_positions;
        self.hedged_pairs += o.hedged_pairs;
        self.quarantined.extend(o.quarantined);
        for (ex, e) in o.per_exchange {
            let m = self.per_exchange.entry(ex).or_default();
            m.legacy_keys += e.legacy_keys;
            m.well_formed_legacy_keys += e.well_formed_legacy_keys;
            m.positions += e.positions;
            m.closed_positions += e.closed_positions;
            m.quarantined += e.quarantined;
        }
        self.neighbour_keys += o.neighbour_keys;
        self.preexisting_backups += o.preexisting_backups;
        self.order_placed_keys += o.order_placed_keys;
        self.position_cache_keys += o.position_cache_keys;
    }
}
