//! The bodies the API gateway streams, each way, without ever holding a whole one in
//! memory (a 10 MB upload or download passes through in the transports' frames):
//!
//! - [`Metered`]: counts a body's bytes into a [`Meter`] the gateway reads for its audit
//!   record, and fails the body once more than its limit pass (the caller's upload);
//! - [`read_ahead`]: reads at most a limit of a body first, to keep a small request body for
//!   a retry or to classify an error answer, and [`Chained`] sends what was read ahead,
//!   then the rest;
//! - [`Answer`]: Go's answer on its way to the caller: counted, cut at its limit, its
//!   trailers dropped, and reporting how it ended exactly once (to its end, with an error, or dropped because the
//!   caller went away), so the gateway can record an answer that was not what it declared.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;

/// The error type of the bodies here (what hyper and reqwest take).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the gateway knows of one body while it streams: bytes so far, and whether it was
/// cut at its limit or failed on the sender's side.
#[derive(Debug, Default)]
pub struct Meter {
    bytes: AtomicU64,
    over_limit: AtomicBool,
    failed: AtomicBool,
}

impl Meter {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// True once more bytes than the limit arrived (the body was failed there).
    pub fn over_limit(&self) -> bool {
        self.over_limit.load(Ordering::Relaxed)
    }

    /// True if the body's own source failed (the caller's connection broke mid-upload).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

/// The error a [`Metered`] body ends with past its limit.
#[derive(Debug, thiserror::Error)]
#[error("the body is larger than {limit} bytes")]
pub struct TooLarge {
    pub limit: u64,
}

/// A body counted into a [`Meter`], failed once more than `limit` bytes passed.
pub struct Metered<B> {
    inner: B,
    meter: Arc<Meter>,
    limit: u64,
}

impl<B> Metered<B> {
    pub fn new(inner: B, meter: Arc<Meter>, limit: u64) -> Self {
        Self { inner, meter, limit }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = this.meter.bytes.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
                    if n > this.limit {
                        this.meter.over_limit.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(TooLarge { limit: this.limit }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.meter.failed.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body read ahead: whole (it ended within the limit), or its first part and the rest.
pub enum ReadAhead<B> {
    Complete(Bytes),
    Partial { prefix: Bytes, rest: B },
}

/// Reads `body` until it ends or more than `limit` bytes were read; trailers are dropped.
/// Holds at most `limit` plus one frame.
pub async fn read_ahead<B>(mut body: B, limit: usize) -> Result<ReadAhead<B>, BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => return Ok(ReadAhead::Complete(buf.freeze())),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() > limit {
                        return Ok(ReadAhead::Partial { prefix: buf.freeze(), rest: body });
                    }
                }
            }
        }
    }
}

/// What was read ahead, then the rest of the body.
pub struct Chained<B> {
    prefix: Option<Bytes>,
    rest: Option<B>,
}

impl<B> Chained<B> {
    pub fn new(prefix: Bytes, rest: Option<B>) -> Self {
        Self { prefix: (!prefix.is_empty()).then_some(prefix), rest }
    }
}

impl<B> Body for Chained<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        match self.rest.as_mut() {
            None => Poll::Ready(None),
            Some(rest) => Pin::new(rest).poll_frame(cx).map(|f| f.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let first = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let rest = self.rest.as_ref().map_or_else(|| SizeHint::with_exact(0), |r| r.size_hint());
        let mut hint = SizeHint::new();
        // Upper first: a lower bound above the upper one panics.
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(first));
        }
        hint.set_lower(rest.lower().saturating_add(first));
        hint
    }
}

/// How an [`Answer`] ended, with the bytes it had passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// To its end.
    Complete { bytes: u64 },
    /// Cut: Go's side failed (connection, timeout) or the answer passed its limit.
    Failed { bytes: u64, over_limit: bool },
    /// Dropped before its end: the caller went away.
    Dropped { bytes: u64 },
}

/// Called once with how an [`Answer`] ended.
pub type OnEnd = Box<dyn FnOnce(Ending) + Send + Sync>;

/// Go's answer on its way to the caller: counted, cut at `limit`, and reporting its
/// [`Ending`] exactly once.
pub struct Answer<B> {
    inner: Chained<B>,
    bytes: u64,
    limit: u64,
    on_end: Option<OnEnd>,
}

impl<B> Answer<B> {
    pub fn new(inner: Chained<B>, limit: u64, on_end: OnEnd) -> Self {
        Self { inner, bytes: 0, limit, on_end: Some(on_end) }
    }

    fn end(&mut self, how: Ending) {
        if let Some(f) = self.on_end.take() {
            f(how);
        }
    }
}

impl<B> Body for Answer<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.on_end.is_none() {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            // Trailers come last and are Go's headers after the fact: not passed on (as
            // its headers are filtered, these would not be); the body ends here.
            Some(Ok(frame)) if frame.is_trailers() => {
                let bytes = this.bytes;
                this.end(Ending::Complete { bytes });
                Poll::Ready(None)
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                    if this.bytes > this.limit {
                        let bytes = this.bytes - data.len() as u64;
                        this.end(Ending::Failed { bytes, over_limit: true });
                        return Poll::Ready(Some(Err(Box::new(TooLarge { limit: this.limit }))));
                    }
                }
                // hyper stops polling once the body says it has ended: this was the end.
                if this.inner.is_end_stream() {
                    let bytes = this.bytes;
                    this.end(Ending::Complete { bytes });
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                let bytes = this.bytes;
                this.end(Ending::Failed { bytes, over_limit: false });
                Poll::Ready(Some(Err(e)))
            }
            None => {
                let bytes = this.bytes;
                this.end(Ending::Complete { bytes });
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.on_end.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Answer<B> {
    fn drop(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(Ending::Dropped { bytes: self.bytes });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn chunks(n: usize, size: usize) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            (0..n).map(|i| Ok(Frame::data(Bytes::from(vec![i as u8; size])))).collect();
        StreamBody::new(tokio_stream::iter(frames))
    }

    #[tokio::test]
    async fn metered_counts_and_fails_past_its_limit() {
        let meter = Arc::new(Meter::default());
        let body = Metered::new(chunks(3, 10), meter.clone(), 30);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 30);
        assert_eq!((meter.bytes(), meter.over_limit()), (30, false));
        let meter = Arc::new(Meter::default());
        let e = Metered::new(chunks(4, 10), meter.clone(), 30).collect().await.err().unwrap();
        assert!(e.to_string().contains("larger than 30"), "{e}");
        assert!(meter.over_limit() && !meter.failed());
    }

    #[tokio::test]
    async fn read_ahead_keeps_small_bodies_whole_and_chains_the_rest() {
        let ReadAhead::Complete(b) = read_ahead(chunks(2, 10), 20).await.unwrap() else { panic!("fits") };
        assert_eq!(b.len(), 20);
        let ReadAhead::Partial { prefix, rest } = read_ahead(chunks(5, 10), 20).await.unwrap() else {
            panic!("too long")
        };
        assert_eq!(prefix.len(), 30, "the limit plus one frame at most");
        let all = Chained::new(prefix, Some(rest)).collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 50);
        assert_eq!(&all[40..], &[4u8; 10]);
    }

    #[tokio::test]
    async fn an_answer_reports_its_ending_once() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let on = |seen: &Arc<std::sync::Mutex<Vec<Ending>>>| -> OnEnd {
            let seen = seen.clone();
            Box::new(move |e| seen.lock().unwrap().push(e))
        };
        let a = Answer::new(Chained::new(Bytes::from_static(b"abc"), Some(chunks(2, 5))), 100, on(&seen));
        assert_eq!(a.collect().await.unwrap().to_bytes().len(), 13);
        let a = Answer::new(Chained::new(Bytes::new(), Some(chunks(5, 10))), 25, on(&seen));
        assert!(a.collect().await.is_err());
        let mut a = Answer::new(Chained::new(Bytes::new(), Some(chunks(5, 10))), 100, on(&seen));
        assert!(a.frame().await.is_some());
        drop(a);
        // A body that says it has ended is not polled again (hyper does not): its last
        // frame is its end.
        let rest = Some(http_body_util::Empty::<Bytes>::new());
        let mut a = Answer::new(Chained::new(Bytes::from_static(b"xyz"), rest), 100, on(&seen));
        assert!(a.frame().await.is_some());
        assert!(a.is_end_stream());
        drop(a);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                Ending::Complete { bytes: 13 },
                Ending::Failed { bytes: 20, over_limit: true },
                Ending::Dropped { bytes: 10 },
                Ending::Complete { bytes: 3 }
            ]
        );
    }
}
