//! The first read of a plaintext downstream connection, done by the worker in one system call instead of two:
//! hyper-util's HTTP/1-or-h2c detection reads exactly the 24 bytes of the HTTP/2 preface before hyper reads the
//! rest of the request, which cost a `recvfrom` per connection (one in eleven of the proxy's system calls per
//! `Connection: close` request). [`FirstRead`] replays the bytes read here to hyper, then reads the socket.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// What an HTTP/2 connection opens with (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How much the first read takes: a whole common request head. A longer head is read on by hyper.
const FIRST_READ: usize = 4096;

/// A connection whose first bytes were read already: reads return them before anything from the socket.
pub struct FirstRead {
    first: Vec<u8>,
    /// How many of `first` have been handed to the reader.
    replayed: usize,
    stream: TcpStream,
}

impl FirstRead {
    /// Waits for the client's first bytes and reads what has arrived of them. `Ok(None)`: the client closed
    /// without sending anything.
    pub async fn read(mut stream: TcpStream) -> io::Result<Option<Self>> {
        let mut first = Vec::with_capacity(FIRST_READ);
        // Through `poll_read`, not `try_read`: a read that does not fill the buffer tells tokio the socket is
        // drained, so hyper's next read waits for readiness instead of costing a `recvfrom` that finds nothing.
        // Bytes that may still become the HTTP/2 preface are read on until they do or cannot.
        loop {
            if stream.read_buf(&mut first).await? == 0 {
                return Ok(None);
            }
            if first.len() >= H2_PREFACE.len() || !H2_PREFACE.starts_with(&first) {
                return Ok(Some(Self {
                    first,
                    replayed: 0,
                    stream,
                }));
            }
        }
    }

    /// Whether the connection opened with the HTTP/2 preface (h2c with prior knowledge).
    pub fn is_h2c(&self) -> bool {
        self.first.starts_with(H2_PREFACE)
    }
}

impl AsyncRead for FirstRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.replayed < this.first.len() {
            let rest = &this.first[this.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            if this.replayed == this.first.len() {
                this.first = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for FirstRead {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// The bytes read first come back before later ones, in order, whatever the reader's buffer size; writes
    /// go to the socket.
    #[tokio::test]
    async fn replays_the_first_bytes_then_reads_the_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut conn = FirstRead::read(server).await.unwrap().expect("bytes");
        assert_eq!(conn.first, b"GET / HTTP/1.1\r\n");
        client.write_all(b"Host: a\r\n\r\n").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        let mut small = [0u8; 5];
        loop {
            let n = conn.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        drop(conn);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"HTTP/1.1 200 OK\r\n\r\n");
    }

    /// The HTTP/2 preface arriving in pieces is read on until whole, then tells h2c; a request is HTTP/1.1.
    #[tokio::test]
    async fn the_http2_preface_is_read_whole_and_tells_h2c() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        client.set_nodelay(true).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let reading = tokio::spawn(FirstRead::read(server));
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        client.write_all(&H2_PREFACE[10..]).await.unwrap();
        let conn = reading.await.unwrap().unwrap().expect("bytes");
        assert!(conn.is_h2c());
        assert_eq!(conn.first, H2_PREFACE);

        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"PRIVATE / HTTP/1.1\r\n").await.unwrap();
        let conn = FirstRead::read(server).await.unwrap().expect("bytes");
        assert!(!conn.is_h2c());
    }

    /// A client that closes without a byte: nothing to serve.
    #[tokio::test]
    async fn a_client_closing_at_once_is_none() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        drop(client);
        assert!(FirstRead::read(server).await.unwrap().is_none());
    }
}
