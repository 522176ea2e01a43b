//! Imports point one way: the `use` lines of every source file (`crate::`, `super::`, `self::`
//! and a module's own children), read as arrows between files, make no circle, in the library
//! and in gateway-sim. A circle means two files that can only be understood together; the
//! shared types belong in a leaf module both import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path: `["accountdb", "store"]`; the crate root is empty.
type Module = Vec<String>;

/// Every `.rs` file under `src` (binaries aside: they are crates of their own), by module.
fn modules(src: &Path) -> BTreeMap<Module, String> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                if path != src.join("bin") {
                    dirs.push(path);
                }
                continue;
            }
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file");
                found.insert(module_of(src, &path), text);
            }
        }
    }
    found
}

fn module_of(src: &Path, file: &Path) -> Module {
    let relative: PathBuf = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Module = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The `use` statements of `text`, each whole (joined over lines), with whether it is written
/// at the top of the file (not inside an inline module or function).
fn use_statements(text: &str) -> Vec<(String, bool)> {
    let mut statements = Vec::new();
    let mut current: Option<(String, bool)> = None;
    for line in text.lines() {
        if let Some((statement, _)) = current.as_mut() {
            statement.push_str(line.trim());
        } else {
            let trimmed = line.trim_start();
            let rest = trimmed
                .strip_prefix("pub(crate) ")
                .or_else(|| trimmed.strip_prefix("pub(super) "))
                .or_else(|| trimmed.strip_prefix("pub "))
                .unwrap_or(trimmed);
            if let Some(body) = rest.strip_prefix("use ") {
                current = Some((body.to_string(), trimmed.len() == line.len()));
            }
        }
        if current.as_ref().is_some_and(|(s, _)| s.ends_with(';')) {
            let (statement, top) = current.take().expect("a statement");
            statements.push((statement.trim_end_matches(';').to_string(), top));
        }
    }
    statements
}

/// The paths a use tree names: `a::{b, c::{d, e}}` is `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or("").to_string();
        return vec![path.split("::").map(str::to_string).collect()];
    };
    let prefix: Vec<String> = tree[..open]
        .trim_end_matches("::")
        .split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(expand)
        .map(|tail| {
            let mut path = prefix.clone();
            path.extend(tail.into_iter().filter(|s| s != "self"));
            path
        })
        .collect()
}

/// The arrows between files: module → the modules its `use` lines import from.
fn arrows(modules: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut arrows: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, text) in modules {
        for (statement, top) in use_statements(text) {
            for path in expand(&statement) {
                let Some(first) = path.first() else { continue };
                let (mut base, rest) = match first.as_str() {
                    "crate" => (Module::new(), &path[1..]),
                    // `super::` at the top of a file is its parent; inside an inline module
                    // (`mod tests`) it is the file itself.
                    "super" if top => (
                        module[..module.len().saturating_sub(1)].to_vec(),
                        &path[1..],
                    ),
                    "super" | "self" => (module.clone(), &path[1..]),
                    // A module's own child, named without `self::`.
                    child => {
                        let mut own = module.clone();
                        own.push(child.to_string());
                        if !modules.contains_key(&own) {
                            continue; // another crate: std, serde, login_server...
                        }
                        (module.clone(), &path[..])
                    }
                };
                // The longest prefix that is a file: the base itself for an item of it
                // (`super::Item`).
                let mut target = modules.contains_key(&base).then(|| base.clone());
                for segment in rest {
                    base.push(segment.clone());
                    if modules.contains_key(&base) {
                        target = Some(base.clone());
                    }
                }
                if let Some(target) = target.filter(|t| t != module && !t.is_empty()) {
                    arrows.entry(module.clone()).or_default().insert(target);
                }
            }
        }
    }
    arrows
}

/// A circle of arrows, if there is one: its modules in order.
fn circle(arrows: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        at: &Module,
        arrows: &BTreeMap<Module, BTreeSet<Module>>,
        path: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(i) = path.iter().position(|m| m == at) {
            return Some(path[i..].to_vec());
        }
        if done.contains(at) {
            return None;
        }
        path.push(at.clone());
        for next in arrows.get(at).into_iter().flatten() {
            if let Some(found) = visit(next, arrows, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(at.clone());
        None
    }
    let mut done = BTreeSet::new();
    arrows
        .keys()
        .find_map(|start| visit(start, arrows, &mut Vec::new(), &mut done))
}

fn check(src: &Path) {
    let modules = modules(src);
    assert!(modules.len() > 4, "no sources under {}", src.display());
    let arrows = arrows(&modules);
    if let Some(circle) = circle(&arrows) {
        let names: Vec<String> = circle.iter().map(|m| m.join("::")).collect();
        panic!(
            "imports in {} make a circle: {} -> back to the first",
            src.display(),
            names.join(" -> ")
        );
    }
}

#[test]
fn the_library_imports_point_one_way() {
    check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
}

#[test]
fn gateway_sim_imports_point_one_way() {
    check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway-sim/src"));
}

#[test]
fn the_check_finds_a_circle_through_braces_super_and_children() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    let files = [
        ("lib.rs", "pub mod a;\npub mod c;\npub mod d;\npub mod e;\n"),
        ("a/mod.rs", "mod b;\npub use b::Thing;\n"),
        ("a/b.rs", "use crate::{c::{self, C}, d::D};\n"),
        (
            "c.rs",
            "use crate::e::E;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        ),
        ("d.rs", "use std::io;\n"),
        ("e.rs", "pub(crate) use super::a::{\n    Thing,\n};\n"),
    ];
    for (name, text) in files {
        std::fs::write(src.join(name), text).unwrap();
    }
    let arrows = arrows(&modules(src));
    let found = circle(&arrows).expect("a -> a::b -> c -> e -> a");
    assert_eq!(found.len(), 4, "{found:?}");
    // Without e's import there is none.
    std::fs::write(src.join("e.rs"), "use crate::d::D;\n").unwrap();
    assert_eq!(circle(&arrows_of(src)), None);
    // A child that takes an item of its parent, whose parent imports from the child.
    std::fs::write(src.join("a/b.rs"), "use super::Item;\n").unwrap();
    let found = circle(&arrows_of(src)).expect("a -> a::b -> a");
    assert_eq!(found.len(), 2, "{found:?}");
}

fn arrows_of(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    arrows(&modules(src))
}
