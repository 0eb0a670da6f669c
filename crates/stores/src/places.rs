//! Where store files are: [`Places`] resolves a store's path the way the container sees it, to
//! a directory beneath the app's directory or a granted one, and says whether that place is
//! mounted read-only. The lowest of the crate's modules: SQLite files and key-value stores are
//! both found through it.

use std::path::{Component as PathPart, Path, PathBuf};

use wasmcell_workload::{Access, Preopen};

/// Where store files live: the app's directory, and the directories granted at absolute paths,
/// each with whether the container may write there.
pub struct Places {
    root: PathBuf,
    /// Where the container sees the app's directory, when it is mounted read-only (a
    /// `--read-only` rootfs).
    root_read_only: Option<String>,
    granted: Vec<Preopen>,
}

/// Where one store file is: the directory it is in, its path within that directory, and, when
/// the directory is mounted read-only, where the container sees that mount.
#[derive(Debug, PartialEq)]
pub(crate) struct Place {
    pub(crate) base: PathBuf,
    pub(crate) relative: PathBuf,
    pub(crate) read_only_mount: Option<String>,
}

impl Places {
    /// The places of an app whose directory is `root` (its rootfs), with the directories
    /// `preopens` grants it.
    pub fn new(root: &Path, preopens: &[Preopen]) -> Places {
        Places {
            root: root.to_owned(),
            root_read_only: preopens
                .iter()
                .find(|p| p.host == root && p.access == Access::ReadOnly)
                .map(|p| p.guest.clone()),
            granted: preopens.to_vec(),
        }
    }

    /// Where `path` is: relative paths are in the app's directory, absolute ones in the longest
    /// granted directory that holds them.
    pub(crate) fn locate(&self, path: &str) -> Result<Place, String> {
        let within = |base: &Path, rest: &Path, read_only_mount: Option<&String>| {
            if rest
                .components()
                .any(|c| !matches!(c, PathPart::Normal(_) | PathPart::CurDir))
            {
                return Err(format!("{path}: a store path may not use `..`"));
            }
            Ok(Place {
                base: base.to_owned(),
                relative: rest.to_owned(),
                read_only_mount: read_only_mount.cloned(),
            })
        };
        if !path.starts_with('/') {
            return within(&self.root, Path::new(path), self.root_read_only.as_ref());
        }
        let best = self
            .granted
            .iter()
            .filter_map(|p| Some((p, Path::new(path).strip_prefix(&p.guest).ok()?)))
            .max_by_key(|(p, _)| p.guest.len());
        match best {
            Some((p, rest)) => within(
                &p.host,
                rest,
                (p.access == Access::ReadOnly).then_some(&p.guest),
            ),
            None => Err(format!(
                "{path} is in no directory the container was given: mount a volume there"
            )),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A directory `host` granted to the container at `guest`.
    pub(crate) fn preopen(host: &Path, guest: &str, access: Access) -> Preopen {
        Preopen {
            host: host.to_owned(),
            guest: guest.to_owned(),
            access,
        }
    }

    #[test]
    fn store_paths_are_found_where_a_container_sees_them() {
        let places = Places::new(
            Path::new("/rootfs"),
            &[
                preopen(Path::new("/rootfs"), "/", Access::ReadWrite),
                preopen(Path::new("/volumes/data"), "/data", Access::ReadWrite),
                preopen(Path::new("/volumes/conf"), "/conf", Access::ReadOnly),
            ],
        );
        let at = |p| {
            places.locate(p).map(|place| {
                (
                    place.base.display().to_string(),
                    place.relative.display().to_string(),
                    place.read_only_mount,
                )
            })
        };
        assert_eq!(
            at(".spin/kv.db").unwrap(),
            ("/rootfs".into(), ".spin/kv.db".into(), None)
        );
        assert_eq!(
            at("/data/kv.db").unwrap(),
            ("/volumes/data".into(), "kv.db".into(), None)
        );
        assert_eq!(
            at("/var/kv.db").unwrap(),
            ("/rootfs".into(), "var/kv.db".into(), None)
        );
        assert_eq!(
            at("/conf/kv.db").unwrap(),
            ("/volumes/conf".into(), "kv.db".into(), Some("/conf".into()))
        );
        assert!(at("../kv.db").unwrap_err().contains(".."));

        // A `--read-only` rootfs makes the app's directory read-only.
        let read_only = Places::new(
            Path::new("/rootfs"),
            &[preopen(Path::new("/rootfs"), "/", Access::ReadOnly)],
        );
        assert_eq!(
            read_only.locate(".spin/kv.db").unwrap().read_only_mount,
            Some("/".into())
        );
    }
}
