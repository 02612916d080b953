//! The module graph of the agent, read from its sources: no import circle between files, and
//! the data path's stages only use the stages before them (`src/lib.rs` names them in order).
//! A new circle or an upward use fails here, with the files that make it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The data path, in order. A stage may use earlier stages and the shared vocabulary only.
const STAGES: &[&[&str]] =
    &[&["capture", "dns"], &["streams"], &["protocols"], &["spans"], &["correlate"], &["export", "metrics"]];

/// Shared vocabulary every stage may use.
const SHARED: &[&str] = &["model", "clock"];

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Module path of a source file: `protocols/http1/mod.rs` -> `["protocols", "http1"]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read src").flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.meta.require_list().is_ok_and(|l| l.tokens.to_string().contains("test")))
}

/// Every `crate::…`, `super::…` and `self::…` path a file uses outside its tests, made absolute.
struct Uses<'a> {
    module: &'a [String],
    paths: Vec<Vec<String>>,
}

impl Uses<'_> {
    fn absolute(&self, segs: Vec<String>) -> Option<Vec<String>> {
        let mut it = segs.into_iter().peekable();
        let mut base: Vec<String> = match it.peek().map(String::as_str) {
            Some("crate") => {
                it.next();
                Vec::new()
            }
            Some("super") | Some("self") => self.module.to_vec(),
            _ => return None,
        };
        while let Some(s) = it.next_if(|s| s == "super" || s == "self") {
            if s == "super" {
                base.pop();
            }
        }
        base.extend(it);
        Some(base)
    }

    fn tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.push(prefix, &n.ident),
            syn::UseTree::Rename(r) => self.push(prefix, &r.ident),
            syn::UseTree::Glob(_) => self.push_path(prefix.clone()),
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.tree(prefix, t)),
        }
    }

    fn push(&mut self, prefix: &[String], ident: &syn::Ident) {
        let mut p = prefix.to_vec();
        if ident != "self" {
            p.push(ident.to_string());
        }
        self.push_path(p);
    }

    fn push_path(&mut self, p: Vec<String>) {
        if let Some(abs) = self.absolute(p) {
            self.paths.push(abs);
        }
    }
}

impl<'ast> Visit<'ast> for Uses<'_> {
    fn visit_item(&mut self, i: &'ast syn::Item) {
        let attrs = match i {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(x) => &x.attrs,
            syn::Item::Use(u) => &u.attrs,
            _ => &Vec::new(),
        };
        if is_test_only(attrs) {
            return;
        }
        if let syn::Item::Use(u) = i {
            self.tree(&mut Vec::new(), &u.tree);
            return;
        }
        syn::visit::visit_item(self, i);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.segments.len() > 1 {
            self.push_path(p.segments.iter().map(|s| s.ident.to_string()).collect());
        }
        syn::visit::visit_path(self, p);
    }
}

/// Files (as module paths) and the files each uses.
fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let root = src();
    let mut files = Vec::new();
    rs_files(&root, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .filter(|p| !p.ends_with("main.rs") && !p.ends_with("tests.rs"))
        .map(|p| (module_of(p.strip_prefix(&root).expect("under src")), p.clone()))
        .collect();
    let mut g = BTreeMap::new();
    for (module, path) in &modules {
        let text = std::fs::read_to_string(path).expect("read source");
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut uses = Uses { module, paths: Vec::new() };
        uses.visit_file(&file);
        let mut deps = BTreeSet::new();
        for p in uses.paths {
            // The deepest source file the path names (an item path ends inside a file).
            let target = (0..=p.len()).rev().map(|n| p[..n].to_vec()).find(|m| modules.contains_key(m));
            if let Some(t) = target {
                // A file's own module, and its ancestors (which declare it), are not uses.
                if !module.starts_with(&t) {
                    deps.insert(t);
                }
            }
        }
        g.insert(module.clone(), deps);
    }
    g
}

fn name(m: &[String]) -> String {
    if m.is_empty() { "crate".to_owned() } else { m.join("::") }
}

/// A circle through `start`, if any (depth-first).
fn circle(g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn dfs(
        n: &Vec<String>,
        g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        mark: &mut BTreeMap<Vec<String>, Mark>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        mark.insert(n.clone(), Mark::Open);
        stack.push(n.clone());
        for d in g.get(n).into_iter().flatten() {
            match mark.get(d).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = stack.iter().position(|s| s == d).unwrap_or(0);
                    let mut c: Vec<String> = stack[from..].iter().map(|m| name(m)).collect();
                    c.push(name(d));
                    return Some(c);
                }
                Mark::New => {
                    if let Some(c) = dfs(d, g, mark, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        mark.insert(n.clone(), Mark::Done);
        None
    }
    let mut mark = BTreeMap::new();
    for n in g.keys() {
        if mark.get(n).copied().unwrap_or(Mark::New) == Mark::New
            && let Some(c) = dfs(n, g, &mut mark, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_import_circle_between_files() {
    let g = graph();
    assert!(g.len() > 40, "the sources were read ({} files)", g.len());
    if let Some(c) = circle(&g) {
        panic!("import circle: {}", c.join(" -> "));
    }
}

#[test]
fn top_level_modules_have_no_circle() {
    let mut top: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (m, deps) in graph() {
        let Some(first) = m.first() else { continue };
        let entry = top.entry(vec![first.clone()]).or_default();
        for d in deps {
            if let Some(df) = d.first().filter(|df| *df != first) {
                entry.insert(vec![df.clone()]);
            }
        }
    }
    if let Some(c) = circle(&top) {
        panic!("import circle between modules: {}", c.join(" -> "));
    }
}

#[test]
fn stages_only_use_earlier_stages() {
    let rank = |m: &str| STAGES.iter().position(|s| s.contains(&m));
    let mut wrong = Vec::new();
    for (m, deps) in graph() {
        let Some(from) = m.first().and_then(|f| rank(f).map(|r| (f.clone(), r))) else { continue };
        for d in deps {
            let Some(to) = d.first() else { continue };
            if *to == from.0 || SHARED.contains(&to.as_str()) {
                continue;
            }
            match rank(to) {
                Some(r) if r < from.1 || (r == from.1 && STAGES[r].len() > 1) => {}
                _ => wrong.push(format!("{} uses {}", name(&m), name(&d))),
            }
        }
    }
    assert!(wrong.is_empty(), "the data path's stages use only earlier stages:\n{}", wrong.join("\n"));
}

#[test]
fn the_checker_finds_a_circle() {
    let m = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
    let mut g = BTreeMap::new();
    g.insert(m("a"), BTreeSet::from([m("b")]));
    g.insert(m("b"), BTreeSet::from([m("c")]));
    g.insert(m("c"), BTreeSet::new());
    assert_eq!(circle(&g), None);
    g.insert(m("c"), BTreeSet::from([m("a")]));
    assert_eq!(circle(&g), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    let uses = Uses { module: &m("protocols::http1"), paths: Vec::new() };
    assert_eq!(uses.absolute(m("super::exchange::Exchange")), Some(m("protocols::exchange::Exchange")));
    assert_eq!(uses.absolute(m("crate::spans::to_span")), Some(m("spans::to_span")));
    assert_eq!(uses.absolute(m("std::mem")), None);
}
