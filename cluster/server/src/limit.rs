//! A cap on open connections: each accepted connection holds a permit
//! until it closes; one accepted past the cap is closed at once, before
//! any byte of it is read (no TLS handshake, no HTTP/2, no decoding).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// A connection that counts against the cap while it is open.
pub struct Limited<T> {
    inner: T,
    _permit: OwnedSemaphorePermit,
}

/// Passes on the connections of `incoming` while fewer than `max` are
/// open; closes the others as they arrive (and logs that, once a minute at
/// most).
pub fn limit<T, S>(incoming: S, max: usize) -> impl Stream<Item = io::Result<Limited<T>>>
where
    S: Stream<Item = io::Result<T>>,
{
    let permits = Arc::new(Semaphore::new(max));
    let mut last_warning: Option<std::time::Instant> = None;
    incoming.filter_map(move |c| {
        let out = match c {
            Err(e) => Some(Err(e)),
            Ok(inner) => match permits.clone().try_acquire_owned() {
                Ok(permit) => Some(Ok(Limited {
                    inner,
                    _permit: permit,
                })),
                Err(_) => {
                    if last_warning.is_none_or(|t| t.elapsed().as_secs() >= 60) {
                        last_warning = Some(std::time::Instant::now());
                        tracing::warn!(max, "connection limit reached: closing new connections");
                    }
                    // Dropped here: the connection closes unread.
                    None
                }
            },
        };
        std::future::ready(out)
    })
}

impl<T: Connected> Connected for Limited<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Limited<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
