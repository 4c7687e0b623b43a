//! Issue 5's acceptance: every mutant engine is caught by the invariant it
//! is expected to trip, through the gate's own pipeline; and the control
//! (the production engines through the same pipeline) passes every
//! invariant, so the matrix does not simply fail everything. One matrix run
//! (process backend unless KEYSHIFT_TEST_BACKEND says otherwise) serves
//! both tests.

use std::sync::OnceLock;

use keyshift_harness::backend::BackendKind;
use keyshift_harness::report::{KillMatrix, Status};
use keyshift_mutants::{run_matrix, MatrixConfig, Mutant};

fn matrix() -> &'static KillMatrix {
    static MATRIX: OnceLock<KillMatrix> = OnceLock::new();
    MATRIX.get_or_init(|| {
        let backend = std::env::var("KEYSHIFT_TEST_BACKEND")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(BackendKind::Process);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run_matrix(&MatrixConfig::new(backend)))
    })
}

#[test]
fn every_mutant_is_caught() {
    let m = matrix();
    assert_eq!(m.mutants.len(), Mutant::ALL.len(), "every mutant ran");
    let survivors: Vec<String> = m.mutants.iter().filter_map(|r| r.survival()).collect();
    assert!(
        survivors.is_empty(),
        "{} mutant(s) not killed:\n{}",
        survivors.len(),
        survivors.join("\n")
    );
}

#[test]
fn control_passes_every_invariant() {
    let c = &matrix().control;
    assert_eq!(c.error, None, "the production engines' gate run failed");
    let failed = c.failed_invariants();
    assert!(
        failed.is_empty(),
        "the production engines fail {failed:?}: {:?}",
        c.evidence
    );
    // Every invariant a mutant is expected to trip was run and passed on
    // the control: a "kill" by an invariant that never runs proves nothing.
    for m in Mutant::ALL {
        for id in m.expected() {
            assert_eq!(
                c.results.get(*id),
                Some(&Status::Pass),
                "{id} (expected to catch {}) did not pass on the control",
                m.name()
            );
        }
    }
}
