//! No crate of the workspace has modules that import each other in a circle: within each
//! crate, the modules' `use` declarations and `crate::…` paths (re-exports with `pub use` and
//! test modules left out) form an acyclic graph. A cycle means two modules that cannot be
//! understood, or moved into a crate of their own, one without the other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path inside its crate (`["arch", "jumprelu"]`; the crate root is empty).
type Module = Vec<String>;

/// Every `.rs` file under `src`, by module path.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut found = BTreeMap::new();
    let mut folders = vec![src.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(src).unwrap().with_extension("");
                let mut module: Module = relative
                    .iter()
                    .map(|part| part.to_string_lossy().into_owned())
                    .collect();
                if matches!(
                    module.last().map(String::as_str),
                    Some("mod" | "lib" | "main")
                ) {
                    module.pop();
                }
                found.insert(module, path);
            }
        }
    }
    found
}

/// The source without its test module and line comments.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a `use` tree names (`a::{b, c::d}` → `a::b`, `a::c::d`), braces expanded.
fn use_paths(tree: &str) -> Vec<String> {
    let tree: String = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap_or_default().to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut items, mut depth, mut current) = (Vec::new(), 0, String::new());
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items
        .iter()
        .map(|item| item.trim())
        .filter(|item| !item.is_empty())
        .flat_map(|item| use_paths(&format!("{prefix}{item}")))
        .collect()
}

/// The module `path` (`crate::…`, `super::…`, `self::…`) names from `here`, if one of `known`.
fn resolve(path: &str, here: &Module, known: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    let mut parts = path.split("::").map(str::trim).filter(|p| !p.is_empty());
    let mut base: Module = match parts.next()? {
        "crate" => Vec::new(),
        "self" => here.clone(),
        "super" => here[..here.len().saturating_sub(1)].to_vec(),
        _ => return None,
    };
    let mut rest: Vec<&str> = parts.collect();
    while rest.first() == Some(&"super") {
        base.pop();
        rest.remove(0);
    }
    base.extend(rest.iter().map(|p| p.to_string()));
    (0..=base.len())
        .rev()
        .map(|n| base[..n].to_vec())
        .find(|candidate| known.contains_key(candidate))
}

/// Each module's imports of the crate's other modules (the crate root, which only declares and
/// re-exports, left out as a target).
fn imports(known: &BTreeMap<Module, PathBuf>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut graph = BTreeMap::new();
    for (module, path) in known {
        let code = code_of(path);
        let mut targets = BTreeSet::new();
        let mut paths = Vec::new();
        // Each `use` declaration (not `pub use`) from its line's start to its `;`.
        let mut offset = 0;
        for line in code.split_inclusive('\n') {
            let start = offset + (line.len() - line.trim_start().len());
            offset += line.len();
            if line.trim_start().starts_with("use ")
                && let Some(end) = code[start..].find(';')
            {
                paths.extend(use_paths(&code[start + "use ".len()..start + end]));
            }
        }
        for (at, _) in code.match_indices("crate::") {
            let path: String = code[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            paths.push(path);
        }
        for path in paths {
            if let Some(target) = resolve(&path, module, known)
                && !target.is_empty()
                && &target != module
            {
                targets.insert(target);
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// A cycle of `graph`, if it has one (depth-first search).
fn cycle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        node: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        stack: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(at) = stack.iter().position(|m| m == node) {
            return Some(stack[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, stack, done) {
                return Some(found);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn workspace_sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .unwrap()
        .map(|entry| entry.unwrap().path().join("src"))
        .filter(|src| src.is_dir())
        .collect();
    sources.push(root.join("xtask/src"));
    sources.sort();
    sources
}

#[test]
fn no_crate_has_modules_that_import_each_other_in_a_circle() {
    let sources = workspace_sources();
    assert!(sources.len() >= 10, "{sources:?}");
    for src in sources {
        let known = modules(&src);
        if let Some(found) = cycle(&imports(&known)) {
            let names: Vec<String> = found.iter().map(|m| m.join("::")).collect();
            panic!("{}: {} import each other", src.display(), names.join(" → "));
        }
    }
}

#[test]
fn the_check_finds_a_cycle_through_super_and_braces() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("arch")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod arch;\nmod resample;\n").unwrap();
    std::fs::write(
        src.join("arch/mod.rs"),
        "mod jumprelu;\npub use jumprelu::Sae;\nuse crate::resample::{self, Request};\n",
    )
    .unwrap();
    std::fs::write(
        src.join("arch/jumprelu.rs"),
        "use super::super::resample::Request;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("resample.rs"),
        "fn f(a: &crate::arch::Affine) {}\n",
    )
    .unwrap();
    let found = cycle(&imports(&modules(src))).expect("arch ↔ resample is a cycle");
    let names: BTreeSet<String> = found.iter().map(|m| m.join("::")).collect();
    assert_eq!(
        names,
        BTreeSet::from(["arch".to_string(), "resample".to_string()])
    );

    // Without resample's use of arch, the imports form no cycle (a `pub use` is not one).
    std::fs::write(src.join("resample.rs"), "pub struct Request;\n").unwrap();
    assert_eq!(cycle(&imports(&modules(src))), None);
}
