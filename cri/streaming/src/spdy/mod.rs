//! SPDY/3.1 sessions: the framing in [`frame`] plus a multiplexing
//! connection ([`Session`]) with stream handles that implement tokio's
//! `AsyncRead`/`AsyncWrite`.
//!
//! Flow control: every DATA frame received is credited back at once with a
//! stream and a session WINDOW_UPDATE (data is handed to an unbounded
//! per-stream queue), so a strict SPDY/3.1 peer never stalls. Outgoing data
//! is not held back by the peer's windows: the Kubernetes clients
//! (`spdystream`) speak SPDY/3 without flow control and never send
//! WINDOW_UPDATE, so honouring windows would deadlock every exec that
//! prints more than 64 KiB.

pub mod frame;

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use frame::{Decoded, FLAG_FIN, Frame, Headers};

/// Largest DATA payload we send.
const MAX_DATA_CHUNK: usize = 32 * 1024;

enum Cmd {
    Frame(Frame),
    /// Flush and shut the write side, then report.
    Close(oneshot::Sender<()>),
}

/// What a stream's read side receives: the peer's data, or an error when
/// the connection ended before the peer's FIN.
type Chunk = io::Result<Bytes>;

struct StreamSlot {
    data: mpsc::UnboundedSender<Chunk>,
    reply: Option<oneshot::Sender<Headers>>,
}

struct Shared {
    streams: Mutex<HashMap<u32, StreamSlot>>,
}

/// A SPDY stream the peer opened.
pub struct IncomingStream {
    /// Headers of its SYN_STREAM.
    pub headers: Headers,
    /// The stream.
    pub stream: Stream,
}

/// A SPDY/3.1 session over one byte stream.
#[derive(Clone)]
pub struct Session {
    tx: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
    next_id: Arc<Mutex<u32>>,
    reader: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Session {
    /// Starts the session's reader and writer tasks. `client` picks odd
    /// stream ids for streams we open. Streams the peer opens arrive on the
    /// returned receiver; it ends when the connection does.
    pub fn start<T>(io: T, client: bool) -> (Self, mpsc::UnboundedReceiver<IncomingStream>)
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, mut wr) = tokio::io::split(io);
        let (tx, mut rx) = mpsc::unbounded_channel::<Cmd>();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            streams: Mutex::new(HashMap::new()),
        });
        tokio::spawn(async move {
            let Ok(mut enc) = frame::HeaderEncoder::new() else {
                return;
            };
            let mut buf = BytesMut::new();
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    Cmd::Frame(f) => {
                        buf.clear();
                        if frame::encode(&f, &mut enc, &mut buf).is_err()
                            || wr.write_all(&buf).await.is_err()
                        {
                            break;
                        }
                    }
                    Cmd::Close(done) => {
                        let _ = wr.flush().await;
                        let _ = wr.shutdown().await;
                        let _ = done.send(());
                        return;
                    }
                }
            }
            let _ = wr.shutdown().await;
        });
        let session = Self {
            tx: tx.clone(),
            shared: shared.clone(),
            next_id: Arc::new(Mutex::new(if client { 1 } else { 2 })),
            reader: Arc::new(Mutex::new(None)),
        };
        let reader_session = session.clone();
        let reader = tokio::spawn(async move {
            let _ = reader_session.read_loop(rd, in_tx).await;
            // Connection gone: every stream still open ends in an error,
            // not as if the peer had finished it.
            for (id, slot) in reader_session.shared.streams.lock().unwrap().drain() {
                let _ = slot.data.send(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the connection ended before the end of SPDY stream {id}"),
                )));
            }
        });
        *session.reader.lock().unwrap() = Some(reader);
        (session, in_rx)
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        &self,
        mut rd: R,
        incoming: mpsc::UnboundedSender<IncomingStream>,
    ) -> Result<(), frame::FrameError> {
        let mut dec = frame::HeaderDecoder::new();
        let mut buf = BytesMut::with_capacity(16 * 1024);
        loop {
            loop {
                match frame::decode(&mut buf, &mut dec)? {
                    Decoded::Frame(f) => self.dispatch(f, &incoming),
                    Decoded::Skipped => {}
                    Decoded::Incomplete => break,
                }
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 * 1024);
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
        }
    }

    fn dispatch(&self, f: Frame, incoming: &mpsc::UnboundedSender<IncomingStream>) {
        match f {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                let (dtx, drx) = mpsc::unbounded_channel();
                let mut streams = self.shared.streams.lock().unwrap();
                if streams.contains_key(&stream_id) {
                    drop(streams);
                    self.send(Frame::RstStream {
                        stream_id,
                        status: frame::rst::PROTOCOL_ERROR,
                    });
                    return;
                }
                if flags & FLAG_FIN == 0 {
                    streams.insert(
                        stream_id,
                        StreamSlot {
                            data: dtx,
                            reply: None,
                        },
                    );
                }
                drop(streams);
                let stream = Stream::new(self.clone(), stream_id, drx);
                let _ = incoming.send(IncomingStream { headers, stream });
            }
            Frame::SynReply {
                stream_id, headers, ..
            } => {
                let mut streams = self.shared.streams.lock().unwrap();
                if let Some(r) = streams.get_mut(&stream_id).and_then(|s| s.reply.take()) {
                    let _ = r.send(headers);
                }
            }
            Frame::Data {
                stream_id,
                flags,
                payload,
            } => {
                let len = payload.len() as u32;
                let mut streams = self.shared.streams.lock().unwrap();
                if let Some(s) = streams.get(&stream_id) {
                    if !payload.is_empty() {
                        let _ = s.data.send(Ok(payload));
                    }
                    if flags & FLAG_FIN != 0 {
                        streams.remove(&stream_id);
                    }
                }
                drop(streams);
                if len > 0 {
                    self.send(Frame::WindowUpdate {
                        stream_id,
                        delta: len,
                    });
                    self.send(Frame::WindowUpdate {
                        stream_id: 0,
                        delta: len,
                    });
                }
            }
            Frame::RstStream { stream_id, .. } => {
                self.shared.streams.lock().unwrap().remove(&stream_id);
            }
            Frame::Ping { id } => self.send(Frame::Ping { id }),
            Frame::GoAway { .. } | Frame::Settings { .. } | Frame::WindowUpdate { .. } => {}
            Frame::Headers {
                stream_id, flags, ..
            } => {
                if flags & FLAG_FIN != 0 {
                    self.shared.streams.lock().unwrap().remove(&stream_id);
                }
            }
        }
    }

    fn send(&self, f: Frame) {
        let _ = self.tx.send(Cmd::Frame(f));
    }

    /// Opens a stream with `headers` and waits for the peer's SYN_REPLY.
    pub async fn open(&self, headers: Headers) -> io::Result<Stream> {
        let (dtx, drx) = mpsc::unbounded_channel();
        let (rtx, rrx) = oneshot::channel();
        let stream_id = {
            let mut n = self.next_id.lock().unwrap();
            let id = *n;
            *n += 2;
            id
        };
        self.shared.streams.lock().unwrap().insert(
            stream_id,
            StreamSlot {
                data: dtx,
                reply: Some(rtx),
            },
        );
        self.send(Frame::SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers,
        });
        rrx.await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("SPDY stream {stream_id} was refused or the connection closed"),
            )
        })?;
        Ok(Stream::new(self.clone(), stream_id, drx))
    }

    /// Flushes everything queued, closes the connection's write side, ends
    /// our streams' read sides, and reads (discarding) until the peer closes
    /// too or [`crate::CLOSE_LINGER`] has passed, which releases the connection.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        self.shared.streams.lock().unwrap().clear();
        let reader = self.reader.lock().unwrap().take();
        if let Some(r) = reader {
            crate::linger(r).await;
        }
    }
}

/// One SPDY stream: `AsyncRead` yields the peer's data until its FIN,
/// `AsyncWrite` sends DATA frames and `shutdown` sends our FIN.
pub struct Stream {
    session: Session,
    id: u32,
    rx: mpsc::UnboundedReceiver<Chunk>,
    pending: Bytes,
    fin_sent: bool,
}

impl Stream {
    fn new(session: Session, id: u32, rx: mpsc::UnboundedReceiver<Chunk>) -> Self {
        Self {
            session,
            id,
            rx,
            pending: Bytes::new(),
            fin_sent: false,
        }
    }

    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Accepts a peer-opened stream (SYN_REPLY with no headers).
    pub fn reply(&self) {
        self.session.send(Frame::SynReply {
            stream_id: self.id,
            flags: 0,
            headers: vec![],
        });
    }

    /// Refuses or aborts the stream.
    pub fn reset(&mut self, status: u32) {
        self.fin_sent = true;
        self.session.send(Frame::RstStream {
            stream_id: self.id,
            status,
        });
    }

    /// Sends `data` (split into frames) without waiting.
    pub fn send(&self, data: &[u8]) {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            self.session.send(Frame::Data {
                stream_id: self.id,
                flags: 0,
                payload: Bytes::copy_from_slice(chunk),
            });
        }
    }

    /// Sends our FIN (once).
    pub fn finish(&mut self) {
        if !self.fin_sent {
            self.fin_sent = true;
            self.session.send(Frame::Data {
                stream_id: self.id,
                flags: FLAG_FIN,
                payload: Bytes::new(),
            });
        }
    }

    /// Splits into independently owned read and write halves.
    pub fn split(mut self) -> (StreamReader, StreamWriter) {
        let w = StreamWriter {
            session: self.session.clone(),
            id: self.id,
            fin_sent: self.fin_sent,
        };
        // The writer half now owns our FIN.
        self.fin_sent = true;
        let (_, dead) = mpsc::unbounded_channel();
        let r = StreamReader {
            rx: std::mem::replace(&mut self.rx, dead),
            pending: std::mem::take(&mut self.pending),
        };
        (r, w)
    }
}

fn poll_read_chan(
    rx: &mut mpsc::UnboundedReceiver<Chunk>,
    pending: &mut Bytes,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    if pending.is_empty() {
        match rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => *pending = b,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
            Poll::Ready(None) => return Poll::Ready(Ok(())),
            Poll::Pending => return Poll::Pending,
        }
    }
    let n = pending.len().min(buf.remaining());
    buf.put_slice(&pending.split_to(n));
    Poll::Ready(Ok(()))
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        poll_read_chan(&mut me.rx, &mut me.pending, cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.fin_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        self.send(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().finish();
        Poll::Ready(Ok(()))
    }
}

/// Read half of a [`Stream`].
pub struct StreamReader {
    rx: mpsc::UnboundedReceiver<Chunk>,
    pending: Bytes,
}

impl AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        poll_read_chan(&mut me.rx, &mut me.pending, cx, buf)
    }
}

/// Write half of a [`Stream`]; `shutdown` sends FIN.
pub struct StreamWriter {
    session: Session,
    id: u32,
    fin_sent: bool,
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.fin_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        for chunk in buf.chunks(MAX_DATA_CHUNK) {
            self.session.send(Frame::Data {
                stream_id: self.id,
                flags: 0,
                payload: Bytes::copy_from_slice(chunk),
            });
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.fin_sent {
            me.fin_sent = true;
            me.session.send(Frame::Data {
                stream_id: me.id,
                flags: FLAG_FIN,
                payload: Bytes::new(),
            });
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if !self.fin_sent {
            self.fin_sent = true;
            self.session.send(Frame::Data {
                stream_id: self.id,
                flags: FLAG_FIN,
                payload: Bytes::new(),
            });
        }
    }
}
