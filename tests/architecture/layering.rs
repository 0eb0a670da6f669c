//! The workspace's layering, checked: every crate sits in a layer and depends only on lower
//! layers; capability crates do not depend on each other; nothing above the engine layer names
//! wasmtime; and the files of one crate never import each other in a circle.
//!
//! The crate graph comes from `cargo metadata`; the module graph from each crate's `crate::`
//! and `super::` paths (a directory module is one node, its files are its inside).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The layers, lowest first. A crate may depend on crates of lower layers only.
const LAYERS: &[Layer] = &[
    Layer {
        name: "formats",
        crates: &["wasmcell-oci"],
        engine: false,
        capabilities: false,
    },
    Layer {
        name: "app models and distribution",
        crates: &[
            "wasmcell-spin",
            "wasmcell-slight",
            "wasmcell-registry",
            "wasmcell-workload",
        ],
        engine: false,
        capabilities: false,
    },
    Layer {
        name: "kernel",
        crates: &["wasmcell-runtime", "wasmcell-stores"],
        engine: true,
        capabilities: false,
    },
    Layer {
        name: "capabilities",
        crates: &[
            "wasmcell-wasmedge",
            "wasmcell-spin-host",
            "wasmcell-slight-host",
        ],
        engine: true,
        capabilities: true,
    },
    Layer {
        name: "engine",
        crates: &["wasmcell-engine"],
        engine: true,
        capabilities: false,
    },
    Layer {
        name: "sandbox",
        crates: &["wasmcell-sandbox"],
        engine: false,
        capabilities: false,
    },
    Layer {
        name: "shim",
        crates: &["wasmcell-shim"],
        engine: false,
        capabilities: false,
    },
    Layer {
        name: "command line",
        crates: &["wasmcell"],
        engine: false,
        capabilities: false,
    },
    Layer {
        name: "tests and benchmarks",
        crates: &["wasmcell-e2e", "wasmcell-bench", "wasmcell-architecture"],
        engine: false,
        capabilities: false,
    },
];

struct Layer {
    name: &'static str,
    crates: &'static [&'static str],
    /// Whether its crates may use wasmtime directly (only the engine layer's may).
    engine: bool,
    /// Whether its crates are capabilities, which must not depend on each other.
    capabilities: bool,
}

fn layer_of(krate: &str) -> Option<(usize, &'static Layer)> {
    LAYERS
        .iter()
        .enumerate()
        .find(|(_, layer)| layer.crates.contains(&krate))
}

/// A workspace crate: its name, its normal and build dependencies, and its source root.
struct Crate {
    name: String,
    dependencies: Vec<String>,
    src_root: PathBuf,
}

fn workspace() -> Vec<Crate> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|package| {
            let dependencies = package["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|dep| dep["kind"].as_str() != Some("dev"))
                .map(|dep| dep["name"].as_str().unwrap().to_owned())
                .collect();
            let src_root = package["targets"]
                .as_array()
                .unwrap()
                .iter()
                .find(|target| {
                    let kinds = target["kind"].as_array().unwrap();
                    kinds.iter().any(|k| k == "lib")
                        || kinds.iter().any(|k| k == "bin") && target["name"] == package["name"]
                })
                .or_else(|| package["targets"].as_array().unwrap().first())
                .map(|target| PathBuf::from(target["src_path"].as_str().unwrap()))
                .unwrap();
            Crate {
                name: package["name"].as_str().unwrap().to_owned(),
                dependencies,
                src_root,
            }
        })
        .collect()
}

#[test]
fn every_crate_depends_only_on_lower_layers() {
    let crates = workspace();
    let mut wrong = Vec::new();
    for krate in &crates {
        let Some((rank, layer)) = layer_of(&krate.name) else {
            wrong.push(format!("{} is in no layer: add it to LAYERS", krate.name));
            continue;
        };
        for dep in &krate.dependencies {
            if dep.starts_with("wasmtime") && !layer.engine {
                wrong.push(format!(
                    "{} ({}) uses {dep}: only the engine layer knows wasmtime",
                    krate.name, layer.name
                ));
            }
            let Some((dep_rank, dep_layer)) = layer_of(dep) else {
                continue;
            };
            if dep_rank > rank {
                wrong.push(format!(
                    "{} ({}) depends on {dep} ({}), a higher layer",
                    krate.name, layer.name, dep_layer.name
                ));
            } else if dep_rank == rank && layer.capabilities {
                wrong.push(format!(
                    "{} depends on {dep}: capabilities do not depend on each other",
                    krate.name
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_crate_has_a_module_circle() {
    let mut found = Vec::new();
    for krate in workspace() {
        for circle in circles(&module_graph(&krate.src_root)) {
            found.push(format!("{}: {}", krate.name, circle.join(" -> ")));
        }
    }
    assert!(
        found.is_empty(),
        "module circles (modules of one crate that import each other round): {found:#?}"
    );
}

/// Each top-level module of the crate rooted at `root` (a file `x.rs` or a directory `x/`), and
/// the top-level modules it names through `crate::`.
fn module_graph(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let src = root.parent().unwrap();
    let root_text = std::fs::read_to_string(root).unwrap();
    let modules: BTreeSet<String> = declared_modules(&root_text);
    // Names the crate root re-exports (`pub use module::{A, B}`), resolved to their module.
    let reexports = reexports(&root_text, &modules);
    let mut graph = BTreeMap::new();
    for module in &modules {
        let mut edges = BTreeSet::new();
        for file in module_files(src, module) {
            let text = strip_comments(&std::fs::read_to_string(&file).unwrap());
            for path in crate_paths(&text, depth_below_root(src, &file)) {
                let first = path.split("::").next().unwrap_or_default();
                let target = if modules.contains(first) {
                    Some(first.to_owned())
                } else {
                    reexports.get(first).cloned()
                };
                if let Some(target) = target.filter(|t| t != module) {
                    edges.insert(target);
                }
            }
        }
        graph.insert(module.clone(), edges);
    }
    graph
}

/// The modules a crate root declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`).
fn declared_modules(root: &str) -> BTreeSet<String> {
    strip_comments(root)
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub(crate) mod ")
                .or_else(|| line.strip_prefix("pub mod "))
                .or_else(|| line.strip_prefix("mod "))?;
            rest.strip_suffix(';').map(str::to_owned)
        })
        .collect()
}

/// `pub use module::{A, B};` and `pub use module::A;` at the crate root: A → module.
fn reexports(root: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let text = strip_comments(root);
    for statement in text.split(';') {
        let Some(rest) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = rest.split_once("::") else {
            continue;
        };
        if !modules.contains(module) {
            continue;
        }
        let items = items.trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            let name = item.rsplit(" as ").next().unwrap_or(item);
            let name = name.rsplit("::").next().unwrap_or(name).trim();
            if !name.is_empty() {
                names.insert(name.to_owned(), module.to_owned());
            }
        }
    }
    names
}

/// The files of top-level module `module`: `module.rs` and everything under `module/`.
fn module_files(src: &Path, module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let file = src.join(format!("{module}.rs"));
    if file.is_file() {
        files.push(file);
    }
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// How many directories `file` is below the crate's source root (0 for `src/x.rs`).
fn depth_below_root(src: &Path, file: &Path) -> usize {
    let relative = file.strip_prefix(src).unwrap();
    let depth = relative.components().count() - 1;
    // `x/mod.rs` is module `x` itself, like `x.rs`.
    if file.file_name().is_some_and(|n| n == "mod.rs") {
        depth.saturating_sub(1)
    } else {
        depth
    }
}

/// The paths below the crate root that `text` names: `crate::a::b` as `a::b`, and a `super::`
/// chain that climbs to the root from a file `depth` directories down, counting the inline
/// modules it is written in (`super::` in a file's `mod tests` names the file's own module).
fn crate_paths(text: &str, depth: usize) -> Vec<String> {
    let mut paths = Vec::new();
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    // For each open brace, whether it opened an inline `mod name {`, and whether that module
    // is `#[cfg(test)]` (tests are to modules what dev-dependencies are to crates: not part
    // of the graph).
    let mut braces: Vec<(bool, bool)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i = after_string(bytes, i);
                continue;
            }
            b'\'' if bytes.get(i + 2) == Some(&b'\'') || bytes.get(i + 1) == Some(&b'\\') => {
                // A char literal ('{', '\n'); a lifetime has no closing quote there.
                i += bytes[i + 1..]
                    .iter()
                    .position(|&b| b == b'\'')
                    .map_or(1, |p| p + 2);
                continue;
            }
            b'{' => {
                let before = text[..i].trim_end();
                let name_start =
                    before.trim_end_matches(|c: char| c.is_ascii_alphanumeric() || c == '_');
                let keyword = name_start.trim_end();
                let opens_mod = name_start.len() < before.len() && keyword.ends_with("mod");
                let tests = opens_mod
                    && keyword
                        .trim_end_matches("mod")
                        .trim_end()
                        .trim_end_matches("pub")
                        .trim_end()
                        .ends_with("#[cfg(test)]");
                braces.push((opens_mod, tests));
            }
            b'}' => {
                braces.pop();
            }
            _ => {}
        }
        if braces.iter().any(|(_, tests)| *tests) {
            i += 1;
            continue;
        }
        let starts_word = i == 0 || !is_ident(bytes[i - 1]);
        if starts_word && text[i..].starts_with("crate::") {
            paths.push(path_at(&text[i + "crate::".len()..]));
            i += "crate::".len();
            continue;
        }
        if starts_word && text[i..].starts_with("super::") {
            let mut rest = &text[i..];
            let mut climbs = 0;
            while let Some(after) = rest.strip_prefix("super::") {
                climbs += 1;
                rest = after;
            }
            let inline = braces.iter().filter(|(opens_mod, _)| *opens_mod).count();
            // From `depth + inline` modules down, one more climb than that reaches the root.
            if climbs > depth + inline {
                paths.push(path_at(rest));
            }
            i += climbs * "super::".len();
            continue;
        }
        i += 1;
    }
    paths
}

/// The index after the string literal that starts at `start` (a `"`, raw strings' `r#"`
/// included: their `#`s are left behind as harmless characters).
fn after_string(bytes: &[u8], start: usize) -> usize {
    let raw = start > 0 && (bytes[start - 1] == b'r' || bytes[start - 1] == b'#');
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if !raw => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// The path at the start of `text`, up to the first character that is not part of one; a
/// `{` group counts as its first segment's parent.
fn path_at(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
        .collect::<String>()
        .trim_end_matches(':')
        .to_owned()
}

/// `text` without `//` comments (doc comments included: an intra-doc link is not an import).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The circles of `graph`: its strongly connected components of more than one module, each
/// sorted (Tarjan's algorithm).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, node: &'a str) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            self.on_stack.insert(node);
            for next in self.graph.get(node).into_iter().flatten() {
                let next = next.as_str();
                if !self.graph.contains_key(next) {
                    continue;
                }
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    component.push(top.to_owned());
                    if top == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !tarjan.index.contains_key(node.as_str()) {
            tarjan.visit(node);
        }
    }
    tarjan.found
}

/// The check itself is checked: a circle through a directory module and a file is found;
/// `super::` in a file's inline module names that file's module; an intra-doc link and a test
/// module's imports are not imports.
#[test]
fn the_check_finds_a_circle_and_only_a_circle() {
    let dir = std::env::temp_dir().join(format!("wasmcell-layering-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("b")).unwrap();
    let write = |path: &str, text: &str| std::fs::write(src.join(path), text).unwrap();
    write(
        "lib.rs",
        "pub mod a;\npub mod b;\nmod c;\npub use c::Thing;\n",
    );
    write(
        "a.rs",
        "use crate::b::B;\nfn f() { let _ = '{'; }\nmod inline { use super::c; }\n",
    );
    write("b/mod.rs", "mod inner;\n");
    write(
        "b/inner.rs",
        "use super::super::a::A;\nuse super::Sibling;\n",
    );
    write(
        "c.rs",
        "/// See [`crate::a`].\npub struct Thing;\n#[cfg(test)]\nmod tests { use crate::a; }\n",
    );
    let graph = module_graph(&src.join("lib.rs"));
    assert_eq!(circles(&graph), vec![vec!["a".to_owned(), "b".to_owned()]]);
    assert!(graph["c"].is_empty(), "{graph:?}");
    assert_eq!(graph["a"], BTreeSet::from(["b".to_owned()]));

    write("b/inner.rs", "use crate::Thing;\n");
    let graph = module_graph(&src.join("lib.rs"));
    assert!(circles(&graph).is_empty(), "{graph:?}");
    assert_eq!(graph["b"], BTreeSet::from(["c".to_owned()]));
    std::fs::remove_dir_all(dir).unwrap();
}
