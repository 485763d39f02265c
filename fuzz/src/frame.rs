//! The frame parser together with `decide`, over a sequence of frames so that connection
//! state is reached: the lab's rules (`rules/default.yaml`), one connection table, a clock
//! the input moves.
//!
//! Input: records of `[control, length, frame bytes...]`. Control bit 0 is the port (0 outside,
//! 1 inside); bit 1 asks for the IPv4 header and TCP/UDP/ICMP checksums to be made right first
//! (the fuzzer cannot guess them, and a bad checksum is dropped before any state is touched);
//! bits 2..=7 are seconds to advance the clock by before the frame.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use etherparse::checksum::Sum16BitWords;
use stockade_gateway::conntrack::ConnTable;
use stockade_gateway::packet::{self, PacketKind, L4};
use stockade_gateway::{Action, Port, Ruleset};

const LAB_RULES: &str = include_str!("../../rules/default.yaml");

fn lab_rules() -> &'static Ruleset {
    static RULES: OnceLock<Ruleset> = OnceLock::new();
    RULES.get_or_init(|| {
        stockade_gateway::rules::compile_str(LAB_RULES, "rules/default.yaml")
            .expect("the lab rules compile")
            .1
    })
}

pub fn frame_decide(data: &[u8]) {
    let rules = lab_rules();
    let mut table = ConnTable::for_rules(rules);
    let mut now = Instant::now();
    let mut rest = data;
    while let [control, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let mut frame = tail[..n].to_vec();
        rest = &tail[n..];
        let port = if control & 1 == 0 {
            Port::Outside
        } else {
            Port::Inside
        };
        if control & 2 != 0 {
            fix_checksums(&mut frame);
        }
        now += Duration::from_secs(u64::from(control >> 2));
        let (verdict, pkt) =
            stockade_gateway::core::decide_frame(now, rules, &frame, port, &mut table);
        assert_eq!(verdict.reason.is_some(), verdict.action == Action::Drop);
        if verdict.action == Action::Forward {
            let pkt = pkt.expect("a forwarded frame parsed");
            check_forwarded(rules, &pkt, verdict.rule);
        }
    }
}

/// What must hold of every forwarded frame, whatever came before it.
fn check_forwarded(rules: &Ruleset, pkt: &packet::Packet, rule: Option<usize>) {
    let PacketKind::Ip(ip) = &pkt.kind else {
        return;
    };
    assert!(ip.checksum_ok, "forwarded with a bad checksum");
    let one_way = rule.is_some_and(|r| rules.rules()[r].one_way);
    // Claim 1: nothing from the client's side of a one_way (push) connection carries data.
    // (ICMP errors quoting the flow are related to it, not part of it.)
    if one_way && pkt.port == Port::Outside && !matches!(ip.l4, L4::Icmp(_)) {
        assert_eq!(ip.payload_len, 0, "one_way payload forwarded");
    }
}

/// Makes the IPv4 header checksum and the TCP/UDP/ICMP checksum right, where the frame is
/// long enough to have them (fuzz harness only: the gateway itself never rewrites a frame).
fn fix_checksums(f: &mut [u8]) {
    const ETH: usize = 14;
    if f.len() < ETH + 1 {
        return;
    }
    let ether_type = u16::from_be_bytes([f[12], f[13]]);
    let (src, dst, proto, l4_start, l4_end) = match ether_type {
        0x0800 => {
            let ihl = usize::from(f[ETH] & 0x0f) * 4;
            if ihl < 20 || f.len() < ETH + ihl {
                return;
            }
            f[ETH + 10..ETH + 12].fill(0);
            let sum = Sum16BitWords::new()
                .add_slice(&f[ETH..ETH + ihl])
                .ones_complement();
            f[ETH + 10..ETH + 12].copy_from_slice(&sum.to_be_bytes());
            let total = usize::from(u16::from_be_bytes([f[ETH + 2], f[ETH + 3]]));
            let frag = u16::from_be_bytes([f[ETH + 6], f[ETH + 7]]) & 0x3fff;
            if frag != 0 || total < ihl || f.len() < ETH + total {
                return;
            }
            (
                f[ETH + 12..ETH + 16].to_vec(),
                f[ETH + 16..ETH + 20].to_vec(),
                f[ETH + 9],
                ETH + ihl,
                ETH + total,
            )
        }
        0x86dd => {
            if f.len() < ETH + 40 {
                return;
            }
            let len = usize::from(u16::from_be_bytes([f[ETH + 4], f[ETH + 5]]));
            if f.len() < ETH + 40 + len {
                return;
            }
            (
                f[ETH + 8..ETH + 24].to_vec(),
                f[ETH + 24..ETH + 40].to_vec(),
                f[ETH + 6],
                ETH + 40,
                ETH + 40 + len,
            )
        }
        _ => return,
    };
    let at = match proto {
        6 => 16,
        17 => 6,
        1 | 58 => 2,
        _ => return,
    };
    let seg_len = l4_end - l4_start;
    if seg_len < at + 2 {
        return;
    }
    f[l4_start + at..l4_start + at + 2].fill(0);
    let mut sum = Sum16BitWords::new();
    // ICMPv4 has no pseudo-header; TCP, UDP and ICMPv6 do.
    if proto != 1 {
        sum = sum
            .add_slice(&src)
            .add_slice(&dst)
            .add_2bytes([0, proto])
            .add_4bytes((seg_len as u32).to_be_bytes());
    }
    let mut c = sum.add_slice(&f[l4_start..l4_end]).ones_complement();
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    f[l4_start + at..l4_start + at + 2].copy_from_slice(&c.to_be_bytes());
}
