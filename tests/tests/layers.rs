//! The layering the compiler cannot see by itself, checked on the sources:
//!
//! - each crate depends only on the crates its layer may import (read from
//!   the manifests: a crate can only `use` what its manifest names);
//! - no two modules of a crate import each other in a circle;
//! - no hand-written Rust file passes 1,000 lines.
//!
//! The allowed arrows are the ones `docs/ARCHITECTURE.md` opens with.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// This crate's directory as cargo gives it to the running test (a test
/// binary reused from a checkout at another path still reads this one's
/// files); the directory it was built in otherwise.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn root() -> PathBuf {
    manifest_dir().parent().unwrap().to_path_buf()
}

/// (crate directory, package name, dependencies it must not have).
/// Workspace crates it may have are listed in [`ALLOWED`]; external crates
/// named here are forbidden outright.
const FORBIDDEN_EXTERNAL: &[(&str, &[&str])] = &[
    ("proto", &["rocksdb", "raft", "roaring", "s2"]),
    ("storage", &["tonic", "prost", "raft", "tokio", "protobuf"]),
    ("query", &["tonic", "prost", "raft", "rocksdb", "protobuf"]),
    (
        "cluster/raft",
        &["tonic", "prost", "tokio", "roaring", "s2", "hyper"],
    ),
    (
        "cluster/node",
        &["tonic", "prost", "hyper", "clap", "rcgen"],
    ),
    ("cluster/server", &["clap", "indicatif", "csv"]),
    (
        "cluster/town",
        &["tonic", "prost", "rocksdb", "raft", "tokio"],
    ),
];

/// Which workspace crates each crate may depend on (normal dependencies;
/// dev-dependencies of a crate's own tests are not layering).
const ALLOWED: &[(&str, &[&str])] = &[
    ("proto", &[]),
    ("storage", &[]),
    ("query", &["hourcell-storage"]),
    ("cluster/raft", &[]),
    (
        "cluster/node",
        &["hourcell-storage", "hourcell-query", "hourcell-raft"],
    ),
    (
        "cluster/server",
        &[
            "hourcell-storage",
            "hourcell-query",
            "hourcell-raft",
            "hourcell-node",
            "hourcell-proto",
        ],
    ),
    ("cluster/town", &["hourcell-query", "hourcell-storage"]),
    (
        "cluster/cli",
        &[
            "hourcell-storage",
            "hourcell-query",
            "hourcell-node",
            "hourcell-server",
            "hourcell-proto",
            "hourcell-town",
        ],
    ),
];

fn dependencies(dir: &str) -> Option<BTreeSet<String>> {
    let text = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).ok()?;
    Some(manifest_dependencies(&text))
}

/// The normal dependencies a manifest names.
fn manifest_dependencies(text: &str) -> BTreeSet<String> {
    let t: toml::Table = text.parse().expect("manifest parses");
    let mut out = BTreeSet::new();
    if let Some(deps) = t.get("dependencies").and_then(|d| d.as_table()) {
        out.extend(deps.keys().cloned());
    }
    out
}

/// What is wrong with crate `dir` depending on `deps`.
fn layer_violations(dir: &str, deps: &BTreeSet<String>) -> Vec<String> {
    let mut wrong = Vec::new();
    let allowed = ALLOWED
        .iter()
        .find(|(d, _)| *d == dir)
        .map_or(&[][..], |(_, a)| *a);
    for d in deps.iter().filter(|d| d.starts_with("hourcell-")) {
        if !allowed.contains(&d.as_str()) {
            wrong.push(format!(
                "{dir} depends on {d}, which its layer may not import"
            ));
        }
    }
    if let Some((_, bad)) = FORBIDDEN_EXTERNAL.iter().find(|(d, _)| *d == dir) {
        for d in bad.iter() {
            if deps.contains(*d) {
                wrong.push(format!(
                    "{dir} depends on {d}, which its layer may not import"
                ));
            }
        }
    }
    wrong
}

#[test]
fn crates_depend_only_on_their_layers() {
    let mut wrong = Vec::new();
    let mut seen = 0;
    for (dir, _) in ALLOWED {
        let Some(deps) = dependencies(dir) else {
            continue;
        };
        seen += 1;
        wrong.extend(layer_violations(dir, &deps));
    }
    assert!(seen >= 7, "expected the layered crates, found {seen}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The check itself catches the arrows the issue names: each real manifest
/// with one forbidden dependency added fails it.
#[test]
fn the_layer_check_catches_a_forbidden_dependency() {
    for (dir, bad) in [
        ("storage", "hourcell-raft"),
        ("storage", "tonic"),
        ("query", "tonic"),
        ("cluster/raft", "hourcell-storage"),
        ("cluster/server", "hourcell-cli"),
        ("cluster/node", "tonic"),
    ] {
        let text = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).unwrap();
        let mut deps = manifest_dependencies(&text);
        assert!(layer_violations(dir, &deps).is_empty(), "{dir} as it is");
        deps.insert(bad.to_string());
        let wrong = layer_violations(dir, &deps);
        assert!(
            wrong.iter().any(|w| w.contains(bad)),
            "{dir} with {bad} passed the layer check"
        );
    }
}

/// Dependencies used where no source file names them: code generated at
/// build time (`proto`), and crates only asked for their features.
const USED_IMPLICITLY: &[(&str, &str)] = &[("proto", "tonic-prost"), ("proto", "prost")];

#[test]
fn every_dependency_is_used() {
    let mut unused = Vec::new();
    for (dir, _) in ALLOWED {
        let Some(deps) = dependencies(dir) else {
            continue;
        };
        let mut files = Vec::new();
        rust_files(&root().join(dir).join("src"), &mut files);
        rust_files(&root().join(dir).join("build.rs"), &mut files);
        let text: String = files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .collect();
        let build = std::fs::read_to_string(root().join(dir).join("build.rs")).unwrap_or_default();
        for d in &deps {
            let name = d.replace('-', "_");
            let used = text.contains(&format!("{name}::"))
                || text.contains(&format!("use {name}"))
                || text.contains(&format!("{name}!"))
                || build.contains(&name)
                || USED_IMPLICITLY.contains(&(*dir, d.as_str()));
            if !used {
                unused.push(format!("{dir} depends on {d} but never names it"));
            }
        }
    }
    assert!(unused.is_empty(), "{}", unused.join("\n"));
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "target" || n == ".git") {
                continue;
            }
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_hand_written_file_passes_a_thousand_lines() {
    let mut files = Vec::new();
    for top in ["proto", "storage", "query", "cluster", "benches", "tests"] {
        rust_files(&root().join(top), &mut files);
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).ok()?.lines().count();
            (n > 1_000).then(|| format!("{} has {n} lines", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "{}", long.join("\n"));
}

/// The module path of a source file under `src`, e.g. `route` for
/// `src/route.rs` or `src/route/mod.rs`, `replication::node` for
/// `src/replication/node.rs`; empty for `lib.rs` / `main.rs`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs").to_string();
    if !(stem == "mod" || (parts.is_empty() && (stem == "lib" || stem == "main"))) {
        parts.push(stem);
    }
    parts
}

/// The code of a file without comments and without its unit tests (which
/// import their parent through `super::*`).
fn code_of(text: &str) -> String {
    let body = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    body.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Paths a file names: `crate::a::b` as [a, b], `super::c` relative to the
/// file's module, `crate::{a, b::c}` as each of its members.
fn references(code: &str, module: &[String]) -> Vec<Vec<String>> {
    fn paths(rest: &str) -> Vec<Vec<String>> {
        if let Some(inner) = rest.strip_prefix('{') {
            // The members of one brace group (nested groups are cut at
            // their first segment, which is the module that matters).
            let mut depth = 0;
            let end = inner
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => return true,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    false
                })
                .map_or(inner.len(), |(i, _)| i);
            return inner[..end]
                .split(',')
                .flat_map(|m| paths(m.trim()))
                .collect();
        }
        // Segments up to the first one that does not end at a `::`.
        let mut segs: Vec<String> = Vec::new();
        for chunk in rest.split("::") {
            let id: String = chunk
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if id.is_empty() {
                break;
            }
            let whole = id.len() == chunk.len();
            segs.push(id);
            if !whole {
                break;
            }
        }
        vec![segs]
    }
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        if code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        out.extend(paths(&code[i + "crate::".len()..]));
    }
    for (i, _) in code.match_indices("super::") {
        if code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        // `super` of `a/b.rs` (module a::b) and of `a/b/mod.rs` (also a::b)
        // is `a`.
        let parent = &module[..module.len().saturating_sub(1)];
        for p in paths(&code[i + "super::".len()..]) {
            let mut full = parent.to_vec();
            full.extend(p);
            out.push(full);
        }
    }
    out
}

/// Strongly connected components with more than one member.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: order by finish time, then walk the reversed graph.
    let nodes: Vec<&String> = edges.keys().collect();
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    fn visit<'a>(
        n: &'a String,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<&'a String>,
        order: &mut Vec<&'a String>,
    ) {
        if !seen.insert(n) {
            return;
        }
        for m in edges.get(n).into_iter().flatten() {
            if let Some((k, _)) = edges.get_key_value(m) {
                visit(k, edges, seen, order);
            }
        }
        order.push(n);
    }
    for n in &nodes {
        visit(n, edges, &mut seen, &mut order);
    }
    let mut rev: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
    for (a, bs) in edges {
        for b in bs {
            if let Some((k, _)) = edges.get_key_value(b) {
                rev.entry(k).or_default().push(a);
            }
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for n in order.into_iter().rev() {
        if assigned.contains(n) {
            continue;
        }
        let mut comp = Vec::new();
        let mut stack = vec![n];
        assigned.insert(n);
        while let Some(x) = stack.pop() {
            comp.push(x.clone());
            for y in rev.get(x).into_iter().flatten() {
                if assigned.insert(*y) {
                    stack.push(y);
                }
            }
        }
        if comp.len() > 1 {
            comp.sort();
            out.push(comp);
        }
    }
    out
}

#[test]
fn modules_of_a_crate_do_not_import_each_other_in_a_circle() {
    let mut found = Vec::new();
    let mut crates = 0;
    for dir in [
        "proto",
        "storage",
        "query",
        "cluster/raft",
        "cluster/node",
        "cluster/server",
        "cluster/cli",
        "cluster/town",
    ] {
        let src = root().join(dir).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        if files.is_empty() {
            continue;
        }
        crates += 1;
        let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
        // Edges between sibling modules: a reference from a::x to a::y::z
        // is an edge a::x -> a::y among the children of a.
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in &files {
            let m = module_of(&src, f);
            if m.is_empty() {
                continue;
            }
            let code = code_of(&std::fs::read_to_string(f).unwrap());
            edges.entry(m.join("::")).or_default();
            for r in references(&code, &m) {
                // The longest module this path names.
                let Some(target) = (1..=r.len())
                    .rev()
                    .map(|k| r[..k].to_vec())
                    .find(|p| modules.contains(p))
                else {
                    continue;
                };
                let common = m.iter().zip(&target).take_while(|(a, b)| a == b).count();
                if common == m.len() || common == target.len() {
                    // A module naming its own child or its ancestor.
                    continue;
                }
                let from = m[..=common].join("::");
                let to = target[..=common].join("::");
                edges.entry(from).or_default().insert(to);
            }
        }
        for c in cycles(&edges) {
            found.push(format!("{dir}: {}", c.join(" <-> ")));
        }
    }
    assert!(crates >= 7, "checked only {crates} crates");
    assert!(found.is_empty(), "module cycles:\n{}", found.join("\n"));
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut e: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    e.insert("a".into(), ["b".to_string()].into());
    e.insert("b".into(), ["c".to_string()].into());
    e.insert("c".into(), ["a".to_string()].into());
    e.insert("d".into(), ["a".to_string()].into());
    assert_eq!(cycles(&e), vec![vec!["a", "b", "c"]]);
    e.get_mut("c").unwrap().clear();
    assert!(cycles(&e).is_empty());
}

#[test]
fn references_resolve_crate_and_super_paths() {
    let m = vec!["replication".to_string(), "node".to_string()];
    let refs = references(
        "use super::snapshot::Pairs;\nlet x = crate::metrics::Histogram::default();\nuse crate::{a::B, c};",
        &m,
    );
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        refs,
        vec![
            s(&["metrics", "Histogram", "default"]),
            s(&["a", "B"]),
            s(&["c"]),
            s(&["replication", "snapshot", "Pairs"]),
        ]
    );
}
