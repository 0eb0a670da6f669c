//! One output (a FIFO, a file or a descriptor) shared by every instance of a workload, each
//! instance writing through a stream of its own.
//!
//! wasmtime-wasi's `AsyncStdoutStream` gives every instance a view of one stream and traps a
//! call that finds another view busy ("concurrent writes are not supported"): harmless for a
//! command, fatal for a server whose concurrent requests log. Here each instance's [`Port`]
//! keeps its own check-write/write state and queues its writes to the one task that owns the
//! writer, which writes them whole and in the order they were made. A budget shared by the
//! output's ports bounds what waits in memory for a slow or absent reader; a port that finds
//! it spent waits (its guest's writes block), it never fails and nothing is dropped.
//!
//! A server's ports pass on whole lines: a guest's `eprintln!` is several writes, and the
//! lines of requests served at once would otherwise be spliced into each other in the log
//! (`kubectl logs` reads it by the line). A port holds a line back until its newline, until
//! it reaches [`WRITE_BUDGET`], or until the instance ends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use super::Writer;

/// How much one write may carry: what check-write grants.
const WRITE_BUDGET: usize = 64 * 1024;

/// How many writes may wait for the reader at once, across all the ports of an output (so at
/// most 4 MiB is held for a reader that does not read).
const WRITES_WAITING: usize = 64;

/// How much unfinished lines may hold, across all the ports of an output: past it a line goes
/// out unfinished (a guest opening stream after stream, each with a partial line, would
/// otherwise hold memory without bound).
const HELD_LINES: usize = 1 << 20;

/// A write on its way to the writer, with the budget it holds until it is written.
struct Chunk {
    bytes: Bytes,
    done: oneshot::Sender<io::Result<()>>,
    /// None only for what an instance left unfinished when it ended, which cannot wait.
    _budget: Option<OwnedSemaphorePermit>,
    /// For such a chunk: its bytes, counted as held until written.
    _held: Option<Held>,
}

/// Bytes counted in an output's held total until dropped.
struct Held {
    total: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// How a port passes writes on.
#[derive(Clone, Copy)]
pub(super) enum Framing {
    /// Each write as it is made: a command, the only writer of its streams.
    AsWritten,
    /// Whole lines: a server's instances, many writing at once.
    WholeLines,
}

/// An output shared by instances: each [`StdoutStream`] call makes a new [`Port`].
#[derive(Clone)]
pub(super) struct SharedOutput {
    queue: mpsc::UnboundedSender<Chunk>,
    budget: Arc<Semaphore>,
    /// Bytes of unfinished lines held back, and of those sent without budget.
    held: Arc<AtomicUsize>,
    framing: Framing,
    terminal: bool,
}

impl SharedOutput {
    /// Starts the task that owns `writer` (on the current runtime).
    /// `terminal`: whether the writer is one (the guest may then colour its output).
    pub(super) fn new(writer: Writer, framing: Framing, terminal: bool) -> SharedOutput {
        let (queue, chunks) = mpsc::unbounded_channel();
        tokio::spawn(write_chunks(writer, chunks));
        SharedOutput {
            queue,
            budget: Arc::new(Semaphore::new(WRITES_WAITING)),
            held: Default::default(),
            framing,
            terminal,
        }
    }

    /// Waits until every write queued so far is written (or has failed).
    pub(super) async fn written(&self) {
        // Every queued write holds a permit until the writer is done with it.
        let _all = self.budget.acquire_many(WRITES_WAITING as u32).await;
    }

    fn port(&self) -> Port {
        Port {
            output: self.clone(),
            state: State::Idle,
            acquiring: None,
            line: BytesMut::new(),
        }
    }
}

impl StdoutStream for SharedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.port())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.port())
    }
}

impl IsTerminal for SharedOutput {
    fn is_terminal(&self) -> bool {
        self.terminal
    }
}

/// Writes each chunk whole, in order; after a failure (the reader closed its end) every later
/// chunk fails the same way without being tried.
async fn write_chunks(mut writer: Writer, mut chunks: mpsc::UnboundedReceiver<Chunk>) {
    let mut broken = None;
    while let Some(chunk) = chunks.recv().await {
        let result = match broken {
            Some(kind) => Err(io::Error::from(kind)),
            None => async {
                writer.write_all(&chunk.bytes).await?;
                writer.flush().await
            }
            .await
            .inspect_err(|error| broken = Some(error.kind())),
        };
        let _ = chunk.done.send(result);
    }
}

type Acquiring = dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send + Sync;

/// One instance's stream to a [`SharedOutput`].
struct Port {
    output: SharedOutput,
    state: State,
    /// A wait for budget begun by `poll_write`.
    acquiring: Option<Pin<Box<Acquiring>>>,
    /// The unfinished line held back under [`Framing::WholeLines`].
    line: BytesMut,
}

enum State {
    /// Nothing granted, nothing in flight.
    Idle,
    /// Check-write granted a write of up to [`WRITE_BUDGET`] bytes.
    Granted(OwnedSemaphorePermit),
    /// A write the writer has not finished.
    Writing(oneshot::Receiver<io::Result<()>>),
    /// The last write failed; the next call reports it and closes the stream.
    Failed(io::Error),
    Closed,
}

impl Port {
    /// Notes a finished write without waiting for one.
    fn settle(&mut self) {
        if let State::Writing(done) = &mut self.state {
            self.state = match done.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => return,
                Ok(Ok(())) => State::Idle,
                Ok(Err(error)) => State::Failed(error),
                Err(oneshot::error::TryRecvError::Closed) => State::Closed,
            };
        }
    }

    /// Waits for the write in flight, if any.
    async fn finish_write(&mut self) {
        if let State::Writing(done) = &mut self.state {
            self.state = match done.await {
                Ok(Ok(())) => State::Idle,
                Ok(Err(error)) => State::Failed(error),
                Err(_) => State::Closed,
            };
        }
    }

    /// A failure to report, after which the stream is closed.
    fn failure(&mut self) -> Option<StreamError> {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Failed(error) => Some(StreamError::LastOperationFailed(error.into())),
            State::Closed => Some(StreamError::Closed),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// Passes `bytes` on under the budget `permit` granted: to the writer, or (a server's
    /// unfinished line) into the line held back.
    fn send(&mut self, bytes: Bytes, permit: OwnedSemaphorePermit) {
        let bytes = match self.output.framing {
            Framing::AsWritten => bytes,
            Framing::WholeLines => {
                self.line.extend_from_slice(&bytes);
                let held = &self.output.held;
                let total = held.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len();
                let end = match self.line.iter().rposition(|byte| *byte == b'\n') {
                    Some(newline) => newline + 1,
                    None if self.line.len() >= WRITE_BUDGET || total > HELD_LINES => {
                        self.line.len()
                    }
                    None => {
                        // The grant goes back: a line held back must not keep others'
                        // writes waiting (a request printing progress without newlines).
                        drop(permit);
                        self.state = State::Idle;
                        return;
                    }
                };
                held.fetch_sub(end, Ordering::Relaxed);
                self.line.split_to(end).freeze()
            }
        };
        let (done, finished) = oneshot::channel();
        let chunk = Chunk {
            bytes,
            done,
            _budget: Some(permit),
            _held: None,
        };
        self.state = match self.output.queue.send(chunk) {
            Ok(()) => State::Writing(finished),
            Err(_) => State::Closed,
        };
    }
}

impl Drop for Port {
    /// The instance ended: its unfinished line goes out as it is.
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let budget = match std::mem::replace(&mut self.state, State::Closed) {
            State::Granted(permit) => Some(permit),
            // The line goes out even when the budget is spent: an instance ends only once.
            _ => self.output.budget.clone().try_acquire_owned().ok(),
        };
        // Still counted as held until written, since it may have no budget.
        let held = Held {
            total: self.output.held.clone(),
            bytes: self.line.len(),
        };
        let (done, _) = oneshot::channel();
        let _ = self.output.queue.send(Chunk {
            bytes: self.line.split().freeze(),
            done,
            _budget: budget,
            _held: Some(held),
        });
    }
}

#[async_trait::async_trait]
impl OutputStream for Port {
    fn check_write(&mut self) -> Result<usize, StreamError> {
        self.settle();
        if let Some(error) = self.failure() {
            return Err(error);
        }
        Ok(match &self.state {
            State::Writing(_) => 0,
            State::Granted(_) => WRITE_BUDGET,
            _ => match self.output.budget.clone().try_acquire_owned() {
                Ok(permit) => {
                    self.state = State::Granted(permit);
                    WRITE_BUDGET
                }
                Err(_) => 0,
            },
        })
    }

    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        if let Some(error) = self.failure() {
            return Err(error);
        }
        if bytes.is_empty() {
            return Ok(());
        }
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Granted(permit) if bytes.len() <= WRITE_BUDGET => {
                self.send(bytes, permit);
                Ok(())
            }
            other => {
                self.state = other;
                Err(StreamError::trap(
                    "write of more than check-write permitted",
                ))
            }
        }
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        // Each write is flushed as it is written: readiness waits for that.
        self.settle();
        match self.failure() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl Pollable for Port {
    /// Ready once the last write is written and budget for the next is granted, so that
    /// check-write then grants a write.
    async fn ready(&mut self) {
        self.finish_write().await;
        if let State::Idle = self.state {
            let budget = self.output.budget.clone();
            if let Ok(permit) = budget.acquire_owned().await {
                self.state = State::Granted(permit);
            }
        }
    }
}

impl Port {
    /// Waits for the write in flight (as `AsyncWrite` does) and reports a failure.
    fn poll_written(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let State::Writing(done) = &mut self.state {
            let result = ready!(Pin::new(done).poll(cx))
                .unwrap_or_else(|_| Err(io::ErrorKind::BrokenPipe.into()));
            self.state = match result {
                Ok(()) => State::Idle,
                Err(error) => State::Failed(error),
            };
        }
        Poll::Ready(match std::mem::replace(&mut self.state, State::Closed) {
            State::Failed(error) => Err(error),
            State::Closed => Err(io::ErrorKind::BrokenPipe.into()),
            other => {
                self.state = other;
                Ok(())
            }
        })
    }
}

impl AsyncWrite for Port {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_written(cx))?;
        if let State::Idle = self.state {
            let budget = self.output.budget.clone();
            let acquiring = self
                .acquiring
                .get_or_insert_with(|| Box::pin(budget.acquire_owned()));
            let permit = ready!(acquiring.as_mut().poll(cx))
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
            self.acquiring = None;
            self.state = State::Granted(permit);
        }
        let State::Granted(permit) = std::mem::replace(&mut self.state, State::Idle) else {
            unreachable!("a port that is not writing and not failed has been granted budget")
        };
        let len = buf.len().min(WRITE_BUDGET);
        self.send(Bytes::copy_from_slice(&buf[..len]), permit);
        Poll::Ready(Ok(len))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_written(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;

    /// An output whose reader is the returned end (which holds 16 bytes before writes wait).
    fn output() -> (SharedOutput, DuplexStream) {
        let (writer, reader) = tokio::io::duplex(16);
        (
            SharedOutput::new(Box::new(writer), Framing::AsWritten, false),
            reader,
        )
    }

    /// As a guest's blocking write does: waits until the port is ready, then writes.
    async fn write(port: &mut Box<dyn OutputStream>, text: &str) {
        port.ready().await;
        assert!(port.check_write().unwrap() >= text.len());
        port.write(Bytes::copy_from_slice(text.as_bytes())).unwrap();
        port.flush().unwrap();
    }

    async fn read_exactly(reader: &mut DuplexStream, len: usize) -> String {
        let mut text = vec![0; len];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            reader.read_exact(&mut text),
        )
        .await
        .expect("the output was written")
        .unwrap();
        String::from_utf8(text).unwrap()
    }

    /// The bug this module exists for: while one instance waits for its write to reach a
    /// reader, another instance writes without trapping, and both lines arrive whole, in order.
    #[tokio::test]
    async fn instances_write_while_another_waits() {
        let (output, mut reader) = output();
        let mut first = output.p2_stream();
        let mut second = output.p2_stream();
        let long = format!("{}\n", "a".repeat(100));
        write(&mut first, &long).await;
        let waiting = tokio::spawn(async move {
            first.ready().await;
            first.check_write().unwrap()
        });
        tokio::task::yield_now().await;
        // What trapped: check-write while another instance's readiness waits.
        assert_eq!(second.check_write().unwrap(), WRITE_BUDGET);
        second.write(Bytes::from_static(b"second\n")).unwrap();
        assert_eq!(
            read_exactly(&mut reader, long.len() + 7).await,
            format!("{long}second\n")
        );
        assert_eq!(waiting.await.unwrap(), WRITE_BUDGET);
        second.ready().await;
        assert_eq!(second.check_write().unwrap(), WRITE_BUDGET);
    }

    /// With nobody reading, what may wait in memory is bounded: past the shared budget a port's
    /// check-write grants nothing and its readiness waits; once the reader reads, every write
    /// arrives and none is lost.
    #[tokio::test]
    async fn an_absent_reader_holds_writes_back_without_losing_them() {
        let (output, mut reader) = output();
        let mut ports: Vec<_> = (0..WRITES_WAITING + 6)
            .map(|_| output.p2_stream())
            .collect();
        let mut expected = String::new();
        for (n, port) in ports.iter_mut().take(WRITES_WAITING).enumerate() {
            let line = format!("{n:03}\n");
            write(port, &line).await;
            expected.push_str(&line);
        }
        let mut late = ports.split_off(WRITES_WAITING);
        assert_eq!(late[0].check_write().unwrap(), 0);
        let late_lines = tokio::spawn(async move {
            let mut lines = String::new();
            for (n, port) in late.iter_mut().enumerate() {
                port.ready().await;
                let line = format!("late {n}\n");
                write(port, &line).await;
                lines.push_str(&line);
            }
            lines
        });
        let first = read_exactly(&mut reader, expected.len()).await;
        assert_eq!(first, expected);
        let late = late_lines.await.unwrap();
        assert_eq!(read_exactly(&mut reader, late.len()).await, late);
        drop(ports);
    }

    /// A server's instances pass on whole lines: one instance's line written in pieces is not
    /// spliced into another's, and what an instance leaves unfinished goes out when it ends.
    #[tokio::test]
    async fn a_servers_instances_pass_on_whole_lines() {
        let (writer, mut reader) = tokio::io::duplex(1024);
        let output = SharedOutput::new(Box::new(writer), Framing::WholeLines, false);
        let (mut first, mut second) = (output.p2_stream(), output.p2_stream());
        for piece in ["web", " err: ", "/a"] {
            write(&mut first, piece).await;
        }
        write(&mut second, "admin err: /b\n").await;
        write(&mut first, "\nnext ").await;
        write(&mut first, "line\ntail").await;
        drop(first);
        let expected = "admin err: /b\nweb err: /a\nnext line\ntail";
        assert_eq!(read_exactly(&mut reader, expected.len()).await, expected);
    }

    /// Lines held back hold no budget: a port's write is not kept waiting by others' unfinished
    /// lines, however many.
    #[tokio::test]
    async fn lines_held_back_keep_no_one_waiting() {
        let (writer, mut reader) = tokio::io::duplex(1024);
        let output = SharedOutput::new(Box::new(writer), Framing::WholeLines, false);
        let mut holding: Vec<_> = (0..WRITES_WAITING * 2)
            .map(|_| output.p2_stream())
            .collect();
        for port in &mut holding {
            write(port, "progress...").await;
        }
        let mut port = output.p2_stream();
        write(&mut port, "done\n").await;
        assert_eq!(read_exactly(&mut reader, 5).await, "done\n");
    }

    /// Unfinished lines hold at most [`HELD_LINES`]: past it, a line goes out unfinished, so
    /// a guest opening stream after stream, each left with a partial line, holds no more.
    #[tokio::test]
    async fn unfinished_lines_hold_a_bounded_amount() {
        let (writer, mut reader) = tokio::io::duplex(1 << 16);
        let output = SharedOutput::new(Box::new(writer), Framing::WholeLines, false);
        let reading = tokio::spawn(async move {
            let mut all = Vec::new();
            let _ = reader.read_to_end(&mut all).await;
            all.len()
        });
        let partial = "x".repeat(WRITE_BUDGET - 1);
        for _ in 0..2 * HELD_LINES / partial.len() {
            let mut port = output.p2_stream();
            write(&mut port, &partial).await;
            assert!(output.held.load(Ordering::Relaxed) <= HELD_LINES + WRITE_BUDGET);
            drop(port);
        }
        output.written().await;
        drop(output);
        tokio::task::yield_now().await;
        assert_eq!(
            reading.await.unwrap(),
            2 * HELD_LINES / partial.len() * partial.len(),
            "every byte is written in the end"
        );
    }

    /// A reader that goes away fails the write in flight, and the stream is closed after.
    #[tokio::test]
    async fn a_closed_reader_fails_the_write_then_closes_the_stream() {
        let (output, reader) = output();
        drop(reader);
        let mut port = output.p2_stream();
        write(&mut port, "lost\n").await;
        port.ready().await;
        assert!(matches!(
            port.check_write(),
            Err(StreamError::LastOperationFailed(_))
        ));
        assert!(matches!(port.check_write(), Err(StreamError::Closed)));
        assert!(matches!(
            port.write(Bytes::from_static(b"x")),
            Err(StreamError::Closed)
        ));
    }

    /// A write larger than check-write granted is the guest breaking the protocol: a trap.
    #[tokio::test]
    async fn a_write_without_a_grant_traps() {
        let (output, _reader) = output();
        let mut port = output.p2_stream();
        assert!(matches!(
            port.write(Bytes::from_static(b"x")),
            Err(StreamError::Trap(_))
        ));
        port.check_write().unwrap();
        let too_long = Bytes::from(vec![b'x'; WRITE_BUDGET + 1]);
        assert!(matches!(port.write(too_long), Err(StreamError::Trap(_))));
    }

    /// The async side (what WASI 0.3's stdout uses) writes through the same queue, in order.
    #[tokio::test]
    async fn async_writers_share_the_queue() {
        let (output, mut reader) = output();
        let mut first = Pin::from(output.async_stream());
        let mut second = Pin::from(output.async_stream());
        let writes = tokio::spawn(async move {
            first.write_all(b"one\n").await.unwrap();
            second.write_all(b"two\n").await.unwrap();
            first.write_all(b"three\n").await.unwrap();
            first.flush().await.unwrap();
        });
        assert_eq!(read_exactly(&mut reader, 14).await, "one\ntwo\nthree\n");
        writes.await.unwrap();
    }

    /// `written` returns once the writer has written everything queued.
    #[tokio::test]
    async fn written_waits_for_the_queue() {
        let (output, mut reader) = output();
        let mut port = output.p2_stream();
        write(&mut port, &"x".repeat(40)).await;
        drop(port);
        let reading = tokio::spawn(async move { read_exactly(&mut reader, 40).await });
        tokio::time::timeout(std::time::Duration::from_secs(10), output.written())
            .await
            .expect("the queue drained");
        assert_eq!(reading.await.unwrap().len(), 40);
    }
}
