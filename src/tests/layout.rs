//! Keeps the source layout from eroding: few files at the root of `src/`, no `#[path]`, every
//! folder saying what it may use (and using nothing else), and no import cycle between the
//! rooms of `src/` (its folders and root files), read from the code's `crate::…` paths.
//!
//! Test code (`#[cfg(test)]` modules and the files they live in) may reach across rooms and is
//! left out; so are comments and doc links.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const MAX_ROOT_FILES: usize = 5;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// One file of the module tree and whether it is compiled for tests only.
struct ModFile {
    path: PathBuf,
    test_only: bool,
}

/// Every file of the crate's module tree, from `lib.rs` down `mod x;` declarations.
fn module_files() -> Vec<ModFile> {
    let mut out = Vec::new();
    let mut todo = vec![(src().join("lib.rs"), false)];
    while let Some((path, test_only)) = todo.pop() {
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (name, child_test_only) in declared_files(&text) {
            let child = child_path(&path, &name);
            todo.push((child, test_only || child_test_only));
        }
        out.push(ModFile { path, test_only });
    }
    out
}

/// `mod x;` declarations and whether each is under `#[cfg(test)]`.
fn declared_files(text: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut cfg_test = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with("#[cfg(test)]") {
            cfg_test = true;
            continue;
        }
        if line.starts_with("#[") {
            continue;
        }
        let item = line
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("pub ");
        if let Some(name) = item.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
            out.push((name.to_string(), cfg_test));
        }
        cfg_test = false;
    }
    out
}

/// Where Rust looks for module `name` declared in `parent`.
fn child_path(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.parent().unwrap();
    let stem = parent.file_stem().unwrap().to_str().unwrap();
    let base = match stem {
        "lib" | "mod" => dir.to_path_buf(),
        _ => dir.join(stem),
    };
    let file = base.join(format!("{name}.rs"));
    match file.exists() {
        true => file,
        false => base.join(name).join("mod.rs"),
    }
}

/// The code of a file without comments and without inline `#[cfg(test)] mod … { … }` blocks.
fn code_lines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            let next = lines.peek().map(|l| l.trim_start()).unwrap_or_default();
            if next.starts_with("mod ") && next.ends_with('{') {
                let indent = line.len() - trimmed.len();
                let close = format!("{}}}", " ".repeat(indent));
                lines.by_ref().find(|l| *l == close);
            }
            continue;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push(line.split(" // ").next().unwrap_or_default());
    }
    out
}

/// The room a file belongs to: its top folder under `src/`, or its own name at the root.
fn room_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules a line names with `crate::`.
fn crate_paths(line: &str) -> impl Iterator<Item = &str> {
    line.match_indices("crate::").filter_map(move |(at, _)| {
        let rest = line.get(at + "crate::".len()..)?;
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        rest.get(..end).filter(|name| !name.is_empty())
    })
}

/// Room → rooms its non-test code uses.
fn room_graph(files: &[ModFile]) -> BTreeMap<String, BTreeSet<String>> {
    let rooms: BTreeSet<String> = files.iter().map(|f| room_of(&f.path)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files.iter().filter(|f| !f.test_only) {
        let from = room_of(&file.path);
        let text = fs::read_to_string(&file.path).unwrap();
        let used = graph.entry(from.clone()).or_default();
        for line in code_lines(&text) {
            for to in crate_paths(line).filter(|to| rooms.contains(*to) && **to != from) {
                used.insert(to.to_string());
            }
        }
    }
    graph
}

/// A cycle in `graph`, as the rooms along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        room: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|r| r == room) {
            let mut cycle = path[at..].to_vec();
            cycle.push(room.to_string());
            return Some(cycle);
        }
        if !done.insert(room.to_string()) {
            return None;
        }
        path.push(room.to_string());
        for next in graph.get(room).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|room| visit(room, graph, &mut Vec::new(), &mut done))
}

/// The rooms a folder's opening doc comment allows (`//! May use: `a`, `b`.`), or None.
fn declared_uses(mod_rs: &str) -> Option<BTreeSet<String>> {
    let line = mod_rs
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .find_map(|l| l.strip_prefix("//! May use: "))?;
    Some(
        line.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

#[test]
fn at_most_five_files_at_the_root_of_src() {
    let root: Vec<String> = fs::read_dir(src())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(root.len() <= MAX_ROOT_FILES, "files at src/: {root:?}");
}

#[test]
fn no_module_is_loaded_through_a_path_attribute() {
    let attribute = concat!("#[", "path");
    for file in module_files() {
        let text = fs::read_to_string(&file.path).unwrap();
        let found = text.lines().any(|l| l.trim_start().starts_with(attribute));
        assert!(!found, "{}", file.path.display());
    }
}

#[test]
fn every_source_file_is_part_of_the_module_tree() {
    let known: BTreeSet<PathBuf> = module_files().into_iter().map(|f| f.path).collect();
    let mut todo = vec![src()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                assert!(known.contains(&path), "{} is in no module", path.display());
            }
        }
    }
}

#[test]
fn every_folder_says_what_it_owns_and_may_use_and_uses_no_more() {
    let files = module_files();
    let graph = room_graph(&files);
    for file in files.iter().filter(|f| !f.test_only) {
        let room = room_of(&file.path);
        if file.path != src().join(&room).join("mod.rs") {
            continue;
        }
        let text = fs::read_to_string(&file.path).unwrap();
        assert!(
            text.starts_with("//!"),
            "{room}/mod.rs opens with no doc comment"
        );
        let allowed = declared_uses(&text)
            .unwrap_or_else(|| panic!("{room}/mod.rs: no `//! May use: ...` line"));
        let used = graph.get(&room).cloned().unwrap_or_default();
        let extra: Vec<&String> = used.difference(&allowed).collect();
        assert!(
            extra.is_empty(),
            "{room}/ uses {extra:?} beyond its May use line"
        );
    }
}

#[test]
fn no_import_cycle_between_folders() {
    let graph = room_graph(&module_files());
    assert!(graph.len() > 5, "rooms found: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
    let code = "use crate::a::b; // crate::z\n#[cfg(test)]\nmod tests {\n    use crate::c;\n}\n";
    let lines = code_lines(code);
    let found: Vec<&str> = lines.iter().flat_map(|l| crate_paths(l)).collect();
    assert_eq!(found, ["a"]);
}
