//! Batched frame I/O for the userspace plane: `recvmmsg(2)` fills up to [`BATCH`] frames per
//! system call and `sendmmsg(2)` sends the forwarded ones out of the other port in one call,
//! straight from the receive buffers (no copy). pnet's channel costs four system calls per
//! frame (poll + recvfrom, poll + sendto); this costs two per batch.
//!
//! The unsafe code is confined to this file: the message headers point into `bufs`, a boxed
//! slice whose heap storage never moves, and the headers are only handed to the kernel inside
//! `recv`/`send`, which borrow `self` for the duration of the call.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Frames per system call.
pub const BATCH: usize = 64;

/// A batch of receive buffers and the frames last received into them.
pub struct Batch {
    frame_size: usize,
    bufs: Box<[u8]>,
    iov: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    received: usize,
    send_iov: Box<[libc::iovec]>,
    send_hdrs: Box<[libc::mmsghdr]>,
}

// SAFETY: the raw pointers inside iovec/mmsghdr point only into `bufs`, which the Batch owns;
// moving the Batch to another thread moves that ownership with it.
unsafe impl Send for Batch {}

/// How a received frame came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received<'a> {
    Frame(&'a [u8]),
    /// Larger than the buffer (the kernel cut it): never forwarded.
    Truncated(usize),
}

impl Batch {
    /// `frame_size` bounds one frame (larger ones are reported as truncated).
    pub fn new(frame_size: usize) -> Self {
        let mut bufs = vec![0u8; frame_size * BATCH].into_boxed_slice();
        let base = bufs.as_mut_ptr();
        let iov: Box<[libc::iovec]> = (0..BATCH)
            .map(|i| libc::iovec {
                // SAFETY: i * frame_size < bufs.len(), so the pointer stays inside the allocation.
                iov_base: unsafe { base.add(i * frame_size) }.cast(),
                iov_len: frame_size,
            })
            .collect();
        let empty_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut me = Batch {
            frame_size,
            bufs,
            iov,
            // SAFETY: mmsghdr is plain old data; all-zero (null pointers, zero lengths) is valid.
            hdrs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            received: 0,
            send_iov: vec![empty_iov; BATCH].into_boxed_slice(),
            // SAFETY: as above.
            send_hdrs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
        };
        let iov_ptr = me.iov.as_mut_ptr();
        for (i, h) in me.hdrs.iter_mut().enumerate() {
            // SAFETY: i < BATCH == iov.len().
            h.msg_hdr.msg_iov = unsafe { iov_ptr.add(i) };
            h.msg_hdr.msg_iovlen = 1;
        }
        let send_iov_ptr = me.send_iov.as_mut_ptr();
        for (i, h) in me.send_hdrs.iter_mut().enumerate() {
            // SAFETY: i < BATCH == send_iov.len().
            h.msg_hdr.msg_iov = unsafe { send_iov_ptr.add(i) };
            h.msg_hdr.msg_iovlen = 1;
        }
        me
    }

    /// Blocks until at least one frame arrives (or the socket's receive timeout passes:
    /// `WouldBlock`), then takes every frame already queued, up to [`BATCH`].
    pub fn recv(&mut self, fd: &OwnedFd) -> io::Result<usize> {
        self.received = 0;
        for h in self.hdrs.iter_mut() {
            h.msg_len = 0;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every header points to one iovec that covers `frame_size` bytes inside
        // `self.bufs`; all of it stays alive and exclusively borrowed for the call. No name or
        // control buffers are passed; the timeout pointer is null (the socket's SO_RCVTIMEO
        // bounds the wait).
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.received = n as usize;
        Ok(self.received)
    }

    pub fn len(&self) -> usize {
        self.received
    }

    pub fn is_empty(&self) -> bool {
        self.received == 0
    }

    /// Frame `i` of the last `recv` (`i < len()`).
    pub fn get(&self, i: usize) -> Received<'_> {
        let h = &self.hdrs[i];
        let len = h.msg_len as usize;
        if len > self.frame_size || h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return Received::Truncated(len);
        }
        let start = i * self.frame_size;
        Received::Frame(&self.bufs[start..start + len])
    }

    /// Sends frames `which` (indices into the last `recv`) out of `fd` unchanged. Returns how
    /// many the kernel took; the rest (queue full past the send timeout) are lost.
    pub fn send(&mut self, fd: &OwnedFd, which: &[u8]) -> io::Result<usize> {
        let count = which.len().min(BATCH);
        for (k, &i) in which[..count].iter().enumerate() {
            let i = i as usize;
            debug_assert!(i < self.received);
            let len = (self.hdrs[i].msg_len as usize).min(self.frame_size);
            self.send_iov[k] = libc::iovec {
                // SAFETY: i < BATCH, so the offset is inside `bufs`.
                iov_base: unsafe { self.bufs.as_mut_ptr().add(i * self.frame_size) }.cast(),
                iov_len: len,
            };
            self.send_hdrs[k].msg_len = 0;
        }
        let mut sent = 0;
        while sent < count {
            // SAFETY: headers sent..count point to iovecs filled above, each covering a
            // received frame inside `self.bufs`, which stays alive and borrowed for the call.
            let n = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    self.send_hdrs.as_mut_ptr().add(sent),
                    (count - sent) as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return if sent > 0 { Ok(sent) } else { Err(e) };
            }
            if n == 0 {
                break;
            }
            sent += n as usize;
        }
        Ok(sent)
    }
}

/// Sends frames that live anywhere (e.g. in a receive ring) with one `sendmmsg(2)`.
pub struct Sender {
    iov: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

// SAFETY: between calls the headers only point into `iov`, which the Sender owns; the frame
// pointers written by `send` are used only during that call.
unsafe impl Send for Sender {}

impl Default for Sender {
    fn default() -> Self {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut me = Sender {
            iov: vec![empty; BATCH].into_boxed_slice(),
            // SAFETY: mmsghdr is plain old data; all-zero is valid.
            hdrs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
        };
        let iov_ptr = me.iov.as_mut_ptr();
        for (i, h) in me.hdrs.iter_mut().enumerate() {
            // SAFETY: i < BATCH == iov.len().
            h.msg_hdr.msg_iov = unsafe { iov_ptr.add(i) };
            h.msg_hdr.msg_iovlen = 1;
        }
        me
    }
}

impl Sender {
    /// Sends up to [`BATCH`] frames out of `fd`; returns how many the kernel took.
    pub fn send(&mut self, fd: &OwnedFd, frames: &[&[u8]]) -> io::Result<usize> {
        let count = frames.len().min(BATCH);
        for (k, f) in frames[..count].iter().enumerate() {
            // The kernel only reads through iov_base on send; the pointer is *mut by type.
            self.iov[k] = libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            };
            self.hdrs[k].msg_len = 0;
        }
        let mut sent = 0;
        while sent < count {
            // SAFETY: headers sent..count point to iovecs that describe the borrowed `frames`,
            // alive for the duration of the call.
            let n = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    self.hdrs.as_mut_ptr().add(sent),
                    (count - sent) as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return if sent > 0 { Ok(sent) } else { Err(e) };
            }
            if n == 0 {
                break;
            }
            sent += n as usize;
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn socketpair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: fds is a live array of two c_ints as socketpair(2) requires.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: both descriptors are fresh and owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn receives_a_batch_detects_truncation_and_forwards_selected_frames() {
        let (a, b) = socketpair();
        let (c, d) = socketpair();
        for msg in [&b"one"[..], b"two-two", &[7u8; 100], b"four"] {
            // SAFETY: msg is a live slice of msg.len() bytes.
            let n = unsafe { libc::send(b.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
            assert_eq!(n as usize, msg.len());
        }
        let mut batch = Batch::new(64);
        assert_eq!(batch.recv(&a).unwrap(), 4);
        assert_eq!(batch.get(0), Received::Frame(b"one"));
        assert_eq!(batch.get(1), Received::Frame(b"two-two"));
        assert_eq!(batch.get(2), Received::Truncated(100));
        assert_eq!(batch.get(3), Received::Frame(b"four"));
        assert_eq!(batch.send(&c, &[0, 3]).unwrap(), 2);
        let mut out = Batch::new(64);
        assert_eq!(out.recv(&d).unwrap(), 2);
        assert_eq!(out.get(0), Received::Frame(b"one"));
        assert_eq!(out.get(1), Received::Frame(b"four"));
    }
}
