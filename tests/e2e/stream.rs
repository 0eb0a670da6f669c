//! Clients of containerd's CRI streaming server, as `kubectl exec` and `kubectl port-forward`
//! reach it through the API server: WebSocket with the `v4.channel.k8s.io` subprotocol, where
//! each binary message is one byte of channel number followed by that channel's data.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The subprotocol kubectl asks for first.
const PROTOCOL: &str = "v4.channel.k8s.io";

/// What an exec printed, and its status as the streaming server reported it.
#[derive(Debug, Default)]
pub struct Streamed {
    /// Channel 1.
    pub stdout: String,
    /// Channel 2.
    pub stderr: String,
    /// Channel 3: a Kubernetes `Status` in JSON (`"status":"Success"`, or a failure with the
    /// exit code as a cause).
    pub status: String,
}

async fn connect(
    url: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let ws = url.replacen("http://", "ws://", 1);
    let mut request = ws.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("WebSocket to {ws}"))?;
    let chosen = response.headers().get("Sec-WebSocket-Protocol");
    if chosen.and_then(|p| p.to_str().ok()) != Some(PROTOCOL) {
        bail!("the streaming server chose protocol {chosen:?}, not {PROTOCOL}");
    }
    Ok(socket)
}

/// Runs an exec session at `url` (from CRI's Exec): sends each of `input` on stdin, one
/// message at a time, waiting for `expect` to appear on stdout after each before the next
/// (an interactive user's pace), and collects everything until the server closes.
pub async fn exec(url: &str, input: &[(&str, &str)]) -> Result<Streamed> {
    let mut socket = connect(url).await?;
    let mut out = Streamed::default();
    let mut pending = input.iter();
    let mut waiting_for: Option<&str> = None;
    loop {
        if waiting_for.is_none_or(|text| out.stdout.contains(text)) {
            waiting_for = None;
            if let Some((line, expect)) = pending.next() {
                let mut message = vec![0u8];
                message.extend_from_slice(line.as_bytes());
                socket.send(Message::binary(message)).await?;
                waiting_for = Some(expect);
            }
        }
        let next = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .with_context(|| format!("exec session went quiet; so far: {out:?}"))?;
        let Some(message) = next else { break };
        match message? {
            Message::Binary(data) if !data.is_empty() => {
                let text = String::from_utf8_lossy(&data[1..]);
                match data[0] {
                    1 => out.stdout.push_str(&text),
                    2 => out.stderr.push_str(&text),
                    3 => out.status.push_str(&text),
                    _ => {}
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(out)
}

/// Forwards one connection to `port` of the pod at `url` (from CRI's PortForward), sends
/// `request` on it and returns what came back once `complete` says it is whole (the streaming
/// server keeps the WebSocket open after the pod's side closes, until its idle timeout).
pub async fn port_forward(
    url: &str,
    port: u16,
    request: &[u8],
    complete: impl Fn(&[u8]) -> bool,
) -> Result<Vec<u8>> {
    let mut socket = connect(&format!("{url}?port={port}")).await?;
    let mut message = vec![0u8];
    message.extend_from_slice(request);
    socket.send(Message::binary(message)).await?;
    let mut reply = Vec::new();
    // Each channel's first message is the port it serves (two bytes, little-endian).
    let mut heard_port = [false, false];
    while !complete(&reply) {
        let next = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .with_context(|| {
                format!(
                    "port-forward went quiet; so far: {}",
                    String::from_utf8_lossy(&reply)
                )
            })?;
        let Some(message) = next else { break };
        match message? {
            Message::Binary(data) if !data.is_empty() => {
                let channel = usize::from(data[0]);
                if channel < 2 && !heard_port[channel] {
                    heard_port[channel] = true;
                    continue;
                }
                match channel {
                    0 => reply.extend_from_slice(&data[1..]),
                    1 => bail!(
                        "port-forward error: {}",
                        String::from_utf8_lossy(&data[1..])
                    ),
                    _ => {}
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(reply)
}
