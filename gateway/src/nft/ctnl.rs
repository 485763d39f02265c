//! The kernel's connection table through conntrack netlink (`NETLINK_NETFILTER`, subsystem
//! ctnetlink): dump every entry, delete one, change one's mark.
//!
//! Why a crate and not `conntrack -D`: `netlink-packet-netfilter` (the rust-netlink project,
//! which also maintains the `netlink-packet-*`/`netlink-sys` crates the Rust netlink ecosystem is
//! built on) models ctnetlink's messages and attributes, so a revocation pass is one dump and one
//! message per revoked flow over one socket, with errors per entry, instead of one process per
//! flow and text parsing. Attributes the crate does not model (the ICMP type of a tuple) arrive
//! as raw netlink attributes and are read here.

use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use thiserror::Error;

/// `CTA_PROTO_ICMP_TYPE` and `CTA_PROTO_ICMPV6_TYPE` (linux/netfilter/nfnetlink_conntrack.h).
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;

#[derive(Debug, Error)]
pub enum CtError {
    #[error("conntrack netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("conntrack netlink: cannot decode a message: {0}")]
    Decode(String),
    #[error("conntrack netlink: kernel error {0}")]
    Kernel(i32),
}

/// One tracked connection, as far as revocation needs it.
#[derive(Clone, Debug)]
pub struct CtEntry {
    pub family: NetfilterProtoFamily,
    /// The original tuple exactly as the kernel sent it (echoed back to address the entry).
    orig: Vec<Tuple>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub icmp_type: Option<u8>,
    pub mark: u32,
}

/// A ctnetlink socket in the calling thread's network namespace.
pub struct Conntrack {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Conntrack {
    pub fn open() -> Result<Self, CtError> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Conntrack {
            socket,
            seq: 0,
            buf: vec![0; 1 << 16],
        })
    }

    fn send(
        &mut self,
        family: NetfilterProtoFamily,
        flags: u16,
        msg: ConntrackMessage,
    ) -> Result<u32, CtError> {
        self.seq = self.seq.wrapping_add(1);
        let mut hdr = NetlinkHeader::default();
        hdr.flags = flags;
        hdr.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(
            hdr,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(family, 0, 0),
                msg,
            )),
        );
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;
        Ok(self.seq)
    }

    /// Receives until the end of the answer to `seq` (Done for a dump, an ACK/error
    /// otherwise), handing every conntrack message to `each`.
    fn receive(&mut self, seq: u32, mut each: impl FnMut(NetfilterMessage)) -> Result<(), CtError> {
        loop {
            let size = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < size {
                let bytes = &self.buf[offset..size];
                let msg = NetlinkMessage::<NetfilterMessage>::deserialize(bytes)
                    .map_err(|e| CtError::Decode(e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += len;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(CtError::Kernel(code.get())),
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => each(m),
                    _ => {}
                }
            }
        }
    }

    /// Every entry of the namespace's connection table (IPv4 and IPv6).
    pub fn dump(&mut self) -> Result<Vec<CtEntry>, CtError> {
        let seq = self.send(
            NetfilterProtoFamily::Unspec,
            NLM_F_REQUEST | NLM_F_DUMP,
            ConntrackMessage::Get(vec![]),
        )?;
        let mut out = Vec::new();
        self.receive(seq, |m| {
            let family = m.header.family;
            if let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) = m.inner {
                if let Some(e) = entry(family, attrs) {
                    out.push(e);
                }
            }
        })?;
        Ok(out)
    }

    /// Deletes one entry. An entry that is already gone (it expired meanwhile) is not an error.
    pub fn delete(&mut self, e: &CtEntry) -> Result<bool, CtError> {
        let seq = self.send(
            e.family,
            NLM_F_REQUEST | NLM_F_ACK,
            ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(e.orig.clone())]),
        )?;
        match self.receive(seq, |_| {}) {
            Ok(()) => Ok(true),
            Err(CtError::Kernel(code)) if code == -libc::ENOENT => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Sets the mark of one entry (an update: no NLM_F_CREATE, so nothing is ever created).
    pub fn set_mark(&mut self, e: &CtEntry, mark: u32) -> Result<bool, CtError> {
        let seq = self.send(
            e.family,
            NLM_F_REQUEST | NLM_F_ACK,
            ConntrackMessage::New(vec![
                ConntrackAttribute::CtaTupleOrig(e.orig.clone()),
                ConntrackAttribute::CtaMark(mark),
            ]),
        )?;
        match self.receive(seq, |_| {}) {
            Ok(()) => Ok(true),
            Err(CtError::Kernel(code)) if code == -libc::ENOENT => Ok(false),
            Err(err) => Err(err),
        }
    }
}

fn entry(family: NetfilterProtoFamily, attrs: Vec<ConntrackAttribute>) -> Option<CtEntry> {
    let mut orig = None;
    let mut mark = 0;
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = Some(t),
            ConntrackAttribute::CtaMark(m) => mark = m,
            _ => {}
        }
    }
    let orig = orig?;
    let (mut src, mut dst, mut proto) = (None, None, None);
    let (mut src_port, mut dst_port, mut icmp_type) = (0, 0, None);
    for t in &orig {
        match t {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(v) => src_port = *v,
                        ProtoTuple::DestinationPort(v) => dst_port = *v,
                        ProtoTuple::Other(nla)
                            if matches!(
                                nla.kind(),
                                CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE
                            ) && nla.value_len() == 1 =>
                        {
                            let mut v = [0u8; 1];
                            nla.emit_value(&mut v);
                            icmp_type = Some(v[0]);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(CtEntry {
        family,
        orig,
        src: src?,
        dst: dst?,
        proto: proto?,
        src_port,
        dst_port,
        icmp_type,
        mark,
    })
}
