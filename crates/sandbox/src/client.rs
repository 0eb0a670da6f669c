//! The shim's handle on its sandbox process.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use crate::channel::{Channel, SendError};
use crate::protocol::{Answer, Grant, Message, Open, Request, Setup, UNSOLICITED};
use crate::sys;

/// Why talking to the sandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The process could not be started or could not join its cgroup.
    #[error("cannot start the sandbox process")]
    Start(#[source] std::io::Error),
    /// The sandbox could not isolate itself; the message is its own, with causes.
    #[error("the sandbox could not isolate itself: {0}")]
    Setup(String),
    /// The sandbox refused a request; the message is its own, with causes.
    #[error("{0}")]
    Refused(String),
    /// A granted path could not be opened.
    #[error("cannot grant {} to the sandbox", path.display())]
    Grant {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The control socket failed.
    #[error("cannot reach the sandbox process")]
    Io(#[source] std::io::Error),
    /// The request could not be sent (the sandbox and its other containers are unaffected).
    #[error("cannot send the request to the sandbox")]
    Send(#[source] SendError),
    /// The sandbox process is gone.
    #[error("the sandbox process exited")]
    Gone,
}

/// A guest that ended, as the sandbox reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    /// The container id.
    pub id: String,
    /// Its exit status.
    pub status: u32,
    /// Whether it exceeded its memory limit.
    pub oom: bool,
}

/// Replies being waited for, by sequence number; `None` once the sandbox is gone.
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<Answer, String>>>>>>;

/// A running sandbox process and its control socket.
pub struct Sandbox {
    pid: u32,
    control: Arc<Channel>,
    pending: Pending,
    next_seq: AtomicU64,
}

impl Sandbox {
    /// Starts the sandbox, which joins its cgroup through `joins` before it runs anything (see
    /// [`sys::spawn`]), and waits until it has isolated itself. Exits of its guests arrive on
    /// the returned channel, which closes when the sandbox process ends.
    pub async fn start(
        setup: &Setup,
        joins: Vec<OwnedFd>,
    ) -> Result<(Sandbox, mpsc::UnboundedReceiver<Exited>), SandboxError> {
        let exe = std::env::current_exe().map_err(SandboxError::Start)?;
        let (control, theirs) = sys::socket_pair().map_err(SandboxError::Io)?;
        let pid = sys::spawn(&exe, theirs, joins).map_err(SandboxError::Start)?;
        let control = Arc::new(Channel::new(control));
        let sandbox = Sandbox {
            pid,
            control: control.clone(),
            pending: Arc::new(Mutex::new(Some(HashMap::new()))),
            next_seq: AtomicU64::new(1),
        };
        let (exits, exits_rx) = mpsc::unbounded_channel();
        let pending = sandbox.pending.clone();
        std::thread::Builder::new()
            .name("wasmcell-sandbox-rx".into())
            .spawn(move || read_messages(&control, pending, exits))
            .map_err(SandboxError::Io)?;
        let setup = serde_json::to_vec(setup).expect("setup serializes");
        sandbox
            .exchange(0, &setup, &[])
            .await
            .map_err(|e| match e {
                SandboxError::Refused(message) => SandboxError::Setup(message),
                other => other,
            })?;
        Ok((sandbox, exits_rx))
    }

    /// The sandbox's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `request` and waits for its reply. A `Create` carries a descriptor for each of
    /// its grants, opened here in the order listed.
    pub async fn request(&self, request: Request) -> Result<Answer, SandboxError> {
        let grants = match &request {
            Request::Create { grants, .. } => open_grants(grants).await?,
            _ => Vec::new(),
        };
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let message = serde_json::to_vec(&request).expect("requests serialize");
        self.exchange(seq, &message, &grants).await
    }

    /// What container `id`'s processes have used (see [`Request::Usage`]).
    pub async fn usage(&self, id: &str) -> Result<wasmcell_engine::Usage, SandboxError> {
        match self.request(Request::Usage { id: id.to_owned() }).await? {
            Answer::Usage(usage) => Ok(usage),
            other => Err(SandboxError::Refused(format!(
                "the sandbox answered {other:?} to a usage request"
            ))),
        }
    }

    async fn exchange(
        &self,
        seq: u64,
        message: &[u8],
        fds: &[OwnedFd],
    ) -> Result<Answer, SandboxError> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("pending lock")
            .as_mut()
            .ok_or(SandboxError::Gone)?
            .insert(seq, tx);
        let raw: Vec<_> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        if let Err(error) = self.control.send(seq, message, &raw) {
            if let Some(pending) = self.pending.lock().expect("pending lock").as_mut() {
                pending.remove(&seq);
            }
            return Err(SandboxError::Send(error));
        }
        match rx.await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(SandboxError::Refused(error)),
            Err(_) => Err(SandboxError::Gone),
        }
    }

    /// Ends the sandbox and every guest in it at once. The returned future completes when the
    /// process is gone from its cgroup (a killed process still unwinds its memory and
    /// namespaces), or after `patience`; it does not borrow the sandbox.
    pub fn end(&self, patience: Duration) -> impl Future<Output = ()> + Send + 'static {
        // Opened before the kill, so that the number cannot be reused by another process first.
        let pidfd = sys::pidfd(self.pid);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::SIGKILL,
        );
        async move {
            // No pidfd: the process was reaped already.
            let Ok(pidfd) = pidfd else { return };
            // SAFETY: the AsyncFd owns the descriptor, which stays open until it is dropped.
            match unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) } {
                Ok(gone) => {
                    let _ = tokio::time::timeout(patience, gone.readable()).await;
                }
                Err(error) => tracing::warn!("cannot wait for the sandbox to end: {error}"),
            }
        }
    }
}

/// Dispatches the sandbox's messages until its socket closes, then fails every waiter. A reply
/// that arrived broken fails its request alone.
fn read_messages(control: &Channel, pending: Pending, exits: mpsc::UnboundedSender<Exited>) {
    let answer = |tag: u64, result: Result<Answer, String>| {
        if let Some(tx) = pending
            .lock()
            .expect("pending lock")
            .as_mut()
            .and_then(|p| p.remove(&tag))
        {
            let _ = tx.send(result);
        }
    };
    while let Ok(Some(incoming)) = control.recv() {
        let message = incoming
            .body
            .map_err(|broken| format!("the sandbox's reply could not be received: {broken}"))
            .and_then(|(bytes, _)| {
                serde_json::from_slice(&bytes)
                    .map_err(|e| format!("the sandbox's reply is unreadable: {e}"))
            });
        match message {
            Ok(Message::Reply(result)) => answer(incoming.tag, result),
            Ok(Message::Exited { id, status, oom }) => {
                let _ = exits.send(Exited { id, status, oom });
            }
            Err(error) if incoming.tag == UNSOLICITED => tracing::error!("{error}"),
            Err(error) => answer(incoming.tag, Err(error)),
        }
    }
    // Dropping the senders wakes every waiter with `Gone`; later requests fail at once.
    pending.lock().expect("pending lock").take();
}

/// How long a stdout or stderr FIFO may wait for its client's reader: clients open their end
/// before they ask for the process, so this is only reached when nobody will ever read.
const READER_WAIT: Duration = Duration::from_secs(10);

/// Opens `grants` in order, as [`sys::open_grant`] does, but a stdout or stderr FIFO only once
/// its client reads it.
///
/// The FIFO is opened read-write (it then never reports EPIPE when the client goes away), which
/// succeeds with nobody reading. If the guest wrote and ended and every descriptor closed before
/// the client's reader had entered `open(2)` (a busy machine), the kernel freed the pipe with
/// the guest's output in it, and the client, finding no writer, saw none: a `ctr task exec`
/// exited 0 having printed nothing. runc's shim avoids this by opening the FIFO write-only, which
/// waits for the reader; here a write-only probe proves the reader is there and is held until the
/// read-write descriptor is open, so the reader never sees a moment without a writer (an EOF).
async fn open_grants(grants: &[Grant]) -> Result<Vec<OwnedFd>, SandboxError> {
    let failed = |grant: &Grant| {
        let path = grant.path.clone();
        move |source| SandboxError::Grant { path, source }
    };
    let mut opened = Vec::with_capacity(grants.len());
    for grant in grants {
        let _reader_attached = match grant.open {
            Open::Write => reader_attached(&grant.path).await.map_err(failed(grant))?,
            _ => None,
        };
        opened.push(sys::open_grant(grant).map_err(failed(grant))?);
    }
    Ok(opened)
}

/// A write-only descriptor of `fifo` once some process reads it, polling with a growing pause;
/// `None` after [`READER_WAIT`] (the output then waits in the pipe for a later reader, such as
/// `ctr task attach`).
async fn reader_attached(fifo: &std::path::Path) -> std::io::Result<Option<OwnedFd>> {
    let deadline = tokio::time::Instant::now() + READER_WAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(writer) = sys::fifo_writer_if_read(fifo)? {
            return Ok(Some(writer));
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(fifo = %fifo.display(), "no client reads this output; starting anyway");
            return Ok(None);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// A guest that writes and ends before its client's reader has opened the FIFO (a busy
    /// machine) still has its output read: the grant waits for the reader, and the pipe with
    /// the output in it outlives the guest's descriptor.
    #[tokio::test]
    async fn output_written_before_a_late_reader_opens_reaches_it() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdout");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

        let (read_tx, read_rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            // The client's reader, late: it opens only after the grant is asked for.
            std::thread::sleep(Duration::from_millis(200));
            let mut text = String::new();
            std::fs::File::open(path)
                .and_then(|mut reader| reader.read_to_string(&mut text))
                .unwrap();
            let _ = read_tx.send(text);
        });

        let grant = Grant {
            path: fifo,
            open: Open::Write,
        };
        let mut opened = open_grants(&[grant]).await.unwrap();
        let mut guest = std::fs::File::from(opened.pop().unwrap());
        guest.write_all(b"the guest's only line\n").unwrap();
        drop(guest);

        // Without the wait the reader would block forever on a new, empty pipe.
        let text =
            tokio::task::spawn_blocking(move || read_rx.recv_timeout(Duration::from_secs(30)))
                .await
                .unwrap()
                .expect("the reader got the output and its end");
        assert_eq!(text, "the guest's only line\n");
    }
}
