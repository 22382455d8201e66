//! The shell's layout, as ARCHITECTURE.md promises it: no import cycle between the modules
//! of `src/`, `replication/` knowing nothing of the layers above it, and every source
//! file named in the code map.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every `.rs` file under `dir`, relative to it.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    found.sort();
    found
}

/// The module a file defines: `replication/node/mod.rs` → `["replication", "node"]`.
fn module_of(file: &Path) -> Vec<String> {
    let mut parts: Vec<String> = file.iter().map(|part| part.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// The paths a `use` tree starting at `text` names, each as identifiers
/// (`{a::b, c}` → `[a, b]`, `[c]`).
fn use_tree(text: &str) -> Vec<Vec<String>> {
    fn ident(text: &str) -> (&str, &str) {
        let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len());
        text.split_at(end)
    }
    fn tree(text: &str) -> (Vec<Vec<String>>, &str) {
        let text = text.trim_start();
        if let Some(inner) = text.strip_prefix('{') {
            let mut paths = Vec::new();
            let mut rest = inner;
            loop {
                rest = rest.trim_start();
                if let Some(after) = rest.strip_prefix('}') {
                    return (paths, after);
                }
                if rest.is_empty() {
                    return (paths, rest);
                }
                let (mut sub, after) = tree(rest);
                paths.append(&mut sub);
                rest = after.trim_start().strip_prefix(',').unwrap_or(after);
                if rest.len() == after.len() && !rest.trim_start().starts_with('}') {
                    // Not a list we understand (a glob or a rename): skip to the end.
                    return (paths, rest.split_once('}').map_or("", |(_, after)| after));
                }
            }
        }
        let (name, rest) = ident(text);
        if name.is_empty() {
            return (Vec::new(), text);
        }
        if let Some(after) = rest.strip_prefix("::") {
            let (subs, rest) = tree(after);
            let paths = if subs.is_empty() {
                vec![vec![name.to_owned()]]
            } else {
                subs.into_iter()
                    .map(|mut sub| {
                        sub.insert(0, name.to_owned());
                        sub
                    })
                    .collect()
            };
            return (paths, rest);
        }
        (vec![vec![name.to_owned()]], rest)
    }
    tree(text).0
}

/// The modules of `modules` that `file` (defining `module`) refers to through `crate::`
/// and `super::` paths, each the longest known module prefix of a path.
fn references(module: &[String], text: &str, modules: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    let mut found = BTreeSet::new();
    let code: String =
        text.lines().map(|line| line.split_once("//").map_or(line, |(code, _)| code)).collect::<Vec<_>>().join("\n");
    let mut rest = code.as_str();
    while let Some(at) = rest.find(['c', 's']) {
        let here = &rest[at..];
        let boundary = at == 0 || !rest[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        let (base, tail) = if let Some(tail) = here.strip_prefix("crate::").filter(|_| boundary) {
            (Vec::new(), tail)
        } else if here.starts_with("super::") && boundary {
            let mut base = module.to_vec();
            let mut tail = here;
            while let Some(after) = tail.strip_prefix("super::") {
                base.pop();
                tail = after;
            }
            (base, tail)
        } else {
            rest = &rest[at + 1..];
            continue;
        };
        for path in use_tree(tail) {
            let mut full = base.clone();
            full.extend(path);
            while !full.is_empty() && !modules.contains(&full) {
                full.pop();
            }
            if !full.is_empty() && full != module {
                found.insert(full);
            }
        }
        rest = &rest[at + 1..];
    }
    found
}

/// The module graph of `src/`: an edge from a module to each module it refers to, but for
/// a parent's references to its own descendants (its declarations and re-exports).
fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(ROOT).join("src");
    let files = sources(&src);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|file| module_of(file)).collect();
    let mut edges = BTreeMap::new();
    for file in &files {
        let module = module_of(file);
        let text = std::fs::read_to_string(src.join(file)).unwrap();
        let to: BTreeSet<Vec<String>> =
            references(&module, &text, &modules).into_iter().filter(|target| !target.starts_with(&module)).collect();
        edges.insert(module, to);
    }
    edges
}

/// A cycle in `edges`, if there is one.
fn find_cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|seen| seen == node) {
            let mut cycle: Vec<String> = path[start..].iter().map(|module| module.join("::")).collect();
            cycle.push(node.join("::"));
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    edges.keys().find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[test]
fn the_use_tree_reader_reads_lists_and_nested_paths() {
    assert_eq!(use_tree("a::b::C;"), vec![vec!["a", "b", "C"]]);
    assert_eq!(use_tree("{a::B, c::{d, e::F}};"), vec![vec!["a", "B"], vec!["c", "d"], vec!["c", "e", "F"]]);
    let modules: BTreeSet<Vec<String>> =
        [vec!["x".to_owned()], vec!["x".to_owned(), "y".to_owned()], vec!["z".to_owned()]].into();
    let found = references(&["x".to_owned(), "y".to_owned()], "use super::super::z::Q; // crate::x\n", &modules);
    assert_eq!(found, [vec!["z".to_owned()]].into());
    // A cycle is found, and only a cycle.
    let a = vec!["a".to_owned()];
    let b = vec!["b".to_owned()];
    let mut edges = BTreeMap::from([(a.clone(), BTreeSet::from([b.clone()])), (b.clone(), BTreeSet::new())]);
    assert_eq!(find_cycle(&edges), None);
    edges.insert(b, BTreeSet::from([a]));
    assert_eq!(find_cycle(&edges), Some(vec!["a".to_owned(), "b".to_owned(), "a".to_owned()]));
}

#[test]
fn the_shell_has_no_import_cycle() {
    let edges = graph();
    assert!(edges.len() > 50, "the graph covers src/: {} modules", edges.len());
    assert_eq!(find_cycle(&edges), None, "an import cycle between modules of src/");
}

#[test]
fn replication_knows_nothing_of_the_layers_above_it() {
    let above = ["duties", "gateway", "http", "sinks", "bench", "app", "serve", "cli", "demo", "backup"];
    for (module, targets) in graph() {
        if module.first().is_some_and(|top| top == "replication") {
            for target in targets {
                let top = target.first().map(String::as_str).unwrap_or_default();
                assert!(!above.contains(&top), "{} uses {}", module.join("::"), target.join("::"));
            }
        }
    }
}

#[test]
fn the_code_map_names_every_source_file() {
    let map = std::fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md")).unwrap();
    for (dir, files) in
        [("src", sources(&Path::new(ROOT).join("src"))), ("cluster/src", sources(&Path::new(ROOT).join("cluster/src")))]
    {
        for file in files {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let named = match name.as_str() {
                "lib.rs" | "main.rs" => true,
                "mod.rs" => {
                    let parent = file.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
                    map.contains(&format!("{parent}/"))
                }
                _ => map.contains(&name),
            };
            assert!(named, "ARCHITECTURE.md does not name {dir}/{}", file.display());
        }
    }
}
