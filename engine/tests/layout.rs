//! The engine's layout rules, checked on its source text: no two modules
//! import each other (directly or round a longer cycle), `error.rs` imports
//! nothing of the crate, and Lua lives only in `.lua` files. A cycle is
//! how a "shared" module ends up knowing one migration by name; these
//! rules keep the folders readable one at a time.
//!
//! An import is a `use` of a crate path (`crate::`, `super::`, `self::`, or
//! a child module's name) or a `crate::`/`super::` path written inline. A
//! `pub use` in a parent is its interface, not a dependency of its code, so
//! it draws no arrow. Unit tests (`#[cfg(test)]` to the end of a file, and
//! `*tests.rs` files) are left out: a test may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["grid_positions", "runner"]`) -> source file.
type Modules = BTreeMap<Vec<String>, PathBuf>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("engine/src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

fn modules() -> Modules {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files
        .into_iter()
        .filter(|f| !f.to_string_lossy().ends_with("tests.rs"))
        .map(|f| (module_of(&f), f))
        .collect()
}

/// The file's code without its trailing unit tests.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("readable source");
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// `a::{b, c::{d, e}}` -> `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').expect("balanced use braces")];
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.extend(
                    expand(&inner[start..i])
                        .into_iter()
                        .map(|p| format!("{prefix}{p}")),
                );
                start = i + 1;
            }
            _ => {}
        }
    }
    if !inner[start..].trim().is_empty() {
        out.extend(
            expand(&inner[start..])
                .into_iter()
                .map(|p| format!("{prefix}{p}")),
        );
    }
    out
}

/// Every crate path the code imports, as written (`crate::run::journal::X`,
/// `super::plan::Y`, `runner::Z`).
fn imported_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut lines = code.lines();
    // Only a plain `use` at the start of a line: `pub use` is an interface.
    while let Some(line) = lines.next() {
        let Some(tree) = line.trim_start().strip_prefix("use ") else {
            continue;
        };
        let mut statement = tree.to_owned();
        while !statement.contains(';') {
            match lines.next() {
                Some(more) => statement.push_str(more),
                None => break,
            }
        }
        paths.extend(expand(statement.trim_end().trim_end_matches(';')));
    }
    for anchor in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(anchor) {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            paths.push(tail[..end].trim_end_matches(':').to_owned());
            rest = &tail[end..];
        }
    }
    paths
}

/// The module file a path lands in: its longest prefix that is a module.
fn resolve(path: &str, from: &[String], modules: &Modules) -> Option<Vec<String>> {
    let mut segments: Vec<&str> = path.split("::").map(str::trim).collect();
    let mut base: Vec<String> = match segments.first()? {
        &"crate" => Vec::new(),
        &"self" => from.to_vec(),
        &"super" => from[..from.len().checked_sub(1)?].to_vec(),
        first if modules.contains_key(&[from, &[first.to_string()]].concat()) => from.to_vec(),
        _ => return None, // std, an external crate, or an item in scope
    };
    if matches!(segments[0], "crate" | "self" | "super") {
        segments.remove(0);
    }
    while segments.first() == Some(&"super") {
        base.pop();
        segments.remove(0);
    }
    let mut best = base.clone();
    for segment in segments {
        base.push(segment.to_owned());
        if modules.contains_key(&base) {
            best = base.clone();
        }
    }
    Some(best)
}

fn import_graph(modules: &Modules) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    modules
        .iter()
        .map(|(module, file)| {
            let targets = imported_paths(&code(file))
                .iter()
                .filter_map(|p| resolve(p, module, modules))
                .filter(|target| target != module)
                .collect();
            (module.clone(), targets)
        })
        .collect()
}

/// One cycle of the graph, if it has any (depth-first search).
fn find_cycle(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    fn visit(
        node: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle: Vec<String> = stack[at..].iter().map(|m| m.join("::")).collect();
            cycle.push(node.join("::"));
            return Some(cycle);
        }
        if !done.insert(node.clone()) {
            return None;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let modules = modules();
    let graph = import_graph(&modules);
    assert!(
        graph.values().map(BTreeSet::len).sum::<usize>() > 50,
        "the import graph is suspiciously thin: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
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
    let modules = modules();
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
        for marker in ["redis.call(", "redis.pcall(", "KEYS[1]", "ARGV[1]"] {
            assert!(
                !text.contains(marker),
                "{} holds Lua ({marker}): move it to a .lua file beside it",
                file.display()
            );
        }
    }
}
