//! A Kubernetes node's containerd, taught wasmcell's runtimes: the CRI runtime entries kubelet's
//! RuntimeClass handlers name, and the RuntimeClass manifests that name them.
//!
//! The entries are added to containerd's main config file, in place, rather than through a
//! drop-in file it imports: containerd 1.x merges an imported file by replacing whole plugin
//! sections, so a drop-in holding only `plugins."io.containerd.grpc.v1.cri".containerd.runtimes.*`
//! would throw away the node's own CRI settings (its sandbox image, CNI directories, even the
//! runc runtime its `default_runtime_name` names: every pod would then fail). Seen with
//! containerd 1.7.24's `config dump`. The edit keeps the rest of the file byte for byte
//! (comments and layout too), adds nothing that is there already, never replaces a runtime of
//! the same name that is not ours, and is undone exactly by [`remove_runtimes`].

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use toml_edit::{DocumentMut, Item, Table, value};
use wasmcell_shim::Runtime;

/// What happened to one handler's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Added now.
    Added,
    /// Ours, there already.
    Present,
    /// Removed now.
    Removed,
    /// A runtime of that name that is not ours (another `runtime_type`): left as it is.
    Foreign {
        /// Its runtime type.
        runtime_type: String,
    },
    /// Not there (nothing to remove).
    Absent,
}

/// A config file's edit: the new text, and each handler's entry.
pub struct Edit {
    /// The config after the edit.
    pub text: String,
    /// Handler name and what happened to its entry.
    pub entries: Vec<(&'static str, Entry)>,
}

/// Adds a CRI runtime entry (`runtime_type = "io.containerd.<name>.vN"`) for each of
/// [`Runtime::KUBERNETES`] to containerd config `text` (empty: a new file).
pub fn add_runtimes(text: &str) -> Result<Edit> {
    let mut doc = parse(text)?;
    if text.trim().is_empty() {
        doc["version"] = value(2);
    }
    let runtimes = runtimes_table(&mut doc)?;
    let mut entries = Vec::new();
    for (handler, runtime) in Runtime::KUBERNETES {
        let entry = match runtime_type_of(runtimes, handler)? {
            None => {
                let mut table = Table::new();
                table["runtime_type"] = value(runtime.id());
                runtimes.insert(handler, Item::Table(table));
                Entry::Added
            }
            Some(existing) if existing == runtime.id() => Entry::Present,
            Some(existing) => Entry::Foreign {
                runtime_type: existing,
            },
        };
        entries.push((handler, entry));
    }
    Ok(Edit {
        text: doc.to_string(),
        entries,
    })
}

/// Removes the entries [`add_runtimes`] adds (only those whose `runtime_type` is ours).
pub fn remove_runtimes(text: &str) -> Result<Edit> {
    let mut doc = parse(text)?;
    let runtimes = runtimes_table(&mut doc)?;
    let mut entries = Vec::new();
    for (handler, runtime) in Runtime::KUBERNETES {
        let entry = match runtime_type_of(runtimes, handler)? {
            None => Entry::Absent,
            Some(existing) if existing == runtime.id() => {
                runtimes.remove(handler);
                Entry::Removed
            }
            Some(existing) => Entry::Foreign {
                runtime_type: existing,
            },
        };
        entries.push((handler, entry));
    }
    Ok(Edit {
        text: doc.to_string(),
        entries,
    })
}

fn parse(text: &str) -> Result<DocumentMut> {
    text.parse::<DocumentMut>()
        .context("the containerd config is not valid TOML")
}

/// The table CRI's runtimes live in, for the config's version, made (as implicit tables, which
/// add no headers) where missing: `version = 2` is containerd 1.x's, 3 is 2.x's, and a file
/// without a version is version 1 to containerd 1.x.
fn runtimes_table(doc: &mut DocumentMut) -> Result<&mut Table> {
    let version = match doc.get("version") {
        None => 1,
        Some(item) => item
            .as_integer()
            .context("the containerd config's `version` is not a number")?,
    };
    let plugin = match version {
        1 => "cri",
        2 => "io.containerd.grpc.v1.cri",
        3 => "io.containerd.cri.v1.runtime",
        other => bail!("containerd config version {other} is not one wasmcell knows (1, 2 or 3)"),
    };
    let mut table = doc.as_table_mut();
    for key in ["plugins", plugin, "containerd", "runtimes"] {
        if !table.contains_key(key) {
            let mut made = Table::new();
            made.set_implicit(true);
            table.insert(key, Item::Table(made));
        }
        table = table[key]
            .as_table_mut()
            .with_context(|| format!("`{key}` in the containerd config is not a table"))?;
    }
    Ok(table)
}

/// The `runtime_type` of runtime `name`, if it has an entry.
fn runtime_type_of(runtimes: &Table, name: &str) -> Result<Option<String>> {
    let Some(entry) = runtimes.get(name) else {
        return Ok(None);
    };
    let runtime_type = entry
        .get("runtime_type")
        .and_then(|t| t.as_str())
        .with_context(|| {
            format!("CRI runtime `{name}` in the containerd config has no runtime_type")
        })?;
    Ok(Some(runtime_type.to_owned()))
}

/// The label [`runtime_classes`] select nodes by.
pub const NODE_LABEL: &str = "wasmcell/runtimes";

/// A RuntimeClass per handler, for `kubectl apply -f -`, each scheduling its pods onto nodes
/// labelled `wasmcell/runtimes=installed`.
pub fn runtime_classes() -> String {
    let mut yaml = format!(
        "# RuntimeClasses for wasmcell's runtimes. Label each node that has them installed:\n\
         #   kubectl label node NODE {NODE_LABEL}=installed\n\
         # then give pods `runtimeClassName: wasmtime` (or wasmedge, spin, slight).\n"
    );
    for (handler, _) in Runtime::KUBERNETES {
        let _ = write!(
            yaml,
            "---\napiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: {handler}\nhandler: {handler}\nscheduling:\n  nodeSelector:\n    {NODE_LABEL}: installed\n"
        );
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = r#"# the node's own settings
version = 2
root = "/var/lib/containerd"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.example/pause:3.9"   # kept
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#;

    #[test]
    fn adds_each_handler_once_keeping_the_file_and_removes_exactly_that() {
        let added = add_runtimes(USER).unwrap();
        assert!(added.entries.iter().all(|(_, e)| *e == Entry::Added));
        assert!(added.text.starts_with(USER), "{}", added.text);
        let doc: toml_edit::DocumentMut = added.text.parse().unwrap();
        let runtimes = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
        assert_eq!(
            runtimes["wasmtime"]["runtime_type"].as_str(),
            Some("io.containerd.wasmtime.v1")
        );
        assert_eq!(
            runtimes["spin"]["runtime_type"].as_str(),
            Some("io.containerd.spin.v2")
        );
        assert_eq!(
            runtimes["runc"]["runtime_type"].as_str(),
            Some("io.containerd.runc.v2")
        );

        let again = add_runtimes(&added.text).unwrap();
        assert_eq!(again.text, added.text);
        assert!(again.entries.iter().all(|(_, e)| *e == Entry::Present));

        let removed = remove_runtimes(&added.text).unwrap();
        assert_eq!(removed.text, USER);
        assert!(removed.entries.iter().all(|(_, e)| *e == Entry::Removed));
    }

    #[test]
    fn a_runtime_of_the_same_name_that_is_not_ours_is_left_alone() {
        let spinkube = format!(
            "{USER}    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.spin]\n      runtime_type = \"io.containerd.spin-kube.v2\"\n"
        );
        let added = add_runtimes(&spinkube).unwrap();
        let spin = added.entries.iter().find(|(h, _)| *h == "spin").unwrap();
        assert_eq!(
            spin.1,
            Entry::Foreign {
                runtime_type: "io.containerd.spin-kube.v2".into()
            }
        );
        assert!(added.text.contains("io.containerd.spin-kube.v2"));
        let removed = remove_runtimes(&added.text).unwrap();
        assert_eq!(removed.text, spinkube);
    }

    #[test]
    fn the_cri_plugin_is_named_as_the_config_version_names_it() {
        let new = add_runtimes("").unwrap().text;
        assert!(new.starts_with("version = 2\n"), "{new}");
        assert!(
            new.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]"),
            "{new}"
        );
        let v3 = add_runtimes("version = 3\n").unwrap().text;
        assert!(
            v3.contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.slight]"),
            "{v3}"
        );
        let v1 = add_runtimes("root = \"/var/lib/containerd\"\n")
            .unwrap()
            .text;
        assert!(
            v1.contains("[plugins.cri.containerd.runtimes.wasmedge]"),
            "{v1}"
        );
        assert!(add_runtimes("version = 9\n").is_err());
        assert!(add_runtimes("plugins = 3\n").is_err());
    }

    #[test]
    fn runtime_classes_name_each_handler() {
        let yaml = runtime_classes();
        for handler in ["wasmtime", "wasmedge", "spin", "slight"] {
            assert!(yaml.contains(&format!("name: {handler}\nhandler: {handler}\n")));
        }
        assert_eq!(yaml.matches("kind: RuntimeClass").count(), 4);
    }
}
