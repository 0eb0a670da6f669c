//! The daemon's ttrpc socket file under `/run/containerd/s`, and who removes it.
//!
//! The shim library removes the socket only after the daemon's server has stopped, finding its
//! path in the bundle's `address` file. By then containerd may have deleted the bundle: it
//! deletes it as soon as the `shim delete` it runs after every disconnect returns, which can
//! beat a daemon still waiting for its sandbox. The socket then stays behind forever (socket
//! names are per container or pod, so no later start reuses it), one more file per container
//! in a directory every runtime on the host shares. A daemon that died (killed, out of memory)
//! leaves its socket too. So the daemon removes its socket itself as soon as it decides to
//! exit, and `delete` removes one nobody listens on any more.

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

/// The socket file a shim daemon serves on (or served on).
#[derive(Debug, Clone)]
pub struct ShimSocket(PathBuf);

impl ShimSocket {
    /// The socket of a shim address, `unix:///run/containerd/s/<hash>` as containerd has it.
    pub fn from_address(address: &str) -> ShimSocket {
        ShimSocket(PathBuf::from(
            address.strip_prefix("unix://").unwrap_or(address),
        ))
    }

    /// Removes the socket file, so that no new connection reaches a daemon that is leaving and
    /// nothing stays behind it. Connections already made are unaffected.
    pub fn remove(&self) {
        let is_socket = std::fs::symlink_metadata(&self.0)
            .is_ok_and(|metadata| metadata.file_type().is_socket());
        if is_socket && let Err(error) = std::fs::remove_file(&self.0) {
            tracing::warn!("remove shim socket {}: {error}", self.0.display());
        }
    }

    /// Removes the socket file if no daemon listens on it any more. A live one (serving other
    /// containers of a pod) keeps its socket.
    pub fn remove_if_stale(&self) {
        match std::os::unix::net::UnixStream::connect(&self.0) {
            Err(error) if error.kind() == ErrorKind::ConnectionRefused => self.remove(),
            // Listening, already gone, or not ours to judge.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_socket_goes_and_a_live_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let address = format!("unix://{}", path.display());

        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        ShimSocket::from_address(&address).remove_if_stale();
        assert!(path.exists(), "a socket with a listener was removed");

        drop(listener);
        ShimSocket::from_address(&address).remove_if_stale();
        assert!(!path.exists(), "a socket nobody listens on stayed");

        std::fs::write(&path, "not a socket").unwrap();
        ShimSocket::from_address(&address).remove();
        assert!(path.exists(), "a file that is not a socket was removed");
    }
}
