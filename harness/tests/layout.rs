//! The harness's modules import no cycle either (the engine's
//! `tests/layout.rs` says why; the checker is shared with it).

#[path = "../../engine/tests/import_cycles/mod.rs"]
mod import_cycles;

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    import_cycles::assert_no_cycle(&src, 50);
}
