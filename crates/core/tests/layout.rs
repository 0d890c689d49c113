//! The module map at the top of `src/lib.rs` is the code's: every `.rs` file under `src/` is in
//! it and nothing else, and no module reaches itself through `crate::` paths, neither a file
//! nor a top-level group (`net`, `delivery`, ... or a file beside `lib.rs`). A folder's own
//! submodules are its parts: what its `mod.rs` takes from them (by bare paths, not scanned)
//! does not count, what they take from it (`super::`) does.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, as a path relative to `src/` with `/` separators.
fn rust_files(dir: &Path, found: &mut BTreeSet<String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(src()).unwrap();
            found.insert(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// The files the map in `lib.rs`'s doc comment names: a line's first word is a folder (ending
/// in `/`) or a file, indented two spaces per level of folders.
fn mapped_files() -> BTreeSet<String> {
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    let doc: Vec<&str> = lib.lines().map_while(|l| l.strip_prefix("//!")).collect();
    let start = doc
        .iter()
        .position(|l| l.trim() == "```text")
        .expect("a ```text block in lib.rs's doc");
    let mut folders: Vec<String> = Vec::new();
    let mut files = BTreeSet::new();
    for line in doc[start + 1..].iter().take_while(|l| l.trim() != "```") {
        let line = line.strip_prefix(' ').unwrap_or(line);
        let indent = line.len() - line.trim_start().len();
        assert_eq!(indent % 2, 0, "the map indents by two spaces: {line:?}");
        let word = line
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("an empty line in the map"));
        folders.truncate(indent / 2);
        assert_eq!(folders.len(), indent / 2, "{word} is indented deeper than its folder");
        if let Some(folder) = word.strip_suffix('/') {
            folders.push(folder.to_string());
        } else {
            assert!(word.ends_with(".rs"), "the map names files and folders only: {word:?}");
            let mut path = folders.join("/");
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(word);
            assert!(files.insert(path.clone()), "{path} is in the map twice");
            assert!(
                line.trim_start()[word.len()..].trim().len() > 3,
                "{path} says in the map what it holds"
            );
        }
    }
    files
}

#[test]
fn the_module_map_in_lib_rs_names_exactly_the_files_under_src() {
    let mut on_disk = BTreeSet::new();
    rust_files(&src(), &mut on_disk);
    let mapped = mapped_files();
    let missing: Vec<_> = on_disk.difference(&mapped).collect();
    let gone: Vec<_> = mapped.difference(&on_disk).collect();
    assert!(missing.is_empty(), "files not in lib.rs's map: {missing:?}");
    assert!(gone.is_empty(), "lib.rs's map names files that do not exist: {gone:?}");
}

/// A file's module path: `net/server.rs` is `net::server`, `net/mod.rs` is `net`.
fn module_of(file: &str) -> String {
    let path = file.trim_end_matches(".rs");
    let path = path.strip_suffix("/mod").unwrap_or(path);
    if path == "lib" {
        String::new()
    } else {
        path.replace('/', "::")
    }
}

/// The modules a file's code names through `crate::` (and `super::`) paths, comments left out;
/// a path names the longest module it starts with. The log macros are `log`'s.
fn uses(file: &str, own: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let text = fs::read_to_string(src().join(file)).unwrap();
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let parent: Vec<&str> = own.split("::").collect();
    let parent = &parent[..parent.len().saturating_sub(1)];
    let mut found = BTreeSet::new();
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (anchor, base) in [("crate::", Vec::new()), ("super::", parent.to_vec())] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(anchor) {
            let before = rest[..i].chars().last();
            rest = &rest[i + anchor.len()..];
            if before.is_some_and(|c| is_word(c) || c == '$') {
                continue;
            }
            let names: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                group.split(',').map(|n| n.trim().to_string()).collect()
            } else {
                let end = rest.find(|c: char| !(is_word(c) || c == ':')).unwrap_or(rest.len());
                vec![rest[..end].trim_end_matches(':').to_string()]
            };
            for name in names {
                let mut parts: Vec<&str> = base.clone();
                parts.extend(name.split("::").filter(|p| !p.is_empty()));
                let target = (1..=parts.len())
                    .rev()
                    .map(|n| parts[..n].join("::"))
                    .find(|m| modules.contains(m))
                    .or_else(|| {
                        ["warn", "info", "debug", "log_at"]
                            .contains(&parts.first().copied().unwrap_or(""))
                            .then(|| "log".to_string())
                    });
                if let Some(target) = target {
                    if target != own {
                        found.insert(target);
                    }
                }
            }
        }
    }
    found
}

/// A circle in `edges`, if there is one, as the modules along it.
fn circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, edges, done, path) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges.keys().find_map(|n| visit(n, edges, &mut done, &mut Vec::new()))
}

#[test]
fn no_module_reaches_itself_through_crate_paths() {
    let mut files = BTreeSet::new();
    rust_files(&src(), &mut files);
    let files: Vec<String> = files.into_iter().filter(|f| !f.starts_with("bin/")).collect();
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).filter(|m| !m.is_empty()).collect();
    let mut by_file = BTreeMap::new();
    let mut by_group: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let group = |m: &str| m.split("::").next().unwrap().to_string();
    for file in &files {
        let own = module_of(file);
        let used = uses(file, &own, &modules);
        for target in &used {
            if !own.is_empty() && group(&own) != group(target) {
                by_group.entry(group(&own)).or_default().insert(group(target));
            }
        }
        by_file.insert(own, used);
    }
    assert!(
        by_file["net::server"].contains("net::connection"),
        "the scan finds crate:: paths"
    );
    assert!(by_group["net"].contains("delivery"), "the scan finds groups");
    assert_eq!(circle(&by_file), None, "a circle of files");
    assert_eq!(circle(&by_group), None, "a circle of top-level modules");
}
