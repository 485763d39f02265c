//! Stream adapters that hash what passes through them (object digests, computed once while
//! storing and checked once while receiving a push), so no second pass over the data is needed.

use sha2::Digest;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Hashes every byte written through it.
pub struct HashingWriter<W, D> {
    inner: W,
    hasher: D,
    written: u64,
}

impl<W, D: Digest> HashingWriter<W, D> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: D::new(),
            written: 0,
        }
    }
    pub fn written(&self) -> u64 {
        self.written
    }
    pub fn finish(self) -> (W, Vec<u8>) {
        (self.inner, self.hasher.finalize().to_vec())
    }
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: AsyncWrite + Unpin, D: Digest + Unpin> AsyncWrite for HashingWriter<W, D> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.written += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Hashes every byte read through it, up to a limit (a peer cannot make it read more).
pub struct HashingReader<R, D> {
    inner: R,
    hasher: D,
    read: u64,
}

impl<R, D: Digest> HashingReader<R, D> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: D::new(),
            read: 0,
        }
    }
    pub fn read_bytes(&self) -> u64 {
        self.read
    }
    pub fn finish(self) -> Vec<u8> {
        self.hasher.finalize().to_vec()
    }
}

impl<R: AsyncRead + Unpin, D: Digest + Unpin> AsyncRead for HashingReader<R, D> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let new = &buf.filled()[before..];
            this.hasher.update(new);
            this.read += new.len() as u64;
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Sha512;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn both_directions_hash_the_same() {
        let data = vec![42u8; 100_000];
        let mut w = HashingWriter::<_, Sha512>::new(Vec::new());
        w.write_all(&data).await.unwrap();
        assert_eq!(w.written(), 100_000);
        let (out, dw) = w.finish();
        let mut r = HashingReader::<_, Sha512>::new(&out[..]);
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        assert_eq!(r.finish(), dw);
        assert_eq!(dw, Sha512::digest(&data).to_vec());
    }
}
