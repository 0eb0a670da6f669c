//! Applying image layers to a directory as the OCI image layer spec says, and never writing
//! outside it, whatever a layer holds.
//!
//! Every path is resolved beneath the root with cap-std: an absolute name, `..`, or a symlink
//! (from this layer or an earlier one) pointing at a host directory cannot lead a later entry
//! out; a hard link's target must be inside too. Whiteouts (`.wh.NAME`, and `.wh..wh..opq` for
//! a directory whose earlier contents are hidden) remove what earlier layers put there. What a
//! layer unpacks to is bounded, so a small compressed layer cannot fill the disk.

use std::io::{self, Read};
use std::path::Path;

use cap_std::fs::{Dir, Permissions, PermissionsExt};

use crate::error::{ArchiveError, io_err};
use crate::limits::MAX_UNPACKED;
use crate::rootfs::beneath;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Applies one tar layer (`digest`, for errors) to `root`, counting what it writes against
/// `budget` bytes.
pub(crate) fn apply_layer(
    root: &Dir,
    layer: impl Read,
    digest: &str,
    budget: &mut u64,
) -> Result<(), ArchiveError> {
    let what = |action: String| format!("layer {digest}: {action}");
    let mut tar = tar::Archive::new(layer);
    for entry in tar.entries().map_err(io_err(what("read".to_owned())))? {
        let mut entry = entry.map_err(io_err(what("read".to_owned())))?;
        let raw = entry.path().map_err(io_err(what("read".to_owned())))?;
        let shown = raw.display().to_string();
        let Some(path) = beneath(&raw) else {
            return Err(ArchiveError::Escape {
                layer: digest.to_owned(),
                entry: shown,
            });
        };
        if path.as_os_str().is_empty() {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let parent = path.parent().unwrap_or(Path::new(""));
        let at = |e: io::Error| io_err(what(format!("write {shown}")))(contain(e));
        if name == OPAQUE {
            clear_dir(root, parent).map_err(at)?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            remove(root, &parent.join(hidden)).map_err(at)?;
            continue;
        }
        if !parent.as_os_str().is_empty() {
            root.create_dir_all(parent).map_err(at)?;
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                if !root.symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                    remove(root, &path).map_err(at)?;
                    root.create_dir(&path).map_err(at)?;
                }
                root.set_permissions(&path, Permissions::from_mode(mode))
                    .map_err(at)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                // Replaced, never written through: an earlier entry here may be a link.
                remove(root, &path).map_err(at)?;
                let mut file = root.create(&path).map_err(at)?;
                let limit = *budget;
                let written = io::copy(&mut (&mut entry).take(limit + 1), &mut file).map_err(at)?;
                if written > limit {
                    return Err(ArchiveError::TooLarge {
                        what: "the image's layers".to_owned(),
                        limit: MAX_UNPACKED,
                    });
                }
                *budget -= written;
                file.set_permissions(Permissions::from_mode(mode))
                    .map_err(at)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(at)?
                    .ok_or_else(|| at(io::Error::other("a symlink without a target")))?;
                remove(root, &path).map_err(at)?;
                // As the image says, absolute or not: following it is what is confined.
                root.symlink_contents(&target, &path).map_err(at)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(at)?
                    .ok_or_else(|| at(io::Error::other("a hard link without a target")))?;
                let Some(target) = beneath(&target).filter(|t| !t.as_os_str().is_empty()) else {
                    return Err(ArchiveError::Escape {
                        layer: digest.to_owned(),
                        entry: format!("{shown} (a hard link to {})", target.display()),
                    });
                };
                remove(root, &path).map_err(at)?;
                root.hard_link(&target, root, &path).map_err(at)?;
            }
            // Devices and FIFOs: nothing a Wasm guest can open.
            _ => {}
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (a file, link or whole directory); nothing there is fine.
pub(crate) fn remove(root: &Dir, path: &Path) -> io::Result<()> {
    match root.symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => root.remove_dir_all(path),
        Ok(_) => root.remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Empties the directory at `path` (an opaque whiteout), if there is one.
fn clear_dir(root: &Dir, path: &Path) -> io::Result<()> {
    // Only a directory: through a link it would clear whatever the link names.
    let is_dir =
        path.as_os_str().is_empty() || root.symlink_metadata(path).is_ok_and(|m| m.is_dir());
    if !is_dir {
        return Ok(());
    }
    let dir = if path.as_os_str().is_empty() {
        root.try_clone()?
    } else {
        root.open_dir(path)?
    };
    for entry in dir.entries()? {
        remove(&dir, Path::new(&entry?.file_name()))?;
    }
    Ok(())
}

/// cap-std's refusal to leave the root says "a path led outside of the filesystem"; an image
/// user is told which entry tried.
fn contain(error: io::Error) -> io::Error {
    if error.kind() == io::ErrorKind::PermissionDenied && error.to_string().contains("outside") {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "it leads outside the rootfs (through a symlink), which is refused",
        )
    } else {
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar layer of (name, kind) entries, written raw so names are exactly as given.
    enum Entry<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
    }

    fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for entry in entries {
            let mut header = tar::Header::new_gnu();
            let (name, kind, link, data): (&str, _, Option<&str>, &[u8]) = match entry {
                Entry::File(name, data) => (name, tar::EntryType::Regular, None, data),
                Entry::Dir(name) => (name, tar::EntryType::Directory, None, b""),
                Entry::Symlink(name, to) => (name, tar::EntryType::Symlink, Some(to), b""),
                Entry::HardLink(name, to) => (name, tar::EntryType::Link, Some(to), b""),
            };
            header.set_entry_type(kind);
            header.set_mode(0o755);
            header.set_size(data.len() as u64);
            // Raw: `set_path` refuses `..`, which is the point of some of these layers.
            let raw = &mut header.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            tar.append(&header, data).unwrap();
        }
        tar.into_inner().unwrap()
    }

    fn apply(root: &Dir, entries: &[Entry<'_>]) -> Result<(), ArchiveError> {
        let mut budget = MAX_UNPACKED;
        apply_layer(root, layer(entries).as_slice(), "sha256:test", &mut budget)
    }

    fn rootfs() -> (tempfile::TempDir, Dir) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("rootfs")).unwrap();
        let dir =
            Dir::open_ambient_dir(tmp.path().join("rootfs"), cap_std::ambient_authority()).unwrap();
        (tmp, dir)
    }

    #[test]
    fn absolute_names_land_in_the_rootfs_and_parent_names_are_refused() {
        let (tmp, root) = rootfs();
        apply(&root, &[Entry::File("/etc/app.conf", b"x")]).unwrap();
        assert_eq!(root.read("etc/app.conf").unwrap(), b"x");
        let escaped = apply(&root, &[Entry::File("../outside", b"x")]).unwrap_err();
        assert!(matches!(escaped, ArchiveError::Escape { .. }), "{escaped}");
        assert!(!tmp.path().join("outside").exists());
    }

    #[test]
    fn a_symlink_to_a_host_directory_cannot_carry_a_later_file_out() {
        let (tmp, root) = rootfs();
        let host = tmp.path().join("host");
        std::fs::create_dir(&host).unwrap();
        let host_path = host.display().to_string();
        // Layer 1 plants the link, layer 2 writes through it.
        apply(&root, &[Entry::Symlink("data", &host_path)]).unwrap();
        let through = apply(&root, &[Entry::File("data/planted", b"x")]).unwrap_err();
        assert!(through.to_string().contains("data/planted"), "{through}");
        // A relative link climbing out is no better.
        apply(&root, &[Entry::Symlink("up", "../..")]).unwrap();
        assert!(apply(&root, &[Entry::File("up/planted", b"x")]).is_err());
        assert_eq!(std::fs::read_dir(&host).unwrap().count(), 0);
        assert!(!tmp.path().join("planted").exists());
    }

    #[test]
    fn hard_links_stay_inside_the_rootfs() {
        let (tmp, root) = rootfs();
        let secret = tmp.path().join("secret");
        std::fs::write(&secret, b"host").unwrap();
        apply(
            &root,
            &[Entry::File("a", b"inside"), Entry::HardLink("b", "a")],
        )
        .unwrap();
        assert_eq!(root.read("b").unwrap(), b"inside");
        // An absolute target is the rootfs's path, which does not exist there.
        let target = secret.display().to_string();
        assert!(apply(&root, &[Entry::HardLink("c", &target)]).is_err());
        let out = apply(&root, &[Entry::HardLink("d", "../secret")]).unwrap_err();
        assert!(matches!(out, ArchiveError::Escape { .. }), "{out}");
        assert_eq!(
            std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(&secret).unwrap()),
            1
        );
    }

    #[test]
    fn whiteouts_remove_what_earlier_layers_added() {
        let (_tmp, root) = rootfs();
        apply(
            &root,
            &[
                Entry::Dir("a"),
                Entry::File("a/x", b"1"),
                Entry::File("a/y", b"1"),
                Entry::File("b", b"1"),
                Entry::Dir("c"),
                Entry::File("c/z", b"1"),
            ],
        )
        .unwrap();
        apply(
            &root,
            &[
                Entry::File(".wh.b", b""),
                Entry::File("a/.wh..wh..opq", b""),
                Entry::File("a/new", b"2"),
                Entry::File(".wh.c", b""),
            ],
        )
        .unwrap();
        let mut names: Vec<String> = root
            .entries()
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a"]);
        let a: Vec<_> = root
            .read_dir("a")
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(a, ["new"]);
    }

    #[test]
    fn a_layer_that_unpacks_past_the_bound_is_refused() {
        use std::io::Write;
        let (_tmp, root) = rootfs();
        // 64 MiB of zeros: a gzip bomb of 64 KiB.
        let zeros = vec![0u8; 64 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&layer(&[Entry::File("bomb", &zeros)]))
            .unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        let mut budget = 16 << 20;
        let refused = apply_layer(
            &root,
            flate2::read::GzDecoder::new(bomb.as_slice()),
            "sha256:bomb",
            &mut budget,
        )
        .unwrap_err();
        assert!(
            matches!(refused, ArchiveError::TooLarge { .. }),
            "{refused}"
        );
        assert!(root.metadata("bomb").unwrap().len() <= (16 << 20) + 1);
    }
}
