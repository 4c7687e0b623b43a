//! Import cycles between the modules of a crate, found on its source
//! text; shared by each crate's `tests/layout.rs`.
//!
//! An import is a `use` of a crate path (`crate::`, `super::`, `self::`, or
//! a child module's name) or a `crate::`/`super::` path written inline. A
//! `pub use` in a parent is its interface, not a dependency of its code, so
//! it draws no arrow. Unit tests (`#[cfg(test)]` to the end of a file, and
//! `*tests.rs` files) are left out: a test may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["grid_positions", "runner"]`) -> source file.
pub type Modules = BTreeMap<Vec<String>, PathBuf>;

pub fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a readable source folder") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// Every module of the crate whose source folder is `src`, but tests.
pub fn modules(src: &Path) -> Modules {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files
        .into_iter()
        .filter(|f| !f.to_string_lossy().ends_with("tests.rs"))
        .map(|f| (module_of(src, &f), f))
        .collect()
}

/// The file's code without its trailing unit tests and comment lines (a
/// doc link to a module is a pointer for the reader, not an import).
pub fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("readable source");
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => &text,
    };
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `a::{b, c::{d, e}}` -> `a::b`, `a::c::d`, `a::c::e`.
pub fn expand(tree: &str) -> Vec<String> {
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
pub fn imported_paths(code: &str) -> Vec<String> {
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
pub fn resolve(path: &str, from: &[String], modules: &Modules) -> Option<Vec<String>> {
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

pub type Graph = BTreeMap<Vec<String>, BTreeSet<Vec<String>>>;

/// Module -> the modules it imports.
pub fn import_graph(modules: &Modules) -> Graph {
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
pub fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &Vec<String>,
        graph: &Graph,
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

/// Panics naming a cycle among the modules under `src`, if there is one;
/// `min_imports` guards against a parser that silently read nothing.
pub fn assert_no_cycle(src: &Path, min_imports: usize) {
    let graph = import_graph(&modules(src));
    let imports: usize = graph.values().map(BTreeSet::len).sum();
    assert!(
        imports >= min_imports,
        "only {imports} imports read: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}
