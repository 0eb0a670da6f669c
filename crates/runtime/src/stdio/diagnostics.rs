//! wasmcell's own lines for a guest's stderr, queued so that no request waits for a reader.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::open;
use wasmcell_workload::Output;

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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use tokio::net::unix::pipe;

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
