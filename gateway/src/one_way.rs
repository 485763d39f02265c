//! Claim 1 of JP H11-73391, exactly: what the outside end (the client) of a `one_way` flow (the
//! push, 137) may send. It acknowledges; it carries nothing else:
//!
//! * no payload (TCP or UDP data, or any other protocol's bytes);
//! * no IPv4 options and no IPv6 extension headers;
//! * no URG flag and a zero urgent pointer;
//! * on its SYN (the SYN-ACK of a push) at most 24 bytes of options: MSS, window scale,
//!   SACK-permitted and a timestamp take 19, and macOS pads them to 24;
//! * after it, only the exact layouts of [`OptionLayout`]: none, `NOP NOP TS`, or SACK blocks
//!   (after `NOP NOP TS` or not), and each block must lie inside the sequence range the inside
//!   end has sent.
//!
//! The nftables plane admits the same segments byte for byte (`nft/compile.rs`, `oneway_*`),
//! except that the kernel checks only the highest SACK right edge against what was sent (see
//! README, "What the one-way push still carries"). A pure function: the caller looks up the
//! flow and hands over the inside end's sent range.

use crate::conntrack::{seq_geq, seq_gt};
use crate::packet::{IpPacket, OptionLayout, TcpFlags, L4};

/// Option bytes a SYN from the outside end may carry: MSS (4) + window scale (3) +
/// SACK-permitted (2) + timestamp (10) = 19, padded as the stacks do it: Linux and FreeBSD to 20
/// (`mss,sok,ts,nop,ws`), macOS to 24 (`mss,nop,ws,nop,nop,ts,sok,eol,eol`).
pub const SYN_OPTIONS_MAX: u8 = 24;

/// True if `ip`, sent by the outside end of a `one_way` flow, carries nothing but an
/// acknowledgment. `inside_sent` is the sequence range `[first, next)` the inside end has sent
/// ([`crate::conntrack::ConnTable::sent`]).
pub fn admits(ip: &IpPacket, inside_sent: Option<(u32, u32)>) -> bool {
    if ip.payload_len > 0 || ip.header_extras {
        return false;
    }
    let L4::Tcp(t) = ip.l4 else {
        return true;
    };
    if t.flags.has(TcpFlags::URG) || t.urgent != 0 {
        return false;
    }
    if t.flags.syn() {
        return t.options_len <= SYN_OPTIONS_MAX;
    }
    match t.layout {
        OptionLayout::None | OptionLayout::Ts => true,
        OptionLayout::Sack { blocks, .. } => inside_sent.is_some_and(|(first, next)| {
            blocks
                .iter()
                .all(|(l, r)| seq_gt(r, l) && seq_geq(l, first) && seq_geq(next, r))
        }),
        OptionLayout::Other => false,
    }
}
