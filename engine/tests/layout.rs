//! The engine's layout rules, checked on its source text: no two modules
//! import each other (directly or round a longer cycle), `error.rs` imports
//! nothing of the crate, and Lua lives only in `.lua` files. A cycle is
//! how a "shared" module ends up knowing one migration by name; these
//! rules keep the folders readable one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

mod import_cycles;
use import_cycles::*;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    assert_no_cycle(&src(), 50);
}

#[test]
fn the_cycle_finder_finds_a_planted_cycle() {
    let m = |s: &str| vec![s.to_owned()];
    let mut graph = BTreeMap::new();
    graph.insert(m("a"), BTreeSet::from([m("b")]));
    graph.insert(m("b"), BTreeSet::from([m("c")]));
    graph.insert(m("c"), BTreeSet::from([m("a")]));
    assert_eq!(find_cycle(&graph).expect("a cycle").len(), 4);
    graph.insert(m("c"), BTreeSet::new());
    assert_eq!(find_cycle(&graph), None);
}

#[test]
fn paths_resolve_to_the_module_that_holds_them() {
    let modules = modules(&src());
    let from = vec!["grid_positions".to_owned(), "runner".to_owned()];
    let resolve = |p| resolve(p, &from, &modules).map(|m| m.join("::"));
    assert_eq!(
        resolve("crate::run::journal::Outcome").as_deref(),
        Some("run::journal")
    );
    assert_eq!(
        resolve("super::MIGRATION").as_deref(),
        Some("grid_positions")
    );
    assert_eq!(resolve("std::time::Instant"), None);
    assert_eq!(
        expand("crate::run::{journal::{self, X}, lock}"),
        [
            "crate::run::journal::self",
            "crate::run::journal::X",
            "crate::run::lock"
        ]
    );
}

#[test]
fn error_rs_imports_nothing_of_the_crate() {
    let text = code(&src().join("error.rs"));
    let inside: Vec<String> = imported_paths(&text)
        .into_iter()
        .filter(|p| p.starts_with("crate::") || p.starts_with("super::"))
        .collect();
    assert!(inside.is_empty(), "error.rs imports {inside:?}");
}

#[test]
fn lua_lives_only_in_lua_files() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable source");
        for marker in ["redis.call(", "redis.pcall("] {
            assert!(
                !text.contains(marker),
                "{} holds Lua ({marker}): move it to a .lua file beside it",
                file.display()
            );
        }
    }
}
