//! Reading the files of an image (a container's rootfs, an app's directory) as hostile input.
//!
//! Whoever publishes an image chooses every name, link, file type and size in it, and the code
//! reading it (the shim, `wasmcell up`) runs as root on the host. So each file is:
//! - resolved beneath its root with cap-std: `..`, an absolute name or a symlink cannot lead
//!   out of it;
//! - a regular file, checked before it is opened for reading and again on the open descriptor:
//!   a character device (`/dev/zero`, `/dev/kmsg`) would read forever or reach the kernel, a
//!   FIFO would block the reader forever, a socket would connect somewhere;
//! - read with a bound, refused as soon as it is known to be larger.

use std::fmt;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use cap_std::fs::{Dir, File, FileType, FileTypeExt, OpenOptions, OpenOptionsExt};

/// The most wasmcell reads of one Wasm module or component from an image: 512 MiB, far above
/// any real one (Spin's and wasmtime's own components are a few MiB to a few tens of MiB;
/// the largest language runtimes compiled to Wasm are around 100 MiB), and small enough that
/// a hostile image cannot make the shim hold gigabytes per container.
pub const MAX_MODULE_SIZE: u64 = 512 << 20;

/// The most wasmcell reads of a manifest or configuration file from an image (`spin.toml`,
/// `runtime-config.toml`, `slightfile.toml`, `/etc/hosts`): 16 MiB of text is already absurd.
pub const MAX_CONFIG_SIZE: u64 = 16 << 20;

/// Why a file of an image is not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// It is not a regular file.
    #[error("it is {0}, not a regular file: only regular files are read from an image")]
    NotRegular(Special),
    /// It is larger than the limit for its kind of file.
    #[error(
        "it is larger than {} MiB ({limit} bytes), the most wasmcell reads of such a file from an image",
        limit >> 20
    )]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// It cannot be opened or read: missing, unreadable, or reached only by leaving the root.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Opens `path` beneath `root` for reading if it is a regular file of at most `limit` bytes,
/// with its size. Its type is checked without opening it (a `stat` beneath the root), then
/// the open does not block (`O_NONBLOCK`, which a FIFO swapped in meanwhile would otherwise
/// need a writer for) and the descriptor is checked again, so no other kind of file is ever
/// read.
pub fn open_regular(root: &Dir, path: &Path, limit: u64) -> Result<(File, u64), ReadError> {
    regular(root.metadata(path)?.file_type())?;
    let mut options = OpenOptions::new();
    options
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    let file = root.open_with(path, &options)?;
    let metadata = file.metadata()?;
    regular(metadata.file_type())?;
    if metadata.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok((file, metadata.len()))
}

/// The bytes of regular file `path` beneath `root`, at most `limit` of them (see
/// [`open_regular`]); a file that grows past the limit while it is read is refused too.
pub fn read_regular(root: &Dir, path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let (file, size) = open_regular(root, path, limit)?;
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(bytes)
}

/// The text of regular file `path` beneath `root`: [`read_regular`] with
/// [`MAX_CONFIG_SIZE`], which must be UTF-8.
pub fn read_config(root: &Dir, path: &Path) -> Result<String, ReadError> {
    let bytes = read_regular(root, path, MAX_CONFIG_SIZE)?;
    String::from_utf8(bytes)
        .map_err(|e| ReadError::Io(io::Error::new(io::ErrorKind::InvalidData, e.utf8_error())))
}

/// `path` (a name from an image: a layer entry, a manifest's path) as a relative path beneath
/// its root: leading `/`s and `.`s dropped, so `/x` and `//x` are the root's `x`; `None` if it
/// has a `..`, which no image needs and which is refused rather than resolved.
pub fn beneath(path: &Path) -> Option<PathBuf> {
    let mut inside = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(part) => inside.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(inside)
}

/// What a file that is not a regular file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// A directory.
    Directory,
    /// A FIFO (named pipe).
    Fifo,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A Unix socket.
    Socket,
    /// A symbolic link (only where links are not followed).
    Symlink,
}

impl fmt::Display for Special {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Special::Directory => "a directory",
            Special::Fifo => "a FIFO",
            Special::CharDevice => "a character device",
            Special::BlockDevice => "a block device",
            Special::Socket => "a socket",
            Special::Symlink => "a symbolic link",
        })
    }
}

fn regular(kind: FileType) -> Result<(), ReadError> {
    let special = if kind.is_file() {
        return Ok(());
    } else if kind.is_dir() {
        Special::Directory
    } else if kind.is_fifo() {
        Special::Fifo
    } else if kind.is_char_device() {
        Special::CharDevice
    } else if kind.is_block_device() {
        Special::BlockDevice
    } else if kind.is_socket() {
        Special::Socket
    } else {
        Special::Symlink
    };
    Err(ReadError::NotRegular(special))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, Dir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
        (tmp, dir)
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let (tmp, root) = root();
        mkfifo(&tmp.path().join("app.wasm"));
        // No writer ever opens it: a plain open for reading would block here forever.
        let error = read_regular(&root, Path::new("app.wasm"), MAX_MODULE_SIZE).unwrap_err();
        assert_eq!(
            error.to_string(),
            "it is a FIFO, not a regular file: only regular files are read from an image"
        );
    }

    #[test]
    fn a_character_device_is_refused_before_it_is_read() {
        let (tmp, root) = root();
        // A link to the host's /dev/zero is not followed out of the root...
        std::os::unix::fs::symlink("/dev/zero", tmp.path().join("zero")).unwrap();
        let error = read_regular(&root, Path::new("zero"), MAX_MODULE_SIZE).unwrap_err();
        assert!(matches!(error, ReadError::Io(_)), "{error}");
        // ...and a device node beneath the root (as an image layer makes one) is refused by
        // its type. /dev itself stands in for such a root here.
        let dev = Dir::open_ambient_dir("/dev", cap_std::ambient_authority()).unwrap();
        let error = read_regular(&dev, Path::new("zero"), MAX_MODULE_SIZE).unwrap_err();
        assert!(error.to_string().contains("a character device"), "{error}");
    }

    #[test]
    fn paths_out_of_the_root_are_refused() {
        let (tmp, root) = root();
        let outside = tmp.path().parent().unwrap();
        let secret = tempfile::NamedTempFile::new_in(outside).unwrap();
        let name = secret.path().file_name().unwrap().to_str().unwrap();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(secret.path(), tmp.path().join("abs")).unwrap();
        std::os::unix::fs::symlink(format!("../../{name}"), tmp.path().join("sub/rel")).unwrap();
        for path in [
            format!("../{name}"),
            secret.path().display().to_string(),
            "abs".to_owned(),
            "sub/rel".to_owned(),
        ] {
            let result = read_regular(&root, Path::new(&path), MAX_CONFIG_SIZE);
            assert!(
                matches!(result, Err(ReadError::Io(_))),
                "{path}: {result:?}"
            );
        }
    }

    #[test]
    fn a_file_over_the_limit_is_refused_naming_the_limit() {
        let (tmp, root) = root();
        std::fs::write(tmp.path().join("big.wasm"), vec![0u8; 3 << 20]).unwrap();
        let error = read_regular(&root, Path::new("big.wasm"), 2 << 20).unwrap_err();
        assert_eq!(
            error.to_string(),
            "it is larger than 2 MiB (2097152 bytes), the most wasmcell reads of such a file from an image"
        );
        assert_eq!(
            read_regular(&root, Path::new("big.wasm"), 3 << 20)
                .unwrap()
                .len(),
            3 << 20
        );
        let error = read_regular(&root, Path::new("."), 3 << 20).unwrap_err();
        assert!(error.to_string().contains("a directory"), "{error}");
    }

    fn mkfifo(path: &Path) {
        let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
    }
}
