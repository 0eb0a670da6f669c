//! Connecting a guest's standard streams to what its [`Stdio`] names.

use std::path::Path;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream};

use crate::error::Error;
use crate::workload::{Input, Output, Stdio};

/// How much a guest may write ahead of a slow reader before its writes wait.
const WRITE_BUDGET: usize = 64 * 1024;

type Writer = Box<dyn tokio::io::AsyncWrite + Send + Sync + Unpin>;

/// Opens the streams of `stdio` and hands them to the guest's WASI context.
pub(crate) async fn attach(builder: &mut WasiCtxBuilder, stdio: &Stdio) -> Result<(), Error> {
    match &stdio.stdin {
        Input::Null => {}
        Input::Inherit => {
            builder.inherit_stdin();
        }
        Input::Fifo(path) => {
            let fifo = pipe::OpenOptions::new()
                .open_receiver(path)
                .map_err(|source| Error::Stdio {
                    stream: "stdin",
                    path: path.clone(),
                    source,
                })?;
            builder.stdin(AsyncStdinStream::new(fifo));
        }
    }
    match &stdio.stdout {
        Output::Null => {}
        Output::Inherit => {
            builder.inherit_stdout();
        }
        out => {
            builder.stdout(AsyncStdoutStream::new(
                WRITE_BUDGET,
                open(out, "stdout").await?,
            ));
        }
    }
    match &stdio.stderr {
        Output::Null => {}
        Output::Inherit => {
            builder.inherit_stderr();
        }
        out => {
            builder.stderr(AsyncStdoutStream::new(
                WRITE_BUDGET,
                open(out, "stderr").await?,
            ));
        }
    }
    Ok(())
}

/// Writes a line from wasmcell itself (why a guest ended) to the guest's stderr, so the user
/// sees it where they see the guest's own output.
pub(crate) async fn report(stderr: &Output, message: &str) {
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
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Stdio {
            stream,
            path,
            source,
        }
    };
    Ok(match output {
        // Opened read-write, as runc's shim does: the FIFO then always has a reader, so the
        // guest's writes wait for containerd instead of failing with EPIPE when no client is
        // attached (e.g. after `ctr run -d`), and `ctr task attach` picks the stream up later.
        Output::Fifo(path) => Box::new(
            pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(path)
                .map_err(err(path))?,
        ),
        Output::File(path) => Box::new(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
                .map_err(err(path))?,
        ),
        Output::Null | Output::Inherit => unreachable!("{stream}: only FIFOs and files are opened"),
    })
}
