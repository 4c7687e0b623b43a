//! What the gate's reports must hold, for the tests that run the gate.

/// The grid-positions invariants of DESIGN §4 that every gate run checks
/// and must pass, whatever the keyspace.
pub const GRID_POSITIONS_INVARIANTS: [&str; 8] = [
    "counts",
    "index",
    "fields",
    "backup",
    "ttl",
    "untouched",
    "api",
    "idempotent",
];
