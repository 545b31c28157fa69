//! How a SPDY session ends, over real TCP sockets on 127.0.0.1: a closing
//! side delivers everything it wrote, even to a peer that reads slowly and
//! keeps sending (WINDOW_UPDATEs) meanwhile; a stream cut off by a lost
//! connection reads as an error, never as a clean end.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use carrack_streaming::spdy::Session;
use carrack_streaming::spdy::frame::{self, Decoded, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A TCP stream whose reads take at most 16 KiB a millisecond, as a busy
/// client's would: the closing side's data waits in kernel buffers.
struct SlowReader {
    tcp: TcpStream,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for SlowReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(p) = self.pause.as_mut() {
            if p.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        let n = buf.remaining().min(16 * 1024);
        let mut small = ReadBuf::new(buf.initialize_unfilled_to(n));
        let r = Pin::new(&mut self.tcp).poll_read(cx, &mut small);
        let got = small.filled().len();
        if let Poll::Ready(Ok(())) = r {
            buf.advance(got);
            self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(1))));
        }
        r
    }
}

impl AsyncWrite for SlowReader {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A connected pair of TCP streams: (client side, server side).
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), server.unwrap().0)
}

/// More than the kernel buffers both ends hold on loopback (send and
/// receive queues autotune to a few MiB each): some is still in the
/// server's send queue when its writer is done.
const PAYLOAD: usize = 32 * 1024 * 1024;

#[tokio::test]
async fn a_closing_side_delivers_everything_to_a_slow_reader() {
    let (client_tcp, server_tcp) = tcp_pair().await;
    let (server, mut incoming) = Session::start(server_tcp, false);
    let serve = tokio::spawn(async move {
        let mut s = incoming.recv().await.expect("a stream").stream;
        s.reply();
        let data: Vec<u8> = (0..PAYLOAD).map(|i| (i % 251) as u8).collect();
        s.send(&data);
        s.finish();
        // What the streaming server does at the end of an exec.
        server.close().await;
    });
    let slow = SlowReader {
        tcp: client_tcp,
        pause: None,
    };
    let (client, _none) = Session::start(slow, true);
    let mut stream = client
        .open(vec![("streamtype".into(), "stdout".into())])
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(120), stream.read_to_end(&mut got))
        .await
        .expect("the stream ends");
    read.expect("the stream ends with the server's FIN, not a reset");
    assert_eq!(got.len(), PAYLOAD, "bytes lost at the server's close");
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
        "bytes out of order"
    );
    client.close().await;
    serve.await.unwrap();
}

#[tokio::test]
async fn a_stream_cut_by_a_lost_connection_reads_as_an_error() {
    let (client_tcp, mut server_tcp) = tcp_pair().await;
    // A server that accepts the stream, sends part of its data and dies
    // without FIN, written frame by frame.
    let serve = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut dec = frame::HeaderDecoder::new();
        let stream_id = loop {
            if let Decoded::Frame(Frame::SynStream { stream_id, .. }) =
                frame::decode(&mut buf, &mut dec).unwrap()
            {
                break stream_id;
            }
            assert!(server_tcp.read_buf(&mut buf).await.unwrap() > 0);
        };
        let mut enc = frame::HeaderEncoder::new().unwrap();
        let mut out = BytesMut::new();
        for f in [
            Frame::SynReply {
                stream_id,
                flags: 0,
                headers: vec![],
            },
            Frame::Data {
                stream_id,
                flags: 0,
                payload: Bytes::from_static(b"part of it"),
            },
        ] {
            frame::encode(&f, &mut enc, &mut out).unwrap();
        }
        server_tcp.write_all(&out).await.unwrap();
        drop(server_tcp);
    });
    let (client, _none) = Session::start(client_tcp, true);
    let mut stream = client
        .open(vec![("streamtype".into(), "stdout".into())])
        .await
        .unwrap();
    serve.await.unwrap();
    let mut got = Vec::new();
    let err = stream
        .read_to_end(&mut got)
        .await
        .expect_err("a cut stream is an error");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert_eq!(got, b"part of it");
    client.close().await;
}
