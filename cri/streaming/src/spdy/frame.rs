//! SPDY/3.1 framing: control frames, data frames and the zlib-compressed
//! header block with the fixed SPDY/3 dictionary.
//!
//! Hand-written because no maintained Rust crate speaks SPDY, which the
//! Kubernetes clients (`k8s.io/apimachinery`'s `spdystream`) still use for
//! exec, attach and port-forward. Header compression uses `flate2` with its
//! `zlib-rs` backend, the pure-Rust zlib that supports preset dictionaries
//! (`miniz_oxide`, flate2's default, does not).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// SPDY protocol version carried in every control frame.
pub const VERSION: u16 = 3;
/// Flag on SYN_STREAM, SYN_REPLY, HEADERS and data frames: the sender is done.
pub const FLAG_FIN: u8 = 0x01;
/// Largest frame payload we accept (the 24-bit length field allows 16 MiB).
pub const MAX_FRAME_LEN: usize = 0x00ff_ffff;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes (SPDY/3 section 2.6.3).
pub mod rst {
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// INVALID_STREAM.
    pub const INVALID_STREAM: u32 = 2;
    /// REFUSED_STREAM.
    pub const REFUSED_STREAM: u32 = 3;
    /// CANCEL.
    pub const CANCEL: u32 = 5;
}

/// Header name/value pairs; names are lower-case, repeated values of one name
/// are separate entries (joined with NUL on the wire).
pub type Headers = Vec<(String, String)>;

/// One SPDY/3.1 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// New stream's id (odd from the client, even from the server).
        stream_id: u32,
        /// Associated stream, 0 for none.
        associated_to: u32,
        /// Priority 0 (highest) to 7.
        priority: u8,
        /// FLAG_FIN and FLAG_UNIDIRECTIONAL.
        flags: u8,
        /// Header block.
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// Stream being accepted.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// Header block.
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// Stream being reset.
        stream_id: u32,
        /// Status code, see [`rst`].
        status: u32,
    },
    /// Session settings: (flags, id, value) entries.
    Settings {
        /// FLAG_SETTINGS_CLEAR_SETTINGS.
        flags: u8,
        /// Entries as (entry flags, id, value).
        entries: Vec<(u8, u32, u32)>,
    },
    /// Liveness check, echoed by the receiver.
    Ping {
        /// Opaque id.
        id: u32,
    },
    /// The sender will open no more streams.
    GoAway {
        /// Last stream the sender processed.
        last_good_stream_id: u32,
        /// 0 OK, 1 protocol error, 2 internal error.
        status: u32,
    },
    /// Extra headers on an open stream.
    Headers {
        /// Stream.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// Header block.
        headers: Headers,
    },
    /// Flow-control credit.
    WindowUpdate {
        /// Stream, or 0 for the whole session (SPDY/3.1).
        stream_id: u32,
        /// Bytes of credit.
        delta: u32,
    },
    /// Payload for a stream.
    Data {
        /// Stream.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// Bytes.
        payload: Bytes,
    },
}

/// A framing or header-block error.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A control frame named a SPDY version other than 3.
    #[error("SPDY control frame version {0}, expected 3")]
    Version(u16),
    /// A frame is shorter than its type requires.
    #[error("SPDY frame type {kind} has {len} bytes of payload, expected at least {need}")]
    Short {
        /// Frame type.
        kind: u16,
        /// Payload length.
        len: usize,
        /// Bytes required.
        need: usize,
    },
    /// The header block did not inflate with the SPDY/3 dictionary.
    #[error("SPDY header block does not decompress: {0}")]
    Inflate(String),
    /// The header block's deflate failed.
    #[error("SPDY header block does not compress: {0}")]
    Deflate(String),
    /// The decompressed header block is malformed.
    #[error("SPDY header block is malformed: {0}")]
    HeaderBlock(&'static str),
}

/// Length-prefixed words at the start of the SPDY/3 header dictionary
/// (SPDY/3 section 2.6.10.1).
const DICT_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The raw tail of the SPDY/3 header dictionary.
const DICT_TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

/// The SPDY/3 zlib dictionary (1423 bytes).
pub fn dictionary() -> &'static [u8] {
    static DICT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DICT.get_or_init(|| {
        let mut d = Vec::with_capacity(1423);
        for w in DICT_WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(DICT_TAIL.as_bytes());
        d
    })
}

/// One direction's header compressor (a single zlib stream per session).
pub struct HeaderEncoder {
    z: Compress,
}

impl HeaderEncoder {
    /// A compressor primed with the SPDY/3 dictionary.
    pub fn new() -> Result<Self, FrameError> {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(dictionary())
            .map_err(|e| FrameError::Deflate(e.to_string()))?;
        Ok(Self { z })
    }

    /// Serialises and compresses one header block (sync-flushed).
    pub fn encode(&mut self, headers: &Headers) -> Result<Vec<u8>, FrameError> {
        let raw = raw_header_block(headers);
        let mut out = Vec::with_capacity(raw.len() + 64);
        let start_in = self.z.total_in();
        loop {
            let consumed = (self.z.total_in() - start_in) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            self.z
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| FrameError::Deflate(e.to_string()))?;
            let consumed = (self.z.total_in() - start_in) as usize;
            // A sync flush is complete once all input is consumed and the
            // output buffer was not filled to the brim.
            if consumed == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// One direction's header decompressor.
pub struct HeaderDecoder {
    z: Decompress,
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderDecoder {
    /// A decompressor that supplies the SPDY/3 dictionary when asked.
    pub fn new() -> Self {
        Self {
            z: Decompress::new(true),
        }
    }

    /// Inflates and parses one header block.
    pub fn decode(&mut self, block: &[u8]) -> Result<Headers, FrameError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let start_in = self.z.total_in();
        loop {
            let consumed = (self.z.total_in() - start_in) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            match self
                .z
                .decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(dictionary())
                        .map_err(|e| FrameError::Inflate(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(FrameError::Inflate(e.to_string())),
            }
            let consumed = (self.z.total_in() - start_in) as usize;
            if consumed == block.len() && out.len() < out.capacity() {
                break;
            }
        }
        parse_header_block(&out)
    }
}

/// The uncompressed header block: count, then (len, name, len, value) pairs.
/// Repeated names are merged with NUL separators.
pub fn raw_header_block(headers: &Headers) -> Vec<u8> {
    let mut merged: Vec<(String, String)> = Vec::new();
    for (k, v) in headers {
        let k = k.to_ascii_lowercase();
        match merged.iter_mut().find(|(mk, _)| *mk == k) {
            Some((_, mv)) => {
                mv.push('\0');
                mv.push_str(v);
            }
            None => merged.push((k, v.clone())),
        }
    }
    let mut b = Vec::new();
    b.extend_from_slice(&(merged.len() as u32).to_be_bytes());
    for (k, v) in &merged {
        b.extend_from_slice(&(k.len() as u32).to_be_bytes());
        b.extend_from_slice(k.as_bytes());
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    b
}

/// Parses an uncompressed header block.
pub fn parse_header_block(mut b: &[u8]) -> Result<Headers, FrameError> {
    fn take<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], FrameError> {
        if b.len() < 4 {
            return Err(FrameError::HeaderBlock("truncated length"));
        }
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if b.len() - 4 < n {
            return Err(FrameError::HeaderBlock("length past the end of the block"));
        }
        let s = &b[4..4 + n];
        *b = &b[4 + n..];
        Ok(s)
    }
    if b.len() < 4 {
        return Err(FrameError::HeaderBlock("missing pair count"));
    }
    let count = b.get_u32() as usize;
    let mut h = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let k = take(&mut b)?;
        let v = take(&mut b)?;
        let k = std::str::from_utf8(k).map_err(|_| FrameError::HeaderBlock("name not UTF-8"))?;
        if k.is_empty() {
            return Err(FrameError::HeaderBlock("empty header name"));
        }
        let v = std::str::from_utf8(v).map_err(|_| FrameError::HeaderBlock("value not UTF-8"))?;
        for part in v.split('\0') {
            h.push((k.to_ascii_lowercase(), part.to_string()));
        }
    }
    Ok(h)
}

/// First value of header `name` (lower-case).
pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32(((flags as u32) << 24) | (len as u32 & 0x00ff_ffff));
}

/// Appends `frame` to `out`, compressing header blocks with `enc`.
pub fn encode(
    frame: &Frame,
    enc: &mut HeaderEncoder,
    out: &mut BytesMut,
) -> Result<(), FrameError> {
    match frame {
        Frame::SynStream {
            stream_id,
            associated_to,
            priority,
            flags,
            headers,
        } => {
            let block = enc.encode(headers)?;
            control(out, TYPE_SYN_STREAM, *flags, 10 + block.len());
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(associated_to & 0x7fff_ffff);
            out.put_u8((priority & 7) << 5);
            out.put_u8(0);
            out.put_slice(&block);
        }
        Frame::SynReply {
            stream_id,
            flags,
            headers,
        }
        | Frame::Headers {
            stream_id,
            flags,
            headers,
        } => {
            let kind = if matches!(frame, Frame::SynReply { .. }) {
                TYPE_SYN_REPLY
            } else {
                TYPE_HEADERS
            };
            let block = enc.encode(headers)?;
            control(out, kind, *flags, 4 + block.len());
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_slice(&block);
        }
        Frame::RstStream { stream_id, status } => {
            control(out, TYPE_RST_STREAM, 0, 8);
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(*status);
        }
        Frame::Settings { flags, entries } => {
            control(out, TYPE_SETTINGS, *flags, 4 + 8 * entries.len());
            out.put_u32(entries.len() as u32);
            for (f, id, v) in entries {
                out.put_u32(((*f as u32) << 24) | (id & 0x00ff_ffff));
                out.put_u32(*v);
            }
        }
        Frame::Ping { id } => {
            control(out, TYPE_PING, 0, 4);
            out.put_u32(*id);
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            control(out, TYPE_GOAWAY, 0, 8);
            out.put_u32(last_good_stream_id & 0x7fff_ffff);
            out.put_u32(*status);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            control(out, TYPE_WINDOW_UPDATE, 0, 8);
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(delta & 0x7fff_ffff);
        }
        Frame::Data {
            stream_id,
            flags,
            payload,
        } => {
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(((*flags as u32) << 24) | (payload.len() as u32 & 0x00ff_ffff));
            out.put_slice(payload);
        }
    }
    Ok(())
}

/// Outcome of [`decode`] on a buffer.
#[derive(Debug)]
pub enum Decoded {
    /// A whole frame was taken off the buffer.
    Frame(Frame),
    /// A control frame of a type we ignore (per spec) was skipped.
    Skipped,
    /// More bytes are needed.
    Incomplete,
}

/// Takes one frame off the front of `buf`.
pub fn decode(buf: &mut BytesMut, dec: &mut HeaderDecoder) -> Result<Decoded, FrameError> {
    if buf.len() < 8 {
        return Ok(Decoded::Incomplete);
    }
    let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
    if buf.len() < 8 + len {
        buf.reserve(8 + len - buf.len());
        return Ok(Decoded::Incomplete);
    }
    let mut f = buf.split_to(8 + len).freeze();
    let first = f.get_u32();
    let flags_len = f.get_u32();
    let flags = (flags_len >> 24) as u8;
    if first & 0x8000_0000 == 0 {
        return Ok(Decoded::Frame(Frame::Data {
            stream_id: first & 0x7fff_ffff,
            flags,
            payload: f,
        }));
    }
    let version = ((first >> 16) & 0x7fff) as u16;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let kind = (first & 0xffff) as u16;
    let need = |n: usize| {
        if len < n {
            Err(FrameError::Short { kind, len, need: n })
        } else {
            Ok(())
        }
    };
    let frame = match kind {
        TYPE_SYN_STREAM => {
            need(10)?;
            let stream_id = f.get_u32() & 0x7fff_ffff;
            let associated_to = f.get_u32() & 0x7fff_ffff;
            let priority = f.get_u8() >> 5;
            f.advance(1);
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers: dec.decode(&f)?,
            }
        }
        TYPE_SYN_REPLY | TYPE_HEADERS => {
            need(4)?;
            let stream_id = f.get_u32() & 0x7fff_ffff;
            let headers = dec.decode(&f)?;
            if kind == TYPE_SYN_REPLY {
                Frame::SynReply {
                    stream_id,
                    flags,
                    headers,
                }
            } else {
                Frame::Headers {
                    stream_id,
                    flags,
                    headers,
                }
            }
        }
        TYPE_RST_STREAM => {
            need(8)?;
            Frame::RstStream {
                stream_id: f.get_u32() & 0x7fff_ffff,
                status: f.get_u32(),
            }
        }
        TYPE_SETTINGS => {
            need(4)?;
            let n = f.get_u32() as usize;
            need(4 + 8 * n)?;
            let entries = (0..n)
                .map(|_| {
                    let a = f.get_u32();
                    ((a >> 24) as u8, a & 0x00ff_ffff, f.get_u32())
                })
                .collect();
            Frame::Settings { flags, entries }
        }
        TYPE_PING => {
            need(4)?;
            Frame::Ping { id: f.get_u32() }
        }
        TYPE_GOAWAY => {
            need(8)?;
            Frame::GoAway {
                last_good_stream_id: f.get_u32() & 0x7fff_ffff,
                status: f.get_u32(),
            }
        }
        TYPE_WINDOW_UPDATE => {
            need(8)?;
            Frame::WindowUpdate {
                stream_id: f.get_u32() & 0x7fff_ffff,
                delta: f.get_u32() & 0x7fff_ffff,
            }
        }
        _ => return Ok(Decoded::Skipped),
    };
    Ok(Decoded::Frame(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frames: &[Frame]) {
        let mut enc = HeaderEncoder::new().unwrap();
        let mut dec = HeaderDecoder::new();
        let mut buf = BytesMut::new();
        for f in frames {
            encode(f, &mut enc, &mut buf).unwrap();
        }
        for f in frames {
            match decode(&mut buf, &mut dec).unwrap() {
                Decoded::Frame(got) => assert_eq!(&got, f),
                other => panic!("expected {f:?}, got {other:?}"),
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn dictionary_is_the_spec_one() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"utf-,*,enq=0."));
    }

    #[test]
    fn every_frame_round_trips_with_one_zlib_stream() {
        let h = |pairs: &[(&str, &str)]| -> Headers {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        roundtrip(&[
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: h(&[("streamtype", "error")]),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 0,
                priority: 7,
                flags: FLAG_FIN,
                headers: h(&[("streamtype", "stdout"), ("x", "a"), ("x", "b")]),
            },
            Frame::SynReply {
                stream_id: 3,
                flags: 0,
                headers: vec![],
            },
            Frame::Headers {
                stream_id: 3,
                flags: FLAG_FIN,
                headers: h(&[("k", &"v".repeat(70_000))]),
            },
            Frame::RstStream {
                stream_id: 5,
                status: rst::CANCEL,
            },
            Frame::Settings {
                flags: 1,
                entries: vec![(0, 7, 65536), (1, 4, 100)],
            },
            Frame::Ping { id: 0xdead },
            Frame::GoAway {
                last_good_stream_id: 9,
                status: 0,
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 1 << 20,
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                payload: Bytes::from_static(b"hello"),
            },
        ]);
    }

    /// Byte layouts from the SPDY/3 draft's frame diagrams.
    #[test]
    fn control_frame_layout_matches_the_spec() {
        let mut enc = HeaderEncoder::new().unwrap();
        let mut out = BytesMut::new();
        encode(&Frame::Ping { id: 1 }, &mut enc, &mut out).unwrap();
        assert_eq!(&out[..], &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
        out.clear();
        encode(
            &Frame::RstStream {
                stream_id: 5,
                status: rst::REFUSED_STREAM,
            },
            &mut enc,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            &out[..],
            &[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0, 3]
        );
        out.clear();
        encode(
            &Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                payload: Bytes::from_static(b"ab"),
            },
            &mut enc,
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..], &[0, 0, 0, 1, 1, 0, 0, 2, b'a', b'b']);
    }

    #[test]
    fn header_block_is_zlib_with_the_dictionary_id() {
        let mut enc = HeaderEncoder::new().unwrap();
        let block = enc.encode(&vec![("a".into(), "b".into())]).unwrap();
        // zlib header with FDICT set, followed by the dictionary's Adler-32.
        assert_eq!(block[0] & 0x0f, 8);
        assert_ne!(block[1] & 0x20, 0, "FDICT flag");
        let mut a: u32 = 1;
        let mut b: u32 = 0;
        for &x in dictionary() {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(&block[2..6], &((b << 16) | a).to_be_bytes());
        // A plain uncompressed inflate without the dictionary fails.
        let mut plain = Decompress::new(true);
        let mut out = Vec::with_capacity(100);
        assert!(
            plain
                .decompress_vec(&block, &mut out, FlushDecompress::Sync)
                .is_err()
        );
    }

    #[test]
    fn incomplete_and_bad_version() {
        let mut dec = HeaderDecoder::new();
        let mut buf = BytesMut::from(&[0x80, 3, 0, 6, 0, 0, 0, 4, 0][..]);
        assert!(matches!(
            decode(&mut buf, &mut dec).unwrap(),
            Decoded::Incomplete
        ));
        let mut buf = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 0][..]);
        assert!(matches!(
            decode(&mut buf, &mut dec),
            Err(FrameError::Version(2))
        ));
        let mut buf = BytesMut::from(&[0x80, 3, 0, 3, 0, 0, 0, 2, 0, 0][..]);
        assert!(matches!(
            decode(&mut buf, &mut dec),
            Err(FrameError::Short { .. })
        ));
    }
}
