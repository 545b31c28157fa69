//! WebSocket transport for exec and attach (`v5.channel.k8s.io` and
//! `v4.channel.k8s.io`): RFC 6455 framing written on top of hyper's
//! upgrade.
//!
//! Hand-written rather than tokio-tungstenite: the channel protocol needs
//! only binary, close, ping and pong frames, and writing them here keeps
//! one HTTP stack (hyper) for both transports and adds a single small
//! dependency (`sha1`, for `Sec-WebSocket-Accept`).
//!
//! Channel protocol: every binary message starts with a channel byte
//! (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize). v5 adds the close
//! signal: a message `[255, channel]` from the client ends that channel (it
//! closes stdin); the server never sends one. The error channel carries the
//! same `Status` JSON as SPDY v4.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::Bytes;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

/// WebSocket subprotocols for exec and attach, newest first.
pub const WS_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// WebSocket subprotocols for port-forward.
pub const WS_PORT_FORWARD_PROTOCOLS: &[&str] = &["portforward.k8s.io", "v4.channel.k8s.io"];

/// Channel numbers.
pub mod channel {
    /// stdin (client to server).
    pub const STDIN: u8 = 0;
    /// stdout.
    pub const STDOUT: u8 = 1;
    /// stderr.
    pub const STDERR: u8 = 2;
    /// error / exit status.
    pub const ERROR: u8 = 3;
    /// terminal resize (client to server).
    pub const RESIZE: u8 = 4;
    /// v5 close signal: `[CLOSE, channel]`.
    pub const CLOSE: u8 = 255;
}

const OP_CONT: u8 = 0;
const OP_BINARY: u8 = 2;
const OP_TEXT: u8 = 1;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;
/// Largest message we accept.
const MAX_MESSAGE: usize = 16 << 20;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Something to send.
pub(crate) enum Out {
    /// A binary message.
    Binary(Vec<u8>),
    /// A pong answering a ping.
    Pong(Vec<u8>),
    /// A close frame (1000), then shut the connection; reports when done.
    Close(tokio::sync::oneshot::Sender<()>),
}

/// Encodes one frame; `mask` is required from clients.
pub fn encode_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// A received message.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// Binary or text payload.
    Data(Vec<u8>),
    /// A ping to answer.
    Ping(Vec<u8>),
    /// The peer closed.
    Close,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one message (joining fragments); `None` at end of stream.
pub async fn read_message<R: AsyncRead + Unpin>(rd: &mut R) -> io::Result<Option<Message>> {
    let mut data = Vec::new();
    loop {
        let mut h = [0u8; 2];
        match rd.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let fin = h[0] & 0x80 != 0;
        let op = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let len = match h[1] & 0x7f {
            126 => rd.read_u16().await? as usize,
            127 => rd.read_u64().await? as usize,
            n => n as usize,
        };
        if len > MAX_MESSAGE || data.len() + len > MAX_MESSAGE {
            return Err(bad("WebSocket message over 16 MiB"));
        }
        let mut key = [0u8; 4];
        if masked {
            rd.read_exact(&mut key).await?;
        }
        let mut p = vec![0u8; len];
        rd.read_exact(&mut p).await?;
        if masked {
            for (i, b) in p.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        match op {
            OP_CLOSE => return Ok(Some(Message::Close)),
            OP_PING => return Ok(Some(Message::Ping(p))),
            OP_PONG => continue,
            OP_BINARY | OP_TEXT | OP_CONT => {
                data.extend_from_slice(&p);
                if fin {
                    return Ok(Some(Message::Data(data)));
                }
            }
            _ => return Err(bad("unknown WebSocket opcode")),
        }
    }
}

/// Runs the write side: frames from `rx` until Close.
pub(crate) async fn writer<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Out>,
    client: bool,
) {
    let mask = || client.then(rand::random::<[u8; 4]>);
    while let Some(o) = rx.recv().await {
        let frame = match o {
            Out::Binary(b) => encode_frame(OP_BINARY, &b, mask()),
            Out::Pong(b) => encode_frame(OP_PONG, &b, mask()),
            Out::Close(done) => {
                let _ = wr
                    .write_all(&encode_frame(OP_CLOSE, &1000u16.to_be_bytes(), mask()))
                    .await;
                let _ = wr.flush().await;
                let _ = wr.shutdown().await;
                let _ = done.send(());
                return;
            }
        };
        if wr.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// Reads a channel's payloads as a byte stream.
pub(crate) struct ChannelReader {
    pub(crate) rx: mpsc::UnboundedReceiver<Bytes>,
    pub(crate) pending: Bytes,
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.pending.is_empty() {
            match me.rx.poll_recv(cx) {
                Poll::Ready(Some(b)) => me.pending = b,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = me.pending.len().min(buf.remaining());
        buf.put_slice(&me.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

/// Writes to one channel (stdout or stderr). Shutting it down sends
/// nothing: the v5 close signal goes from client to server only (client-go
/// and crictl discard, and log, a message on channel 255); the client
/// learns that output ended from the error channel and the close frame.
pub(crate) struct ChannelWriter {
    pub(crate) tx: mpsc::UnboundedSender<Out>,
    pub(crate) channel: u8,
    pub(crate) closed: bool,
}

impl ChannelWriter {
    fn close(&mut self) {
        self.closed = true;
    }
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let mut m = Vec::with_capacity(buf.len() + 1);
        m.push(self.channel);
        m.extend_from_slice(buf);
        if self.tx.send(Out::Binary(m)).is_err() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().close();
        Poll::Ready(Ok(()))
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn frames_round_trip_masked_and_long() {
        let mut wire = Vec::new();
        wire.extend(encode_frame(OP_BINARY, b"\x01hi", Some([1, 2, 3, 4])));
        let big = vec![7u8; 70_000];
        wire.extend(encode_frame(OP_BINARY, &big, None));
        wire.extend(encode_frame(OP_PING, b"p", None));
        // A fragmented message: "ab" + "cd".
        let mut first = encode_frame(OP_BINARY, b"ab", None);
        first[0] &= 0x7f;
        wire.extend(first);
        wire.extend(encode_frame(OP_CONT, b"cd", Some([9, 9, 9, 9])));
        wire.extend(encode_frame(OP_CLOSE, &[3, 232], None));
        let mut r = &wire[..];
        assert_eq!(
            read_message(&mut r).await.unwrap(),
            Some(Message::Data(b"\x01hi".to_vec()))
        );
        assert_eq!(
            read_message(&mut r).await.unwrap(),
            Some(Message::Data(big))
        );
        assert_eq!(
            read_message(&mut r).await.unwrap(),
            Some(Message::Ping(b"p".to_vec()))
        );
        assert_eq!(
            read_message(&mut r).await.unwrap(),
            Some(Message::Data(b"abcd".to_vec()))
        );
        assert_eq!(read_message(&mut r).await.unwrap(), Some(Message::Close));
        assert_eq!(read_message(&mut r).await.unwrap(), None);
    }
}
