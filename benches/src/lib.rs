//! Holds no code: the criterion suite lives in `benches/data_api.rs` and runs
//! with `cargo bench -p keyshift-benches`. Its data and timed calls are the
//! harness's (`keyshift_harness::bench::data`), the same `keyshift bench`
//! measures, so the two never disagree about what one call is.
