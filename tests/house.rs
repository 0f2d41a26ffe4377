//! The house flows one way: no module of `src/` imports one that imports it back,
//! directly or around a longer loop. cargo-modules' `dependencies --acyclic` answers the
//! same question but needs a rust-analyzer build; this reads the sources instead: every
//! path that starts with `crate::`, `super::`, `self::` or a child module's name, with
//! `use` groups expanded, resolved to the longest module it names. Unit-test modules
//! (`#[cfg(test)]`) are left out: tests may reach anywhere.
use crate::support::repo;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`crate::cluster::fetch`) → its source file.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            // main.rs is the binary, not a module of the library: it may import anything.
            if rel == Path::new("main") {
                continue;
            }
            parts.insert(0, "crate".into());
            out.insert(parts.join("::"), std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}

/// The source without comments, string and char literals, and unit-test modules.
fn code_only(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i)
            if text[i..]
                .trim_start_matches("#[cfg(test)]")
                .trim_start()
                .starts_with("mod ") =>
        {
            &text[..i]
        }
        _ => text,
    };
    let b = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |j| j + 2);
        } else if b[i] == b'r'
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
            && rest[1..].trim_start_matches('#').starts_with('"')
        {
            let hashes = rest[1..].len() - rest[1..].trim_start_matches('#').len();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            i += body + rest[body..].find(&close).unwrap() + close.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            i = j + 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && rest.len() > 3 && rest.as_bytes()[1] == b'\\' {
            i += 2 + rest[2..].find('\'').unwrap() + 1;
        } else if b[i] == b'\''
            && rest.chars().nth(2) == Some('\'')
            && rest.chars().nth(1).is_some()
        {
            i += 1 + rest.chars().nth(1).unwrap().len_utf8() + 1;
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn tokens(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = code.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if !(d.is_alphanumeric() || d == '_') {
                    break;
                }
                end = j + d.len_utf8();
                chars.next();
            }
            out.push(code[i..end].to_string());
        } else if c == ':' && chars.peek().is_some_and(|&(_, d)| d == ':') {
            chars.next();
            out.push("::".into());
        } else if "{},*;:".contains(c) {
            out.push(c.to_string());
        }
    }
    out
}

/// Parses the path (tree) at `toks[i]` under `prefix`; pushes each full path to `out`.
fn parse_tree(
    toks: &[String],
    mut i: usize,
    prefix: &[String],
    out: &mut Vec<Vec<String>>,
) -> usize {
    let mut path = prefix.to_vec();
    while i < toks.len() {
        let t = toks[i].as_str();
        if t == "{" {
            i += 1;
            while i < toks.len() && toks[i] != "}" {
                i = parse_tree(toks, i, &path, out);
                if toks.get(i).is_some_and(|t| t == ",") {
                    i += 1;
                }
            }
            return i + 1;
        }
        if t.chars().all(|c| c.is_alphanumeric() || c == '_') {
            if t != "self" {
                path.push(t.to_string());
            }
            i += 1;
            if toks.get(i).is_some_and(|t| t == "::") {
                i += 1;
                continue;
            }
        }
        break;
    }
    out.push(path);
    i
}

/// Module → the modules it refers to (itself excluded).
fn imports(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (module, text) in mods {
        let code = code_only(text);
        let toks = tokens(&code);
        let children: BTreeSet<&str> = toks
            .windows(3)
            .filter(|w| w[0] == "mod" && w[2] == ";")
            .map(|w| w[1].as_str())
            .collect();
        let own: Vec<String> = module.split("::").map(String::from).collect();
        let parent = own[..own.len().saturating_sub(1)].to_vec();
        let mut refs = BTreeSet::new();
        for i in 0..toks.len() {
            let starts_path =
                toks.get(i + 1).is_some_and(|t| t == "::") && (i == 0 || toks[i - 1] != "::");
            if !starts_path {
                continue;
            }
            let base = match toks[i].as_str() {
                "crate" => vec!["crate".to_string()],
                "super" => parent.clone(),
                "self" => own.clone(),
                child if children.contains(child) => {
                    let mut p = own.clone();
                    p.push(child.to_string());
                    p
                }
                _ => continue,
            };
            let mut paths = Vec::new();
            parse_tree(&toks, i + 2, &base, &mut paths);
            for path in paths {
                let target = (1..=path.len())
                    .rev()
                    .map(|k| path[..k].join("::"))
                    .find(|m| mods.contains_key(m));
                if let Some(target) = target.filter(|t| t != module) {
                    refs.insert(target);
                }
            }
        }
        graph.insert(module.clone(), refs);
    }
    graph
}

/// Every group of modules that reach each other (Tarjan's strongly connected components).
fn loops(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in &s.graph[v] {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.stack.contains(&w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                group.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                s.found.push(group);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mods = modules(&repo().join("src"));
    let graph = imports(&mods);
    let edges: usize = graph.values().map(BTreeSet::len).sum();
    // The reader must see the house, or this test could not fail.
    assert!(
        mods.len() > 20 && edges > 50,
        "{} modules, {edges} imports",
        mods.len()
    );
    assert!(graph["crate::commands::build"].contains("crate::image"));
    assert!(graph["crate::image::grub"].contains("crate::image::identity"));
    let found = loops(&graph);
    assert!(
        found.is_empty(),
        "modules that import each other (break each loop: move what both need into a \
         module below them): {found:#?}"
    );
}

/// The checker finds the loops the house used to have (cli ↔ commands, plan ↔ secrets)
/// and a parent ↔ child loop.
#[test]
fn the_loop_finder_finds_loops() {
    let mods: BTreeMap<String, String> = [
        (
            "crate::cli",
            "use crate::commands;\nfn f() { commands::build::run() }",
        ),
        ("crate::commands", "pub mod build;\nuse crate::cli::Global;"),
        (
            "crate::commands::build",
            "use crate::{cli::{BuildArgs, Global}, plan};",
        ),
        ("crate::plan", "fn f() { crate::secrets::wifi_password() }"),
        (
            "crate::secrets",
            "// crate::plan in a comment is no import\nfn f(p: &crate::plan::Plan) {}",
        ),
        (
            "crate::image",
            "pub mod grub;\nfn f() { grub::render() }\nconst S: &str = \"crate::cli\";",
        ),
        ("crate::image::grub", "use super::{Identity, ImageError};"),
        (
            "crate::seed",
            "#[cfg(test)]\nmod tests { use crate::image; }",
        ),
    ]
    .into_iter()
    .map(|(m, t)| (m.to_string(), t.to_string()))
    .collect();
    let found = loops(&imports(&mods));
    let mut sorted = found;
    sorted.sort();
    assert_eq!(
        sorted,
        [
            vec!["crate::cli", "crate::commands"],
            vec!["crate::image", "crate::image::grub"],
            vec!["crate::plan", "crate::secrets"],
        ]
    );
}
