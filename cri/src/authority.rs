//! Any `:authority` on the CRI socket. gRPC C-core clients (Python's grpcio
//! with its default options; the C++ agents of Falco and Sysdig) send the
//! unix socket's path, percent-encoded or not, as the HTTP/2 `:authority`
//! of every call. That is no valid authority, and the HTTP/2 server under
//! tonic (h2) resets such a stream with PROTOCOL_ERROR before any handler
//! runs; containerd and CRI-O (grpc-go) ignore it, as a unix socket has no
//! authority to check.
//!
//! So the bytes a client sends pass through [`AnyAuthority`] on their way
//! to the server: every header block (HEADERS and its CONTINUATIONs) is
//! decoded with the client's HPACK state, an invalid `:authority` becomes
//! `localhost`, and the block is encoded again with an HPACK state of our
//! own, which the server's decoder follows from the connection's start.
//! Every other frame passes unchanged, as do the server's replies.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame the server accepts until it says otherwise (RFC 9113
/// §6.5.2, the initial SETTINGS_MAX_FRAME_SIZE): re-encoded blocks are
/// split at this size.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this (over all its frames) ends the
/// connection: the server's own limit is far below.
const MAX_BLOCK: usize = 1 << 20;
/// What replaces an `:authority` that is not one.
const LOCALHOST: &[u8] = b"localhost";

/// A HEADERS frame whose block goes on in CONTINUATION frames.
struct PendingBlock {
    stream: u32,
    /// The HEADERS frame's flags.
    flags: u8,
    /// Its priority fields (PRIORITY flag), passed on as they are.
    priority: Option<[u8; 5]>,
    /// The header block so far.
    block: Vec<u8>,
}

/// The client's HTTP/2 stream, header blocks re-encoded with any invalid
/// `:authority` replaced. Pure: bytes in, bytes out.
pub struct AuthorityRewriter {
    /// Preface bytes still to pass.
    preface_left: usize,
    /// Bytes of the current non-header frame still to pass unchanged.
    passing: usize,
    /// The header block being assembled (waiting for END_HEADERS).
    pending: Option<PendingBlock>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
}

impl Default for AuthorityRewriter {
    fn default() -> Self {
        AuthorityRewriter {
            preface_left: PREFACE.len(),
            passing: 0,
            pending: None,
            decoder: loona_hpack::Decoder::new(),
            encoder: loona_hpack::Encoder::new(),
        }
    }
}

fn protocol_error(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl AuthorityRewriter {
    /// Moves what `input` holds of the client's stream to `out`, rewriting
    /// complete header blocks; an incomplete frame header or header frame
    /// stays in `input` until more bytes come.
    pub fn feed(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> io::Result<()> {
        loop {
            if self.preface_left > 0 || self.passing > 0 {
                let left = self.preface_left.max(self.passing);
                let n = left.min(input.len());
                if n == 0 {
                    return Ok(());
                }
                out.put(input.split_to(n));
                if self.preface_left > 0 {
                    self.preface_left -= n;
                } else {
                    self.passing -= n;
                }
                continue;
            }
            if input.len() < FRAME_HEADER {
                return Ok(());
            }
            let len = u32::from_be_bytes([0, input[0], input[1], input[2]]) as usize;
            let (typ, flags) = (input[3], input[4]);
            let stream = u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & 0x7fff_ffff;
            if typ != HEADERS && typ != CONTINUATION && self.pending.is_none() {
                self.passing = FRAME_HEADER + len;
                continue;
            }
            if len > MAX_BLOCK {
                return Err(protocol_error(format!("a header frame of {len} bytes")));
            }
            if input.len() < FRAME_HEADER + len {
                return Ok(());
            }
            input.advance(FRAME_HEADER);
            let payload = input.split_to(len);
            self.header_frame(typ, flags, stream, &payload, out)?;
        }
    }

    fn header_frame(
        &mut self,
        typ: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> io::Result<()> {
        let fragment = match (typ, &mut self.pending) {
            (HEADERS, None) => {
                let mut p = payload;
                let pad = if flags & PADDED != 0 {
                    let pad = usize::from(*p.first().unwrap_or(&0));
                    p = p.get(1..).unwrap_or_default();
                    pad
                } else {
                    0
                };
                let priority = match flags & PRIORITY {
                    0 => None,
                    _ => {
                        let fields: [u8; 5] =
                            p.get(..5).and_then(|f| f.try_into().ok()).ok_or_else(|| {
                                protocol_error("HEADERS too short for its priority".into())
                            })?;
                        p = &p[5..];
                        Some(fields)
                    }
                };
                let end = p.len().checked_sub(pad).ok_or_else(|| {
                    protocol_error("HEADERS padding longer than the frame".into())
                })?;
                self.pending = Some(PendingBlock {
                    stream,
                    flags,
                    priority,
                    block: Vec::new(),
                });
                &p[..end]
            }
            (CONTINUATION, Some(pending)) if pending.stream == stream => payload,
            _ => {
                return Err(protocol_error(format!(
                    "frame type {typ} on stream {stream} inside a header block"
                )));
            }
        };
        let pending = self.pending.as_mut().expect("set above");
        pending.block.extend_from_slice(fragment);
        if pending.block.len() > MAX_BLOCK {
            return Err(protocol_error("a header block over 1 MiB".into()));
        }
        if flags & END_HEADERS == 0 {
            return Ok(());
        }
        let PendingBlock {
            flags: first_flags,
            priority,
            block,
            ..
        } = self.pending.take().expect("set above");
        let headers = self
            .decoder
            .decode(&block)
            .map_err(|e| protocol_error(format!("HPACK: {e}")))?;
        let headers = headers.into_iter().map(|(name, value)| {
            let invalid =
                name == b":authority" && http::uri::Authority::try_from(value.as_slice()).is_err();
            (name, if invalid { LOCALHOST.to_vec() } else { value })
        });
        let headers: Vec<(Vec<u8>, Vec<u8>)> = headers.collect();
        let mut encoded = Vec::new();
        if let Some(fields) = priority {
            encoded.extend_from_slice(&fields);
        }
        self.encoder
            .encode_into(
                headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
                &mut encoded,
            )
            .map_err(|e| protocol_error(format!("HPACK: {e}")))?;
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut typ = HEADERS;
        let mut flags = first_flags & (END_STREAM | PRIORITY);
        while let Some(chunk) = chunks.next() {
            if chunks.peek().is_none() {
                flags |= END_HEADERS;
            }
            out.put_uint(chunk.len() as u64, 3);
            out.put_u8(typ);
            out.put_u8(flags);
            out.put_u32(stream);
            out.put_slice(chunk);
            typ = CONTINUATION;
            flags = 0;
        }
        Ok(())
    }
}

/// A server-side connection whose client bytes go through an
/// [`AuthorityRewriter`]; writes pass unchanged.
pub struct AnyAuthority<S> {
    inner: S,
    rewriter: AuthorityRewriter,
    raw: BytesMut,
    ready: BytesMut,
}

impl<S> AnyAuthority<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        AnyAuthority {
            inner,
            rewriter: AuthorityRewriter::default(),
            raw: BytesMut::new(),
            ready: BytesMut::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AnyAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        while me.ready.is_empty() {
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut me.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream: what is left is an incomplete frame the
                // server will see cut as the client cut it.
                let rest = me.raw.split();
                me.ready.put(rest);
                break;
            }
            me.raw.extend_from_slice(read.filled());
            me.rewriter.feed(&mut me.raw, &mut me.ready)?;
        }
        let n = me.ready.len().min(buf.remaining());
        buf.put_slice(&me.ready.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnyAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AnyAuthority<S>
{
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(typ: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([typ, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    /// Splits a rewritten stream into (type, flags, stream, payload).
    fn frames(mut b: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut v = Vec::new();
        while b.len() >= FRAME_HEADER {
            let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
            let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
            v.push((b[3], b[4], stream, b[9..9 + len].to_vec()));
            b = &b[9 + len..];
        }
        v
    }

    fn request(authority: &[u8]) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (&b":method"[..], b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", b"/runtime.v1.RuntimeService/Version".to_vec()),
            (b":authority", authority.to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
        ]
    }

    /// Two calls from one client HPACK state (the second refers to the
    /// first's dynamic table entries), one header block split over HEADERS
    /// and CONTINUATION, padding and priority, fed a byte at a time: the
    /// server's decoder sees every header as sent but the authority.
    #[test]
    fn invalid_authorities_become_localhost_and_the_rest_is_kept() {
        let mut client = loona_hpack::Encoder::new();
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[]));
        for (stream, authority) in [
            (1u32, &b"%2Frun%2Fcarrack.sock"[..]),
            (3, b"/run/carrack.sock"),
        ] {
            let block = client.encode(request(authority).iter().map(|(n, v)| (*n, v.as_slice())));
            let (a, b) = block.split_at(block.len() / 2);
            // PADDED + PRIORITY: pad length, 5 priority bytes, fragment, padding.
            let mut first = vec![2];
            first.extend([0, 0, 0, 0, 16]);
            first.extend(a);
            first.extend([0, 0]);
            wire.extend(frame(
                HEADERS,
                PADDED | PRIORITY | END_STREAM,
                stream,
                &first,
            ));
            wire.extend(frame(CONTINUATION, END_HEADERS, stream, b));
            wire.extend(frame(0x0, END_STREAM, stream, &[0, 0, 0, 0, 0]));
        }
        let valid = client.encode(
            request(b"localhost:1234")
                .iter()
                .map(|(n, v)| (*n, v.as_slice())),
        );
        wire.extend(frame(HEADERS, END_HEADERS, 5, &valid));

        let mut rewriter = AuthorityRewriter::default();
        let (mut input, mut out) = (BytesMut::new(), BytesMut::new());
        for b in &wire {
            input.put_u8(*b);
            rewriter.feed(&mut input, &mut out).unwrap();
        }
        assert!(input.is_empty());
        assert!(out.starts_with(PREFACE));
        let mut server = loona_hpack::Decoder::new();
        let got = frames(&out[PREFACE.len()..]);
        let kinds: Vec<(u8, u8, u32)> = got.iter().map(|f| (f.0, f.1, f.2)).collect();
        let hp = HEADERS;
        let (eh, es, pr) = (END_HEADERS, END_STREAM, PRIORITY);
        assert_eq!(
            kinds,
            [
                (0x4, 0, 0),
                (hp, eh | es | pr, 1),
                (0, es, 1),
                (hp, eh | es | pr, 3),
                (0, es, 3),
                (hp, eh, 5)
            ]
        );
        for (i, want) in [
            (1, &b"localhost"[..]),
            (3, b"localhost"),
            (5, b"localhost:1234"),
        ] {
            let payload = &got[i].3;
            let block = if got[i].1 & PRIORITY != 0 {
                assert_eq!(payload[..5], [0, 0, 0, 0, 16]);
                &payload[5..]
            } else {
                &payload[..]
            };
            let headers = server.decode(block).unwrap();
            let mut expected = request(want);
            expected.sort();
            let mut headers: Vec<(&[u8], Vec<u8>)> = headers
                .iter()
                .map(|(n, v)| (n.as_slice(), v.clone()))
                .collect();
            headers.sort();
            let expected: Vec<(&[u8], Vec<u8>)> = expected.into_iter().collect();
            assert_eq!(headers, expected);
        }
        assert_eq!(got[2].3, [0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_block_that_does_not_decode_is_an_error() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ));
        let mut input = BytesMut::from(&wire[..]);
        let err = AuthorityRewriter::default().feed(&mut input, &mut BytesMut::new());
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
