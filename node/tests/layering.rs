//! The node's modules form layers whose imports point one way (docs/architecture.md,
//! "Inside a node"): this test reads `node/src`, resolves every `crate::` and `super::`
//! path to the module (file) that defines it, and fails on
//! - an import from a top-level module into a higher layer than its own, and
//! - any import circle among the node's files (what `cargo modules dependencies
//!   --acyclic` reports), e.g. `raft/store.rs` → `raft/recovery.rs` → `raft/store.rs`.
//!
//! Code under `#[cfg(test)]` at the end of a file (its unit tests) is not counted, as
//! cargo-modules does not count it: tests may look anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules from the bottom layer up. A module may import from its own layer and
/// from any lower layer, never from a higher one (circles within a layer are the other
/// test's).
const LAYERS: &[&[&str]] = &[
    &[
        "clock",
        "latency",
        "config",
        "config_props",
        "damage_props",
        "notify",
        "audit",
    ],
    &["net", "chunks"],
    &["cache"],
    &["raft"],
    &["replicate"],
    &["telemetry"],
    &["risk"],
    &["metrics"],
    &["api"],
    &["server"],
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `raft/store.rs` → ["raft", "store"]; `raft/mod.rs` → ["raft"]; `lib.rs` → [].
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let file = parts.pop().unwrap_or_default();
    let stem = file.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("reading node/src") {
        let p = e.expect("reading node/src").path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments, string literals and its trailing unit tests.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            // a char literal such as '{' (lifetimes have no closing quote)
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Every path in `code` that starts with `crate::` or `super::`, brace groups expanded:
/// `crate::raft::{store::decode, NodeId}` → `crate::raft::store::decode`, `crate::raft::NodeId`.
fn paths_in(code: &str) -> Vec<String> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b':');
        if boundary
            && (code[i..].starts_with("crate::") || code[i..].starts_with("super::") || code[i..].starts_with("self::"))
        {
            let (paths, end) = parse_path(code, i);
            out.extend(paths);
            i = end;
        } else if boundary && (b[i].is_ascii_lowercase() || b[i] == b'_') {
            // A bare `name::...`: a child module of this one when one has that name (checked
            // in `resolve`), otherwise an external crate or a type.
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            if code[i..].starts_with("::") && !code[s..].starts_with("r#") {
                let (paths, end) = parse_path(code, s);
                out.extend(paths.into_iter().map(|p| format!("self::{p}")));
                i = end;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Parses the path starting at `start`; returns its expansions and where it ended.
fn parse_path(code: &str, start: usize) -> (Vec<String>, usize) {
    let b = code.as_bytes();
    let mut i = start;
    let mut prefix = String::new();
    loop {
        let s = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        prefix.push_str(&code[s..i]);
        if code[i..].starts_with("::{") {
            i += 3;
            let mut paths = Vec::new();
            loop {
                while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    return (paths, i + 1);
                }
                let (inner, end) = parse_path(code, i);
                for p in inner {
                    paths.push(format!("{prefix}::{p}"));
                }
                if end <= i {
                    return (paths, i + 1);
                }
                i = end;
                // skip ` as Alias`
                while i < b.len() && b[i] != b',' && b[i] != b'}' && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                while i < b.len() && b[i].is_ascii_whitespace() {
                    i += 1;
                }
                if code[i..].starts_with("as ") {
                    i += 3;
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                        i += 1;
                    }
                }
            }
        } else if code[i..].starts_with("::") && i + 2 < b.len() && (b[i + 2].is_ascii_alphabetic() || b[i + 2] == b'_')
        {
            prefix.push_str("::");
            i += 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

/// The module a path names or defines its last item in: the longest known module prefix.
fn resolve(from: &[String], path: &str, modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = match segs.first() {
        Some(&"crate") => {
            segs.remove(0);
            Vec::new()
        }
        Some(&"self") => {
            segs.remove(0);
            from.to_vec()
        }
        Some(&"super") => {
            let mut m = from.to_vec();
            while segs.first() == Some(&"super") {
                segs.remove(0);
                m.pop()?;
            }
            m
        }
        _ => return None,
    };
    let mut found = base.clone();
    let bare = path.starts_with("self::");
    for s in segs {
        if s == "self" {
            continue;
        }
        base.push(s.to_string());
        if modules.contains(&base) {
            found = base.clone();
        } else {
            break;
        }
    }
    // A bare path that names no child module is not a path into this crate.
    if bare && found == from {
        return None;
    }
    Some(found)
}

fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = src_dir();
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files
        .iter()
        .map(|f| module_of(f.strip_prefix(&src).expect("under src")))
        .collect();
    let mut g: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        if rel == Path::new("main.rs") {
            continue; // the binary: it may use everything
        }
        let from = module_of(rel);
        let text = std::fs::read_to_string(f).expect("reading a source file");
        let edges = g.entry(from.clone()).or_default();
        for p in paths_in(&code_of(&text)) {
            if let Some(to) = resolve(&from, &p, &modules) {
                if to != from && !to.is_empty() {
                    edges.insert(to);
                }
            }
        }
    }
    g
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

#[test]
fn no_module_imports_from_a_higher_layer() {
    let layer_of = |m: &[String]| {
        LAYERS
            .iter()
            .position(|l| m.first().is_some_and(|top| l.contains(&top.as_str())))
    };
    let mut wrong = Vec::new();
    for (from, tos) in graph() {
        let Some(lf) = layer_of(&from) else {
            assert!(
                from.is_empty(),
                "module {} is in no layer of this test's LAYERS",
                name(&from)
            );
            continue;
        };
        for to in tos {
            let Some(lt) = layer_of(&to) else { continue };
            if lt > lf {
                wrong.push(format!("{} -> {}", name(&from), name(&to)));
            }
        }
    }
    assert!(wrong.is_empty(), "imports pointing up a layer:\n{}", wrong.join("\n"));
}

#[test]
fn no_import_circle_among_the_node_modules() {
    let g = graph();
    // Tarjan's strongly connected components, iteratively small enough to recurse.
    struct T<'a> {
        g: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on: BTreeSet<&'a Vec<String>>,
        next: usize,
        circles: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a Vec<String>) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        if let Some(tos) = t.g.get(v) {
            for w in tos {
                let Some((w, _)) = t.g.get_key_value(w) else { continue };
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(name(w));
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.circles.push(comp);
            }
        }
    }
    let mut t = T {
        g: &g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        circles: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    let report: Vec<String> = t
        .circles
        .iter()
        .map(|c| {
            let members: BTreeSet<&String> = c.iter().collect();
            let edges: Vec<String> = g
                .iter()
                .filter(|(f, _)| members.contains(&name(f)))
                .flat_map(|(f, tos)| {
                    tos.iter()
                        .filter(|t| members.contains(&name(t)))
                        .map(move |t| format!("  {} -> {}", name(f), name(t)))
                })
                .collect();
            format!("circle of {}:\n{}", c.join(", "), edges.join("\n"))
        })
        .collect();
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
fn the_checker_sees_imports_and_circles() {
    // The parser itself, on a made-up file: brace groups, `super`, aliases, comments.
    let code = code_of(
        "use crate::raft::{store::{decode, encode}, NodeId as N};\n// crate::api::x\nuse super::plan;\nlet s = \"crate::risk\";\n",
    );
    let paths = paths_in(&code);
    assert_eq!(
        paths,
        [
            "crate::raft::store::decode",
            "crate::raft::store::encode",
            "crate::raft::NodeId",
            "super::plan"
        ]
    );
    let modules: BTreeSet<Vec<String>> = [
        vec!["raft".to_string()],
        vec!["raft".into(), "store".into()],
        vec!["replicate".into()],
        vec!["replicate".into(), "plan".into()],
    ]
    .into();
    let from = vec!["replicate".to_string(), "queue".to_string()];
    assert_eq!(
        resolve(&from, "crate::raft::store::decode", &modules),
        Some(vec!["raft".into(), "store".into()])
    );
    assert_eq!(
        resolve(&from, "crate::raft::NodeId", &modules),
        Some(vec!["raft".into()])
    );
    assert_eq!(
        resolve(&from, "super::plan", &modules),
        Some(vec!["replicate".into(), "plan".into()])
    );
    assert_eq!(
        resolve(&from, "super::DataPlane", &modules),
        Some(vec!["replicate".into()])
    );
    // And the graph of the real tree has the edges we know are there.
    let g = graph();
    assert!(g[&vec!["server".to_string()]].contains(&vec!["raft".to_string()]));
    assert!(g[&vec!["replicate".to_string(), "queue".to_string()]]
        .contains(&vec!["replicate".to_string(), "plan".to_string()]));
}
