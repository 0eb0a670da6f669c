//! Connecting a guest's standard streams to what its [`Stdio`] names.

use std::io::IsTerminal;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::AsyncStdinStream;

use crate::error::Error;
use wasmcell_workload::{Input, Output, Stdio};

type Writer = Box<dyn tokio::io::AsyncWrite + Send + Sync + Unpin>;
type Reader = Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>;

/// How long a command's end waits for output still queued for a reader (only writes the guest
/// did not itself wait for can be).
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

mod diagnostics;
mod shared;

pub use diagnostics::Diagnostics;
use shared::{Framing, SharedOutput};

/// Connects a command's standard streams; the outputs returned tell when what the command
/// wrote has reached them.
pub async fn attach(builder: &mut WasiCtxBuilder, stdio: &Stdio) -> Result<Outputs, Error> {
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
    let outputs = Outputs::framed(stdio, Framing::AsWritten).await?;
    outputs.attach(builder);
    Ok(outputs)
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
    Stream(SharedOutput),
}

impl Outputs {
    /// No output: what an instance whose output is not wanted writes to.
    pub const fn null() -> Outputs {
        Outputs {
            stdout: Out::Null,
            stderr: Out::Null,
        }
    }

    /// Opens the output streams `stdio` names for a server, whose instances each pass on
    /// whole lines.
    pub async fn open(stdio: &Stdio) -> Result<Outputs, Error> {
        Outputs::framed(stdio, Framing::WholeLines).await
    }

    async fn framed(stdio: &Stdio, framing: Framing) -> Result<Outputs, Error> {
        let out = async |output: &Output, stream| {
            Ok::<_, Error>(match (output, framing) {
                (Output::Null, _) => Out::Null,
                // A command writes to the terminal directly (a prompt shows before its input).
                (Output::Inherit, Framing::AsWritten) => Out::Inherit,
                (Output::Inherit, Framing::WholeLines) => {
                    let (writer, terminal): (Writer, _) = if stream == "stdout" {
                        (
                            Box::new(tokio::io::stdout()),
                            std::io::stdout().is_terminal(),
                        )
                    } else {
                        (
                            Box::new(tokio::io::stderr()),
                            std::io::stderr().is_terminal(),
                        )
                    };
                    Out::Stream(SharedOutput::new(writer, framing, terminal))
                }
                (other, _) => Out::Stream(SharedOutput::new(
                    open(other, stream).await?,
                    framing,
                    false,
                )),
            })
        };
        Ok(Outputs {
            stdout: out(&stdio.stdout, "stdout").await?,
            stderr: out(&stdio.stderr, "stderr").await?,
        })
    }

    /// Waits (at most [`DRAIN`]) until everything written to these streams so far has been
    /// written out: before a command's process ends, which would lose what was still queued.
    pub async fn written(&self) {
        let written = async {
            for out in [&self.stdout, &self.stderr] {
                if let Out::Stream(stream) = out {
                    stream.written().await;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN, written).await;
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
