//! One way through a session: bytes read from one leg's socket go through core's session
//! ([`Push`]: frame boundaries, limits, the text of signaling messages) and on to the other
//! leg's socket, untouched except for whole messages cut and close frames added.
//!
//! Nothing per session is allocated for reading: every read lands in a buffer owned by the worker
//! thread ([`READ_CHUNK`] bytes) and is written on at once, in the same poll. Only what the other
//! side cannot take right now is copied into the way's own buffer, which then stops the reading
//! (back-pressure) until it is written, and is freed once empty. An idle session thus holds no
//! buffer at all, only its sockets and its readers' state.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use crate::io::Stream;
use bytes::Bytes;
use sigmesh_core::frame::{Closed, Pushed};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Bytes one read takes at most (the worker thread's read buffer).
pub const READ_CHUNK: usize = 32 * 1024;

/// Reader buffers larger than this are freed once a message is over.
const TRIM_AT: usize = 4096;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// What happened on a way, for the session to act on.
#[derive(Debug)]
pub(super) enum WayEvent {
    /// The source leg ended: `None` at its end of stream, else the read error.
    SrcEnded(Option<io::Error>),
    /// The reader closed the way (a limit, broken framing): it appended this close frame.
    ReaderClosed(Closed),
    /// Writing to the destination leg failed; what was pending for it is dropped.
    DstFailed(io::Error),
}

/// One direction of core's session: where a way's bytes go to be read.
pub(super) trait Push {
    /// The next chunk from the source; what to write to the destination in its place.
    fn push(&mut self, chunk: &[u8]) -> Pushed<'_>;
    /// Frees reader buffers that outgrew `keep` bytes.
    fn trim(&mut self, keep: usize);
}

/// One direction of a session.
pub(super) struct Way {
    /// Bytes the source sent before the relay started (read with the handshake), read first.
    pre: Bytes,
    /// Bytes for the destination that it did not take yet; allocated only then.
    pending: Vec<u8>,
    pending_at: usize,
    /// The source has ended (end of stream or error): it is not read any more.
    pub src_done: bool,
    /// Shut the destination's write side once everything pending is written.
    shut_after_flush: bool,
    /// The destination's write side is shut down.
    shut: bool,
    /// A write to the destination failed: nothing more is written to it.
    pub dst_failed: bool,
    /// Since when the destination has taken none of what is pending (`None`: nothing pending).
    stalled_since: Option<Instant>,
}

impl Way {
    pub fn new(pre: Bytes) -> Way {
        Way {
            // An empty read-ahead can still own the handshake's whole read buffer (8 KiB from
            // hyper): never keep it.
            pre: if pre.is_empty() { Bytes::new() } else { pre },
            pending: Vec::new(),
            pending_at: 0,
            src_done: false,
            shut_after_flush: false,
            shut: false,
            dst_failed: false,
            stalled_since: None,
        }
    }

    /// Since when the destination has taken none of the bytes waiting for it, if any wait.
    pub fn stalled_since(&self) -> Option<Instant> {
        self.stalled_since.filter(|_| !self.dst_failed)
    }

    /// The destination took nothing for too long: it has failed (what waits is dropped).
    pub fn write_timed_out(&mut self) -> WayEvent {
        self.dst_failed(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer took nothing within the write timeout",
        ))
    }

    /// Everything this way will ever do is done: the source ended and what it sent is written
    /// (or cannot be), and the destination's write side is shut.
    pub fn finished(&self) -> bool {
        self.src_done && (self.dst_failed || (self.shut && self.pending_at == self.pending.len()))
    }

    /// Sends a close frame of the proxy's own on this way (core gives none when the way is
    /// closed already or a frame is half through) and shuts the destination's write side after
    /// it.
    pub fn close(&mut self, frame: Option<&[u8]>) {
        if let Some(frame) = frame {
            self.queue(frame);
        }
        self.shut_after_flush = true;
    }

    /// Shuts the destination's write side once what is pending is written.
    pub fn shut_when_flushed(&mut self) {
        self.shut_after_flush = true;
    }

    /// The destination was replaced (a reconnect): what waited for the old one is dropped and
    /// returned, and the new one is written from a fresh start.
    pub fn redirect(&mut self) -> Vec<u8> {
        let lost = self
            .pending
            .split_off(self.pending_at.min(self.pending.len()));
        self.pending = Vec::new();
        self.pending_at = 0;
        self.dst_failed = false;
        self.shut = false;
        self.shut_after_flush = false;
        self.stalled_since = None;
        lost
    }

    /// Bytes of the proxy's own for the destination, before what comes next (a replay).
    pub fn send_first(&mut self, bytes: &[u8]) {
        self.queue(bytes);
    }

    fn queue(&mut self, bytes: &[u8]) {
        if !self.dst_failed {
            self.pending.extend_from_slice(bytes);
        }
    }

    /// Moves bytes from `src` to `dst` until one of them would block, and reports the first
    /// [`WayEvent`]. `Pending` means there is nothing to do until a socket is ready (the wakers
    /// are registered).
    pub fn poll<P: Push>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Stream,
        dst: &mut Stream,
        reader: &mut P,
    ) -> Poll<WayEvent> {
        loop {
            if let Err(e) = ready!(self.poll_flush(cx, dst)) {
                return Poll::Ready(self.dst_failed(e));
            }
            if self.src_done {
                return Poll::Pending;
            }
            if !self.pre.is_empty() {
                let pre = std::mem::take(&mut self.pre);
                if let Some(ev) = self.relay(cx, &pre, dst, reader) {
                    return Poll::Ready(ev);
                }
                continue;
            }
            let read = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut buf = ReadBuf::new(&mut scratch);
                match Pin::new(&mut *src).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Some(WayEvent::SrcEnded(Some(e)))),
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                        Poll::Ready(Some(WayEvent::SrcEnded(None)))
                    }
                    Poll::Ready(Ok(())) => Poll::Ready(self.relay(cx, buf.filled(), dst, reader)),
                }
            });
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {}
                Poll::Ready(Some(ev)) => {
                    if let WayEvent::SrcEnded(_) = ev {
                        self.src_done = true;
                        self.shut_after_flush = true;
                    }
                    return Poll::Ready(ev);
                }
            }
        }
    }

    /// One chunk from the source: through the reader, then written to `dst` as far as it takes
    /// it now; the rest waits in `pending`.
    fn relay<P: Push>(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &[u8],
        dst: &mut Stream,
        reader: &mut P,
    ) -> Option<WayEvent> {
        let pushed = reader.push(chunk);
        let out = pushed.forward.bytes(chunk);
        let closed = pushed.close;
        let mut failed = None;
        if !self.dst_failed {
            match write_now(cx, dst, out) {
                Ok(n) if n < out.len() => {
                    // Nothing was pending (the flush came first): the stall starts now.
                    self.pending.extend_from_slice(&out[n..]);
                    self.stalled_since = Some(Instant::now());
                }
                Ok(_) => {}
                Err(e) => failed = Some(e),
            }
        }
        reader.trim(TRIM_AT);
        if let Some(e) = failed {
            return Some(self.dst_failed(e));
        }
        closed.map(WayEvent::ReaderClosed)
    }

    fn dst_failed(&mut self, e: io::Error) -> WayEvent {
        self.dst_failed = true;
        self.pending = Vec::new();
        self.pending_at = 0;
        self.stalled_since = None;
        WayEvent::DstFailed(e)
    }

    /// Writes what is pending, then shuts the destination's write side if asked to.
    fn poll_flush(&mut self, cx: &mut Context<'_>, dst: &mut Stream) -> Poll<io::Result<()>> {
        if self.dst_failed {
            return Poll::Ready(Ok(()));
        }
        if self.pending_at < self.pending.len() {
            let n = write_now(cx, dst, &self.pending[self.pending_at..])?;
            self.pending_at += n;
            if self.pending_at < self.pending.len() {
                // Progress restarts the clock (a slow reader is not a stopped one).
                if n > 0 || self.stalled_since.is_none() {
                    self.stalled_since = Some(Instant::now());
                }
                return Poll::Pending; // `dst`'s write waker is registered
            }
        }
        self.stalled_since = None;
        if !self.pending.is_empty() {
            // Only ever allocated under back-pressure: give it back.
            self.pending = Vec::new();
            self.pending_at = 0;
        }
        if self.shut_after_flush && !self.shut {
            self.shut = true;
            // A failed shutdown means the peer is gone already: nothing left to tell it.
            let _ = ready!(Pin::new(&mut *dst).poll_shutdown(cx));
        }
        Poll::Ready(Ok(()))
    }
}

/// Writes as much of `buf` as `dst` takes now; returns how much. When it is less than all, the
/// task is registered to be woken once `dst` is writable again.
fn write_now(cx: &mut Context<'_>, dst: &mut Stream, buf: &[u8]) -> io::Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        match Pin::new(&mut *dst).poll_write(cx, &buf[at..]) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => at += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    Ok(at)
}
