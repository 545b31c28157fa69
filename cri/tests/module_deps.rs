//! No import circles between carrackd's modules: every top-level module of
//! `cri/src` (a file `x.rs`, a folder `x/`, or both) may use others only
//! in one direction, so that the daemon's core, the managers over it, the
//! tonic adapters over those, and the modules below them all stay apart.
//!
//! The checker reads the sources (no compiler): comments and string and
//! character literals are blanked, then every `crate::x…` path, grouped
//! (`crate::{x::A, y::{B, C}}`, over several lines) or not, is an edge to
//! the top-level module `x`, and so is a `super::…` chain that climbs to
//! the crate root (counting the folders and inline `mod … {}` blocks it
//! climbs out of). A name that is no top-level module (an item of `lib.rs`)
//! is no edge; `lib.rs` and `main.rs` (the roots) are not modules here.
//! A circle fails the test, naming each edge's first use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Edges between top-level modules, each with where it is first used.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// `text` with comments and the contents of string and character literals
/// replaced by spaces (newlines kept, so that line numbers stay).
fn code_only(text: &str) -> Vec<char> {
    let c: Vec<char> = text.chars().collect();
    let mut out = c.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for ch in out.iter_mut().take(to).skip(from) {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
    };
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(i + k).copied().unwrap_or('\0');
        let start = i;
        if at(0) == '/' && at(1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if at(0) == '/' && at(1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at_of(&c, i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at_of(&c, i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if at(0) == 'r'
            && (at(1) == '"' || at(1) == '#')
            && (i == 0 || !ident(c[i - 1]) || c[i - 1] == 'b')
        {
            let mut hashes = 0;
            let mut j = i + 1;
            while at_of(&c, j) == '#' {
                hashes += 1;
                j += 1;
            }
            if at_of(&c, j) != '"' {
                i += 1;
                continue;
            }
            j += 1;
            'raw: while j < c.len() {
                if c[j] == '"' && (1..=hashes).all(|h| at_of(&c, j + h) == '#') {
                    j += 1 + hashes;
                    break 'raw;
                }
                j += 1;
            }
            i = j;
        } else if at(0) == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if at(0) == '\'' && (at(1) == '\\' || at(2) == '\'') {
            // A character literal; `'a` without a closing quote is a lifetime.
            i += 1;
            while i < c.len() && c[i] != '\'' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else {
            i += 1;
            continue;
        }
        let end = i.min(c.len());
        blank(&mut out, start, end);
    }
    out
}

fn at_of(c: &[char], i: usize) -> char {
    c.get(i).copied().unwrap_or('\0')
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// The identifier starting at `i` (after spaces), and where it ends.
fn ident_at(c: &[char], mut i: usize) -> (String, usize) {
    while i < c.len() && c[i].is_whitespace() {
        i += 1;
    }
    let start = i;
    while i < c.len() && is_ident(c[i]) {
        i += 1;
    }
    (c[start..i].iter().collect(), i)
}

/// Whether `::` follows at `i` (after spaces); where it ends.
fn path_sep_at(c: &[char], mut i: usize) -> Option<usize> {
    while i < c.len() && c[i].is_whitespace() {
        i += 1;
    }
    (at_of(c, i) == ':' && at_of(c, i + 1) == ':').then_some(i + 2)
}

/// The first segments of the items of the group whose `{` is at `open`.
fn group_heads(c: &[char], open: usize) -> Vec<(String, usize)> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    let mut i = open;
    while i < c.len() {
        match c[i] {
            '{' => {
                depth += 1;
                if depth == 1 {
                    item_start = true;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => item_start = true,
            ch if depth == 1 && item_start && is_ident(ch) => {
                let (name, end) = ident_at(c, i);
                heads.push((name, i));
                item_start = false;
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    heads
}

/// The top-level modules a file of module depth `depth` names (a file
/// `x.rs` or `x/mod.rs` has depth 1, `x/y.rs` depth 2), each with the
/// line of its first use.
fn crate_paths(text: &str, depth: usize) -> Vec<(String, usize)> {
    let c = code_only(text);
    let line_of = |i: usize| c[..i].iter().filter(|&&ch| ch == '\n').count() + 1;
    let mut found = Vec::new();
    // Inline `mod name {` blocks open at each position: a stack of braces,
    // true for those that open a module.
    let mut braces: Vec<bool> = Vec::new();
    let mut pending_mod = false;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '{' {
            braces.push(pending_mod);
            pending_mod = false;
            i += 1;
            continue;
        }
        if ch == '}' {
            braces.pop();
            i += 1;
            continue;
        }
        if ch == ';' {
            pending_mod = false;
        }
        if !is_ident(ch) || (i > 0 && (is_ident(c[i - 1]) || c[i - 1] == '$')) {
            i += 1;
            continue;
        }
        let (word, end) = ident_at(&c, i);
        if word == "mod" {
            pending_mod = true;
            i = end;
            continue;
        }
        let preceded_by_path = i >= 2 && c[i - 1] == ':' && c[i - 2] == ':';
        let root = match word.as_str() {
            "crate" if !preceded_by_path => path_sep_at(&c, end),
            "super" if !preceded_by_path => {
                let inline = braces.iter().filter(|m| **m).count();
                let mut climbs = 0;
                let mut j = i;
                let mut after = None;
                loop {
                    let (w, e) = ident_at(&c, j);
                    match (w == "super", path_sep_at(&c, e)) {
                        (true, Some(next)) => {
                            climbs += 1;
                            j = next;
                            after = Some(next);
                        }
                        _ => break,
                    }
                }
                after.filter(|_| climbs == depth + inline)
            }
            _ => None,
        };
        if let Some(mut k) = root {
            while k < c.len() && c[k].is_whitespace() {
                k += 1;
            }
            if at_of(&c, k) == '{' {
                for (name, at) in group_heads(&c, k) {
                    found.push((name, line_of(at)));
                }
            } else {
                let (name, _) = ident_at(&c, k);
                found.push((name, line_of(k)));
            }
        }
        i = end;
    }
    found.retain(|(name, _)| !name.is_empty() && name != "self");
    found
}

/// The top-level module of the file `rel` (relative to `src`) and the
/// file's module depth; None for the crate roots.
fn module_of(rel: &Path) -> Option<(String, usize)> {
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let first = parts.first()?;
    if parts.len() == 1 && (first == "lib.rs" || first == "main.rs") {
        return None;
    }
    let depth = if parts.last().is_some_and(|l| l == "mod.rs") {
        parts.len() - 1
    } else {
        parts.len()
    };
    Some((first.trim_end_matches(".rs").to_owned(), depth))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module graph of the crate whose sources are under `src`.
fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut per_file = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(src).expect("under src");
        if let Some((module, depth)) = module_of(rel) {
            let text = std::fs::read_to_string(f).expect("read source");
            per_file.push((module, rel.to_owned(), crate_paths(&text, depth)));
        }
    }
    let modules: BTreeSet<String> = per_file.iter().map(|(m, _, _)| m.clone()).collect();
    let mut g = Graph::new();
    for (module, rel, uses) in per_file {
        let edges = g.entry(module.clone()).or_default();
        for (to, line) in uses {
            if to != module && modules.contains(&to) {
                edges
                    .entry(to)
                    .or_insert_with(|| format!("{}:{line}", rel.display()));
            }
        }
    }
    g
}

/// A circle of the graph (its modules in order, the first repeated at the
/// end), if there is one.
fn find_circle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in g.get(node).into_iter().flat_map(|e| e.keys()) {
            if let Some(c) = visit(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(g, n, &mut Vec::new(), &mut done))
}

/// The circle with where each of its edges is used.
fn describe(g: &Graph, circle: &[String]) -> String {
    circle
        .windows(2)
        .map(|w| format!("{} -> {} ({})", w[0], w[1], g[&w[0]][&w[1]]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `files` (path relative to `src`, content) under a new `src`.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, text) in files {
        let p = dir.path().join("src").join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    dir
}

#[test]
fn carrackd_modules_have_no_import_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    // The checker must have read the real tree, not an empty one.
    assert!(g.len() > 20, "modules found: {:?}", g.keys());
    for (from, to) in [
        ("server", "daemon"),
        ("sandbox", "daemon"),
        ("daemon", "store"),
    ] {
        assert!(
            g[from].contains_key(to),
            "{from} should use {to}: {:?}",
            g[from]
        );
    }
    if let Some(circle) = find_circle(&g) {
        panic!(
            "import circle between modules of cri/src:\n{}",
            describe(&g, &circle)
        );
    }
}

#[test]
fn a_circle_through_every_kind_of_path_is_found() {
    let dir = tree(&[
        (
            "lib.rs",
            "pub mod a;\npub mod b;\npub mod c;\npub fn bind() {}\n",
        ),
        ("a.rs", "use crate::b::Thing;\nuse crate::bind;\n"),
        (
            "b/mod.rs",
            "//! Uses crate::a only in prose.\nmod inner;\npub struct Thing;\n",
        ),
        ("b/inner.rs", "use super::super::c::X;\n"),
        (
            "c.rs",
            "pub struct X;\nfn f() -> &'static str { \"crate::b\" }\nuse crate::{\n    a::{self, Y},\n};\n",
        ),
    ]);
    let g = graph(&dir.path().join("src"));
    let circle = find_circle(&g).expect("the circle a -> b -> c -> a");
    assert_eq!(circle.len(), 4, "{circle:?}");
    let text = describe(&g, &circle);
    for edge in [
        "a -> b (a.rs:1)",
        "b -> c (b/inner.rs:1)",
        "c -> a (c.rs:4)",
    ] {
        assert!(text.contains(edge), "{edge} in:\n{text}");
    }
    assert!(!g["a"].contains_key("bind"), "lib.rs items are no modules");
}

#[test]
fn prose_strings_and_inner_modules_make_no_edge() {
    let dir = tree(&[
        ("lib.rs", "pub mod a;\npub mod b;\n"),
        ("a.rs", "use crate::b;\n"),
        (
            "b.rs",
            "/* crate::a */\nconst S: &str = r#\"crate::a\"#;\nconst C: char = '\"';\n\
             fn g<'a>(x: &'a str) -> &'a str { x }\n\
             #[cfg(test)]\nmod tests {\n    use super::g;\n    fn h() { let _ = \"{\"; }\n}\n",
        ),
    ]);
    let g = graph(&dir.path().join("src"));
    assert!(g["a"].contains_key("b"));
    assert!(g["b"].is_empty(), "{:?}", g["b"]);
    assert_eq!(find_circle(&g), None);
}

#[test]
fn paths_are_read_in_groups_chains_and_inline_modules() {
    let text = "use crate::{config::Config, store::{A, B}};\n\
                fn f() { crate::events::publish(); }\n\
                use super::sibling;\n\
                mod tests {\n    use super::super::other;\n    use super::local;\n}\n";
    let names: Vec<String> = crate_paths(text, 1).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["config", "store", "events", "sibling", "other"],
        "depth 1: super climbs to the root, and from inside `mod tests` super::super does"
    );
    let deeper: Vec<String> = crate_paths("use super::Daemon;\nuse super::super::store::X;\n", 2)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(deeper, ["store"]);
}
