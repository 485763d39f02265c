//! The one system-call wrapper the userspace plane needs that pnet does not offer: an AF_PACKET
//! socket with `PACKET_IGNORE_OUTGOING` set before it is bound to a port.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

/// `PACKET_IGNORE_OUTGOING` from `<linux/if_packet.h>` (Linux 4.20+); not in the libc crate.
pub const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// Opens an AF_PACKET raw socket that receives nothing yet (protocol 0: it is not hooked into
/// the receive path until pnet binds it with `ETH_P_ALL` to one interface, so no frame of
/// another interface can be queued in between) and that will never see frames sent out of
/// its own interface. pnet drops the packet type, so without this a receive socket also reads
/// the gateway's own transmissions (and those of any other socket on the port) and would loop
/// them back.
///
/// The returned descriptor is meant to be handed to `pnet_datalink::Config::socket_fd`,
/// which takes ownership of it (pnet closes it when the channel is dropped).
pub fn packet_socket_ignoring_outgoing() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a non-negative return value is a fresh descriptor
    // that nothing else owns, so wrapping it in OwnedFd is sound.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above, `fd` is a valid descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_option(&fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)?;
    Ok(fd)
}

/// Reads back an integer socket option (used by tests to prove the option is set).
pub fn get_int_option(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live stack variables of the sizes the kernel is told;
    // the descriptor is borrowed for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Sets an integer socket option.
pub fn set_int_option(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value points to a live c_int and its exact size is passed; the
    // descriptor is borrowed and stays open for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Binds an AF_PACKET socket to one interface for every protocol (`ETH_P_ALL`), which also
/// hooks it into that interface's receive path (and only that interface's).
pub fn bind_to_interface(fd: &OwnedFd, ifindex: u32) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid starting value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as libc::c_ushort;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex as libc::c_int;
    // SAFETY: the address points to a live sockaddr_ll and its exact size is passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts the interface in promiscuous mode for as long as this socket is open
/// (`PACKET_ADD_MEMBERSHIP`/`PACKET_MR_PROMISC`; the kernel drops it when the socket closes).
pub fn add_promiscuous_membership(fd: &OwnedFd, ifindex: u32) -> io::Result<()> {
    // SAFETY: packet_mreq is plain old data; all-zero is a valid starting value.
    let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mreq.mr_ifindex = ifindex as libc::c_int;
    mreq.mr_type = libc::PACKET_MR_PROMISC as libc::c_ushort;
    // SAFETY: the option value points to a live packet_mreq and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            (&mreq as *const libc::packet_mreq).cast(),
            std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receive and send timeouts, so blocked calls return to look at the stop flag.
pub fn set_timeouts(fd: &OwnedFd, timeout: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: the option value points to a live timeval and its exact size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A larger receive queue absorbs bursts while the other port's loop holds the table lock
/// (`SO_RCVBUFFORCE` needs CAP_NET_ADMIN; falls back to `SO_RCVBUF`).
pub fn set_receive_buffer(fd: &OwnedFd, bytes: usize) -> io::Result<()> {
    let v = bytes.min(libc::c_int::MAX as usize) as libc::c_int;
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v)
        .or_else(|_| set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, v))
}

/// Gives up ownership so pnet can take it.
pub fn into_raw(fd: OwnedFd) -> i32 {
    fd.into_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_outgoing_is_set_when_permitted() {
        match packet_socket_ignoring_outgoing() {
            Ok(fd) => {
                let v = get_int_option(&fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING).unwrap();
                assert_eq!(v, 1, "PACKET_IGNORE_OUTGOING must read back as set");
            }
            // Without CAP_NET_RAW the socket cannot be opened at all; nothing to check then.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("skipping: no CAP_NET_RAW");
            }
            Err(e) => panic!("AF_PACKET socket: {e}"),
        }
    }
}
