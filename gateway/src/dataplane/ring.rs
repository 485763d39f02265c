//! A PACKET_MMAP receive ring (TPACKET_V3) for the userspace plane: the kernel writes received
//! frames straight into memory shared with the gateway, in blocks of many frames, so receiving
//! costs no system call and no per-frame copy to user space (the copy happens once, in the
//! softirq that receives the frame). Blocks are handed over when full or after
//! [`BLOCK_TIMEOUT_MS`], so light traffic waits at most that long.
//!
//! The unsafe code is confined to this file. The ring is mapped once and unmapped on drop; a
//! block is only read while its status word says it belongs to user space, and every offset
//! read from the kernel's headers is checked against the block size before it is followed.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Block size: a multiple of the page size and of [`FRAME_SIZE`].
pub const BLOCK_SIZE: usize = 1 << 20;
/// Blocks in the ring (8 MiB in all).
pub const BLOCK_COUNT: usize = 8;
/// Largest frame the ring keeps whole (larger ones are reported truncated).
pub const FRAME_SIZE: usize = 16_384;
/// A block that is not full is handed to user space after this many milliseconds.
pub const BLOCK_TIMEOUT_MS: u32 = 1;

const TPACKET_V3: libc::c_int = 2;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;

// Offsets in `struct tpacket_block_desc` (version, offset_to_priv, then the 8-aligned
// `tpacket_hdr_v1`) and `struct tpacket3_hdr`, from <linux/if_packet.h>.
const BLOCK_STATUS: usize = 8;
const BLOCK_NUM_PKTS: usize = 12;
const BLOCK_FIRST_PKT: usize = 16;
const PKT_NEXT_OFFSET: usize = 0;
const PKT_SNAPLEN: usize = 12;
const PKT_LEN: usize = 16;
const PKT_MAC: usize = 24;
const PKT_HDR_MIN: usize = 32;

/// The mapped receive ring of one AF_PACKET socket.
pub struct RxRing {
    map: *mut u8,
    len: usize,
    current: usize,
}

// SAFETY: the mapping is owned by the RxRing alone (nothing else holds its address), so moving
// it to another thread moves that ownership with it.
unsafe impl Send for RxRing {}

fn setsockopt<T>(fd: &OwnedFd, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live T and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl RxRing {
    /// Switches `fd` to TPACKET_V3 and maps its receive ring. Call before binding the socket.
    pub fn new(fd: &OwnedFd) -> io::Result<Self> {
        setsockopt(fd, libc::PACKET_VERSION, &TPACKET_V3)?;
        let req = libc::tpacket_req3 {
            tp_block_size: BLOCK_SIZE as libc::c_uint,
            tp_block_nr: BLOCK_COUNT as libc::c_uint,
            tp_frame_size: FRAME_SIZE as libc::c_uint,
            tp_frame_nr: (BLOCK_SIZE / FRAME_SIZE * BLOCK_COUNT) as libc::c_uint,
            tp_retire_blk_tov: BLOCK_TIMEOUT_MS,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(fd, libc::PACKET_RX_RING, &req)?;
        let len = BLOCK_SIZE * BLOCK_COUNT;
        // SAFETY: a fresh shared mapping of the socket's ring, of exactly the size configured
        // above; the kernel validates the length against the ring.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(RxRing {
            map: map.cast(),
            len,
            current: 0,
        })
    }

    fn block(&self, i: usize) -> *mut u8 {
        // SAFETY: i < BLOCK_COUNT, so the offset stays inside the mapping.
        unsafe { self.map.add(i * BLOCK_SIZE) }
    }

    fn status(&self, i: usize) -> &AtomicU32 {
        // SAFETY: the status word is a 4-aligned u32 inside block i's descriptor, shared with
        // the kernel; it is only ever accessed atomically here.
        unsafe { &*(self.block(i).add(BLOCK_STATUS) as *const AtomicU32) }
    }

    fn read_u32(&self, block: usize, off: usize) -> u32 {
        debug_assert!(off + 4 <= BLOCK_SIZE);
        // SAFETY: off + 4 <= BLOCK_SIZE (checked by callers), inside the mapping; the block
        // belongs to user space while it is read.
        unsafe { std::ptr::read_unaligned(self.block(block).add(off) as *const u32) }
    }

    fn read_u16(&self, block: usize, off: usize) -> u16 {
        debug_assert!(off + 2 <= BLOCK_SIZE);
        // SAFETY: as in read_u32.
        unsafe { std::ptr::read_unaligned(self.block(block).add(off) as *const u16) }
    }

    /// Waits up to `timeout` for the next block to be handed to user space.
    pub fn wait(&self, fd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
        if self.status(self.current).load(Ordering::Acquire) & TP_STATUS_USER != 0 {
            return Ok(true);
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN | libc::POLLERR,
            revents: 0,
        };
        // SAFETY: one live pollfd is passed with count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(self.status(self.current).load(Ordering::Acquire) & TP_STATUS_USER != 0)
    }

    /// The current block, which `wait` reported ready. Dropping the view hands the block back
    /// to the kernel; the frames it yields borrow the view, so none outlives that.
    pub fn ready_block(&mut self) -> Block<'_> {
        let b = self.current;
        let num = self.read_u32(b, BLOCK_NUM_PKTS) as usize;
        let first = self.read_u32(b, BLOCK_FIRST_PKT) as usize;
        Block {
            ring: self,
            b,
            num,
            cursor: Cell::new((first, 0)),
        }
    }
}

/// One block of frames owned by user space until dropped.
pub struct Block<'r> {
    ring: &'r mut RxRing,
    b: usize,
    num: usize,
    /// (offset of the next frame header, frames yielded so far)
    cursor: Cell<(usize, usize)>,
}

impl Block<'_> {
    /// The next frame: `Ok(frame)`, or `Err(len)` for a frame the ring had to cut.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&self) -> Option<Result<&[u8], usize>> {
        let (off, seen) = self.cursor.get();
        if seen >= self.num || off + PKT_HDR_MIN > BLOCK_SIZE {
            return None;
        }
        let r = &*self.ring;
        let snaplen = r.read_u32(self.b, off + PKT_SNAPLEN) as usize;
        let len = r.read_u32(self.b, off + PKT_LEN) as usize;
        let mac = r.read_u16(self.b, off + PKT_MAC) as usize;
        let next = r.read_u32(self.b, off + PKT_NEXT_OFFSET) as usize;
        if off + mac + snaplen > BLOCK_SIZE {
            return None;
        }
        // A zero next offset marks the block's last frame.
        let after = if next == 0 {
            (BLOCK_SIZE, self.num)
        } else {
            (off + next, seen + 1)
        };
        self.cursor.set(after);
        if snaplen < len {
            return Some(Err(len));
        }
        // SAFETY: [off + mac, off + mac + snaplen) lies inside block b (checked above), which
        // belongs to user space until this view is dropped; the slice borrows the view.
        Some(Ok(unsafe {
            std::slice::from_raw_parts(r.block(self.b).add(off + mac), snaplen)
        }))
    }
}

impl Drop for Block<'_> {
    fn drop(&mut self) {
        self.ring
            .status(self.b)
            .store(TP_STATUS_KERNEL, Ordering::Release);
        self.ring.current = (self.b + 1) % BLOCK_COUNT;
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this address and length and is not
        // used after this point.
        unsafe { libc::munmap(self.map.cast(), self.len) };
    }
}
