//! Our [`StreamMuxer`] driver for the `yamux` crate's connection state machine.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use blackhole_metrics::prometheus_client::metrics::counter::Counter;
use futures::{AsyncRead, AsyncWrite, ready};
use libp2p_core::muxing::{StreamMuxer, StreamMuxerEvent};

/// A Yamux connection as a libp2p [`StreamMuxer`].
///
/// The `yamux` crate only makes progress when its next inbound stream is
/// polled, while libp2p polls inbound streams and general progress
/// separately; streams that arrive during [`StreamMuxer::poll`] are kept in a
/// bounded queue (`max_buffered` streams) and reset when it is full.
#[derive(Debug)]
pub struct YamuxMuxer<C> {
    connection: yamux::Connection<C>,
    buffered: VecDeque<yamux::Stream>,
    max_buffered: usize,
    inbound_waker: Option<Waker>,
    dropped: Counter,
}

/// A Yamux connection error.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(#[from] yamux::ConnectionError);

impl<C> YamuxMuxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    pub(crate) fn new(
        connection: yamux::Connection<C>,
        max_buffered: usize,
        dropped: Counter,
    ) -> Self {
        Self {
            connection,
            buffered: VecDeque::new(),
            max_buffered,
            inbound_waker: None,
            dropped,
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<yamux::Stream, Error>> {
        match ready!(self.connection.poll_next_inbound(cx)) {
            Some(result) => Poll::Ready(result.map_err(Error)),
            None => Poll::Ready(Err(Error(yamux::ConnectionError::Closed))),
        }
    }
}

impl<C> StreamMuxer for YamuxMuxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Substream = yamux::Stream;
    type Error = Error;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        if let Some(stream) = this.buffered.pop_front() {
            return Poll::Ready(Ok(stream));
        }
        match this.poll_next(cx) {
            Poll::Pending => {
                this.inbound_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            ready => ready,
        }
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        self.get_mut()
            .connection
            .poll_new_outbound(cx)
            .map_err(Error)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().connection.poll_close(cx).map_err(Error)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let this = self.get_mut();
        let stream = ready!(this.poll_next(cx))?;
        if this.buffered.len() >= this.max_buffered {
            tracing::debug!(stream = %stream.id(), max = this.max_buffered, "inbound stream queue full, resetting stream");
            this.dropped.inc();
            drop(stream);
        } else {
            this.buffered.push_back(stream);
            if let Some(waker) = this.inbound_waker.take() {
                waker.wake();
            }
        }
        // Keep driving the connection.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
