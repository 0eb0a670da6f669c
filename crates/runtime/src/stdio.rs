//! Connecting a guest's standard streams to what its [`Stdio`] names.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream, IsTerminal, StdoutStream};
use wasmtime_wasi::p2::OutputStream;

use crate::error::Error;
use wasmcell_workload::{Input, Output, Stdio};

/// How much a guest may write ahead of a slow reader before its writes wait.
const WRITE_BUDGET: usize = 64 * 1024;

type Writer = Box<dyn tokio::io::AsyncWrite + Send + Sync + Unpin>;
type Reader = Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>;

/// Connects a command's standard streams.
pub async fn attach(builder: &mut WasiCtxBuilder, stdio: &Stdio) -> Result<(), Error> {
    match &stdio.stdin {
        Input::Null => {}
        Input::Inherit => {
            builder.inherit_stdin();
        }
        Input::Fifo(path) => {
            let fifo = pipe::OpenOptions::new()
                .open_receiver(path)
                .map_err(stdio_err("stdin", path))?;
            builder.stdin(AsyncStdinStream::new(fifo));
        }
        Input::Descriptor(fd) => {
            builder.stdin(AsyncStdinStream::new(reader_from(*fd)?));
        }
    }
    Outputs::open(stdio).await?.attach(builder);
    Ok(())
}

/// Standard output and error, opened once and shared by every instance that attaches them
/// (a server's requests all log to the container's streams).
pub struct Outputs {
    stdout: Out,
    stderr: Out,
}

enum Out {
    Null,
    Inherit,
    Stream(SharedStream),
}

impl Outputs {
    /// No output: what an instance whose output is not wanted writes to.
    pub const fn null() -> Outputs {
        Outputs {
            stdout: Out::Null,
            stderr: Out::Null,
        }
    }

    /// Opens the output streams `stdio` names.
    pub async fn open(stdio: &Stdio) -> Result<Outputs, Error> {
        let out = async |output: &Output, stream| {
            Ok::<_, Error>(match output {
                Output::Null => Out::Null,
                Output::Inherit => Out::Inherit,
                other => Out::Stream(SharedStream(Arc::new(AsyncStdoutStream::new(
                    WRITE_BUDGET,
                    open(other, stream).await?,
                )))),
            })
        };
        Ok(Outputs {
            stdout: out(&stdio.stdout, "stdout").await?,
            stderr: out(&stdio.stderr, "stderr").await?,
        })
    }

    /// Gives an instance's WASI context these streams.
    pub fn attach(&self, builder: &mut WasiCtxBuilder) {
        match &self.stdout {
            Out::Null => {}
            Out::Inherit => {
                builder.inherit_stdout();
            }
            Out::Stream(stream) => {
                builder.stdout(stream.clone());
            }
        }
        match &self.stderr {
            Out::Null => {}
            Out::Inherit => {
                builder.inherit_stderr();
            }
            Out::Stream(stream) => {
                builder.stderr(stream.clone());
            }
        }
    }
}

/// One output stream shared by many instances: each gets a view of the same writer.
#[derive(Clone)]
struct SharedStream(Arc<AsyncStdoutStream>);

impl StdoutStream for SharedStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        self.0.p2_stream()
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        self.0.async_stream()
    }
}

impl IsTerminal for SharedStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

/// Writes a line from wasmcell itself (why a guest ended) to the guest's stderr, so the user
/// sees it where they see the guest's own output.
pub async fn report(stderr: &Output, message: &str) {
    let line = format!("wasmcell: {message}\n");
    match stderr {
        Output::Null => {}
        Output::Inherit => eprint!("{line}"),
        out => {
            if let Ok(mut writer) = open(out, "stderr").await {
                let _ = writer.write_all(line.as_bytes()).await;
                let _ = writer.flush().await;
            }
        }
    }
}

/// How many of wasmcell's lines may wait for a slow stderr before more are dropped.
const DIAGNOSTICS_QUEUE: usize = 256;

/// wasmcell's own lines about a server's requests (a handler that failed, a host denied), for
/// the guest's stderr. They are queued to one writer so that a reader who is slow or absent
/// (a FIFO nobody attached to after `ctr run -d`) never holds up a request: past the queue's
/// bound lines are dropped, and the count is written once the writer can write again.
#[derive(Clone)]
pub struct Diagnostics(Arc<DiagnosticsQueue>);

struct DiagnosticsQueue {
    output: Output,
    /// The writer's queue, started on the first line (from within the server's runtime).
    sender: std::sync::OnceLock<tokio::sync::mpsc::Sender<String>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    /// Lines queued and not yet written, and a signal after each write: for [`Diagnostics::flush`].
    pending: Arc<(std::sync::atomic::AtomicU64, tokio::sync::Notify)>,
}

impl Diagnostics {
    /// wasmcell's lines for `output`; nothing is opened until the first.
    pub fn new(output: &Output) -> Diagnostics {
        Diagnostics(Arc::new(DiagnosticsQueue {
            output: output.clone(),
            sender: std::sync::OnceLock::new(),
            dropped: Default::default(),
            pending: Default::default(),
        }))
    }

    /// Waits (at most `bound`) until every queued line is written: before a guest that is not
    /// a server ends, whose lines would otherwise be lost with its process.
    pub async fn flush(&self, bound: std::time::Duration) {
        let (pending, written) = &*self.0.pending;
        let drained = async {
            loop {
                let notified = written.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if pending.load(std::sync::atomic::Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(bound, drained).await;
    }

    /// Queues `message` as a `wasmcell: ` line; never waits.
    pub fn report(&self, message: &str) {
        let queue = &self.0;
        let line = format!("wasmcell: {message}\n");
        match &queue.output {
            Output::Null => {}
            Output::Inherit => eprint!("{line}"),
            output => {
                let sender = queue.sender.get_or_init(|| {
                    let (sender, lines) = tokio::sync::mpsc::channel(DIAGNOSTICS_QUEUE);
                    let (dropped, pending) = (queue.dropped.clone(), queue.pending.clone());
                    tokio::spawn(write_lines(output.clone(), lines, dropped, pending));
                    sender
                });
                queue
                    .pending
                    .0
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                if sender.try_send(line).is_err() {
                    queue
                        .pending
                        .0
                        .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    queue
                        .dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }
}

/// The writer behind [`Diagnostics`]: opens the output once and writes each queued line,
/// preceded by how many lines were dropped since it last wrote.
async fn write_lines(
    output: Output,
    mut lines: tokio::sync::mpsc::Receiver<String>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    pending: Arc<(std::sync::atomic::AtomicU64, tokio::sync::Notify)>,
) {
    let Ok(mut writer) = open(&output, "stderr").await else {
        return;
    };
    while let Some(line) = lines.recv().await {
        let missed = dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
        if missed > 0 {
            let note =
                format!("wasmcell: {missed} lines dropped: nothing was reading this stderr\n");
            let _ = writer.write_all(note.as_bytes()).await;
        }
        let _ = writer.write_all(line.as_bytes()).await;
        let _ = writer.flush().await;
        pending.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        pending.1.notify_waiters();
    }
}

async fn open(output: &Output, stream: &'static str) -> Result<Writer, Error> {
    Ok(match output {
        // Opened read-write, as runc's shim does: the FIFO then always has a reader, so the
        // guest's writes wait for containerd instead of failing with EPIPE when no client is
        // attached (e.g. after `ctr run -d`), and `ctr task attach` picks the stream up later.
        Output::Fifo(path) => Box::new(
            pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(path)
                .map_err(stdio_err(stream, path))?,
        ),
        Output::File(path) => Box::new(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
                .map_err(stdio_err(stream, path))?,
        ),
        Output::Descriptor(fd) => writer_from(*fd, stream)?,
        Output::Null | Output::Inherit => {
            unreachable!("{stream}: only FIFOs, files and descriptors are opened")
        }
    })
}

fn stdio_err(stream: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_owned();
    move |source| Error::Stdio {
        stream,
        path,
        source,
    }
}

/// A duplicate of a descriptor this process was handed, and whether it is a FIFO (driven by
/// the reactor) rather than a regular file (driven by blocking threads).
fn duplicate(fd: i32, stream: &'static str) -> Result<(OwnedFd, bool), Error> {
    let err = || stdio_err(stream, Path::new(&format!("/proc/self/fd/{fd}")));
    // SAFETY: the descriptor was handed to this process for this stream and stays open for the
    // container's lifetime; it is only borrowed long enough to duplicate it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let file = std::fs::File::from(borrowed.try_clone_to_owned().map_err(err())?);
    let is_fifo = file.metadata().map_err(err())?.file_type().is_fifo();
    Ok((OwnedFd::from(file), is_fifo))
}

fn reader_from(fd: i32) -> Result<Reader, Error> {
    let (owned, is_fifo) = duplicate(fd, "stdin")?;
    let err = stdio_err("stdin", Path::new(&format!("/proc/self/fd/{fd}")));
    Ok(if is_fifo {
        Box::new(pipe::Receiver::from_owned_fd(owned).map_err(err)?)
    } else {
        Box::new(tokio::fs::File::from_std(std::fs::File::from(owned)))
    })
}

fn writer_from(fd: i32, stream: &'static str) -> Result<Writer, Error> {
    let (owned, is_fifo) = duplicate(fd, stream)?;
    let err = stdio_err(stream, Path::new(&format!("/proc/self/fd/{fd}")));
    Ok(if is_fifo {
        Box::new(pipe::Sender::from_owned_fd(owned).map_err(err)?)
    } else {
        Box::new(tokio::fs::File::from_std(std::fs::File::from(owned)))
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    /// With nobody reading the FIFO, a report neither waits nor piles up: what does not fit in
    /// the queue is dropped, and the count written before the next line the writer writes.
    #[tokio::test]
    async fn diagnostics_never_wait_for_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stderr");
        let path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        let diagnostics = Diagnostics::new(&Output::Fifo(fifo.clone()));
        let long = "x".repeat(1000);
        for n in 0..1000 {
            diagnostics.report(&format!("{n} {long}"));
        }

        let mut reader = pipe::OpenOptions::new().open_receiver(&fifo).unwrap();
        let mut text = Vec::new();
        let mut buffer = vec![0; 1 << 16];
        let mut last_sent = false;
        while !String::from_utf8_lossy(&text).contains("wasmcell: last\n") {
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(10), reader.read(&mut buffer))
                    .await
                    .expect("the writer went on writing")
                    .unwrap();
            text.extend_from_slice(&buffer[..read]);
            let lines = text.iter().filter(|b| **b == b'\n').count();
            if lines == DIAGNOSTICS_QUEUE && !last_sent {
                diagnostics.report("last");
                last_sent = true;
            }
        }
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.first().copied(),
            Some("wasmcell: 744 lines dropped: nothing was reading this stderr")
        );
        assert_eq!(lines[1], format!("wasmcell: 0 {long}"));
        assert_eq!(lines[DIAGNOSTICS_QUEUE], format!("wasmcell: 255 {long}"));
        assert_eq!(lines.last().copied(), Some("wasmcell: last"));
    }

    /// A guest about to end waits for its lines: once `flush` returns they are in the file.
    #[tokio::test]
    async fn flushed_diagnostics_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stderr");
        let diagnostics = Diagnostics::new(&Output::File(file.clone()));
        for n in 0..3 {
            diagnostics.report(&format!("line {n}"));
        }
        diagnostics.flush(std::time::Duration::from_secs(10)).await;
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "wasmcell: line 0\nwasmcell: line 1\nwasmcell: line 2\n"
        );
    }
}
