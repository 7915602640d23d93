//! [`NoiseStream`]: the Noise [`Transport`] as a tokio byte stream, for HTTP/2 to run over.

use crate::noise::{MAX_PLAINTEXT_LEN, Transport};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much plaintext one `poll_write` takes: a few records.
const WRITE_CHUNK: usize = 4 * MAX_PLAINTEXT_LEN;

/// A byte stream over an established Noise channel. Reads decrypt records (partial records
/// wait for the rest, empty ones yield nothing); writes are sealed into records of at most
/// 4096 bytes. A protocol error is an `InvalidData` I/O error and ends the stream.
pub struct NoiseStream<S> {
    io: S,
    transport: Transport,
    /// Decrypted bytes not yet read.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Sealed bytes not yet written.
    sealed: Vec<u8>,
    sealed_pos: usize,
    scratch: Box<[u8]>,
}

impl<S> std::fmt::Debug for NoiseStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseStream")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> NoiseStream<S> {
    /// Wraps `io`; `already_read` are bytes read from `io` past the handshake response.
    pub fn new(io: S, mut transport: Transport, already_read: &[u8]) -> Self {
        transport.push(already_read);
        Self {
            io,
            transport,
            plain: Vec::new(),
            plain_pos: 0,
            sealed: Vec::new(),
            sealed_pos: 0,
            scratch: vec![0u8; 16 * 1024].into_boxed_slice(),
        }
    }

    /// Puts plaintext back in front of what is still to be read (after peeking at it).
    pub fn unread(&mut self, bytes: &[u8]) {
        let mut v = bytes.to_vec();
        v.extend_from_slice(&self.plain[self.plain_pos..]);
        self.plain = v;
        self.plain_pos = 0;
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sealed_pos < self.sealed.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.sealed[self.sealed_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sealed_pos += n;
        }
        self.sealed.clear();
        self.sealed_pos = 0;
        Poll::Ready(Ok(()))
    }
}

fn invalid(e: crate::noise::NoiseError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for NoiseStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_pos < this.plain.len() {
                let avail = &this.plain[this.plain_pos..];
                let n = avail.len().min(buf.remaining());
                buf.put_slice(&avail[..n]);
                this.plain_pos += n;
                return Poll::Ready(Ok(()));
            }
            this.plain.clear();
            this.plain_pos = 0;
            // Records already buffered (from the handshake read) come first.
            if this.transport.decrypt(&mut this.plain).map_err(invalid)? > 0 {
                continue;
            }
            let mut rb = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
            let got = rb.filled();
            if got.is_empty() {
                if this.transport.buffered() > 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a Noise record",
                    )));
                }
                return Poll::Ready(Ok(()));
            }
            this.transport.push(got);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for NoiseStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = data.len().min(WRITE_CHUNK);
        this.transport
            .encrypt(&data[..n], &mut this.sealed)
            .map_err(invalid)?;
        // Start sending now; what is left goes out on the next write or flush.
        match this.poll_drain(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(n)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
