//! nf_tables netlink, spoken directly where nft is too slow at our set sizes:
//!
//! * set elements ([`apply`]): one transaction of element deletions and additions, for the
//!   reloads in which nothing but the contents of named sets changes (an allowlist edit), and
//!   for filling large sets at start-up;
//! * counters ([`counters`]): `nft -j list counters` lists every set element of the table as
//!   well (0.9 s at 100k prefixes, on every Prometheus scrape); a dump of the counter objects
//!   alone takes a millisecond.
//!
//! Why not `nft`: nft 1.0.6 reads an interval set back into its cache before it adds to or
//! deletes from it (to check overlaps and merge), so a diff of a few elements in a 100k-prefix
//! set costs seconds. The kernel needs none of that here: our sets hold aggregated, disjoint
//! prefixes (see `compile.rs`), and we know exactly what is installed, so the diff is computed in
//! memory and sent as it is. `netlink-packet-netfilter` (already used for conntrack, see
//! `ctnl.rs`) models the nf_tables element messages and the batch control messages.
//!
//! The encoding is the one nft itself sends (checked with `nft --debug=netlink`): in an interval
//! set a prefix is two elements, its first address and, flagged `INTERVAL_END`, the address after
//! its last; a prefix that reaches the top of the address space has no end element and carries
//! nft's "open interval" user data so `nft list` prints it as the prefix it is. Keys are in
//! network byte order. The whole batch is one `sendmsg`, which the kernel applies as one
//! transaction: all of it, or nothing (the ruleset in force is unchanged on any error).

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NlasIterator, Parseable,
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementFlags,
    SetElementList, SetElementMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use thiserror::Error;

use super::compile::TABLE;

/// `NFNL_SUBSYS_NFTABLES` (linux/netfilter/nfnetlink.h): the batch's resource id.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// nft's element user data "flags" (libnftnl `NFTNL_UDATA_SET_ELEM_FLAGS`, 4 bytes, host
/// order) with `NFTNL_SET_ELEM_F_INTERVAL_OPEN`: the interval has no end element.
const UDATA_INTERVAL_OPEN: [u8; 6] = {
    let v = 1u32.to_ne_bytes();
    [1, 4, v[0], v[1], v[2], v[3]]
};
/// Bytes of elements per message: the element list is one netlink attribute, whose length is
/// 16 bits.
const MAX_LIST_BYTES: usize = 48 * 1024;

#[derive(Debug, Error)]
pub enum NlError {
    #[error("nf_tables netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("nf_tables netlink: cannot decode an answer: {0}")]
    Decode(String),
    #[error("nf_tables netlink: the kernel refused the element transaction ({0}: {1})")]
    Kernel(i32, String),
    #[error("nf_tables netlink: the kernel's answer ended early")]
    Incomplete,
}

/// The table family of a set we own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Inet,
    Bridge,
}

impl Family {
    fn proto(self) -> NetfilterProtoFamily {
        match self {
            Family::Inet => NetfilterProtoFamily::Inet,
            Family::Bridge => NetfilterProtoFamily::Bridge,
        }
    }
}

/// A key of a single-address set: a prefix in an interval set, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Prefix(IpNet),
    Addr(IpAddr),
}

impl Key {
    /// Whether nft would treat this element specially: an interval starting at the zero address
    /// replaces nft's own "end at zero" marker element, which only nft's cache logic manages.
    pub fn starts_at_zero(&self) -> bool {
        matches!(self, Key::Prefix(n) if n.network().is_unspecified())
    }
}

/// The changes to one named set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetDelta {
    pub family: Family,
    pub set: String,
    pub delete: Vec<Key>,
    pub add: Vec<Key>,
}

impl SetDelta {
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.add.is_empty()
    }
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// The address after the last one of `n`, if it has one.
fn after(n: &IpNet) -> Option<IpAddr> {
    match n {
        IpNet::V4(v) => u32::from(v.broadcast())
            .checked_add(1)
            .map(|x| IpAddr::V4(x.into())),
        IpNet::V6(v) => u128::from(v.broadcast())
            .checked_add(1)
            .map(|x| IpAddr::V6(x.into())),
    }
}

fn element(key: Vec<u8>, end: bool, open: bool) -> ListAttribute<SetElementAttribute> {
    let mut attrs = vec![SetElementAttribute::Key(DataAttribute::Value(key))];
    if end {
        attrs.push(SetElementAttribute::Flags(SetElementFlags::IntervalEnd));
    }
    if open {
        attrs.push(SetElementAttribute::UserData(UDATA_INTERVAL_OPEN.to_vec()));
    }
    ListAttribute::Element(attrs)
}

/// The kernel elements of one key, as nft encodes them.
pub fn elements(key: &Key) -> Vec<ListAttribute<SetElementAttribute>> {
    match key {
        Key::Addr(a) => vec![element(addr_bytes(*a), false, false)],
        Key::Prefix(n) => match after(n) {
            Some(end) => vec![
                element(addr_bytes(n.network()), false, false),
                element(addr_bytes(end), true, false),
            ],
            None => vec![element(addr_bytes(n.network()), false, true)],
        },
    }
}

fn netlink(flags: u16, inner: NetfilterMessageInner, header: NetfilterHeader) -> Vec<u8> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = flags;
    let mut m = NetlinkMessage::new(
        hdr,
        NetlinkPayload::from(NetfilterMessage::new(header, inner)),
    );
    m.finalize();
    let mut out = vec![0; m.buffer_len()];
    m.serialize(&mut out);
    out
}

/// One batch (begin, element messages, end) as bytes, sequence numbers from 1, and the number
/// of messages that ask for an answer.
pub fn encode(deltas: &[SetDelta]) -> (Vec<u8>, usize) {
    let batch_header =
        || NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES);
    let mut msgs: Vec<Vec<u8>> = vec![netlink(
        NLM_F_REQUEST,
        ControlMessage::BatchBegin.into(),
        batch_header(),
    )];
    let mut acked = 0;
    // Deletions first, so an element may be deleted and re-added in the same transaction.
    for deleting in [true, false] {
        for d in deltas {
            let keys = if deleting { &d.delete } else { &d.add };
            let mut chunk: Vec<ListAttribute<SetElementAttribute>> = Vec::new();
            let mut bytes = 0;
            let mut flush = |chunk: &mut Vec<ListAttribute<SetElementAttribute>>| {
                if chunk.is_empty() {
                    return;
                }
                let body = SetElementMessage {
                    attributes: vec![
                        SetElementList::Table(TABLE.to_string()),
                        SetElementList::Set(d.set.clone()),
                        SetElementList::Elements(std::mem::take(chunk)),
                    ],
                };
                let (msg, flags) = if deleting {
                    (
                        NfTablesMessage::DeleteSetElement(body),
                        NLM_F_REQUEST | NLM_F_ACK,
                    )
                } else {
                    (
                        NfTablesMessage::NewSetElement(body),
                        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
                    )
                };
                msgs.push(netlink(
                    flags,
                    msg.into(),
                    NetfilterHeader::new(d.family.proto(), 0, 0),
                ));
                acked += 1;
            };
            for k in keys {
                for e in elements(k) {
                    use netlink_packet_core::Emitable;
                    bytes += e.buffer_len();
                    chunk.push(e);
                }
                if bytes >= MAX_LIST_BYTES {
                    flush(&mut chunk);
                    bytes = 0;
                }
            }
            flush(&mut chunk);
        }
    }
    msgs.push(netlink(
        NLM_F_REQUEST,
        ControlMessage::BatchEnd.into(),
        batch_header(),
    ));
    // Sequence numbers in order (the answers name the message they belong to).
    let mut out = Vec::with_capacity(msgs.iter().map(Vec::len).sum());
    for (i, mut m) in msgs.into_iter().enumerate() {
        m[8..12].copy_from_slice(&(i as u32 + 1).to_ne_bytes());
        out.extend_from_slice(&m);
    }
    (out, acked)
}

/// Applies `deltas` as one transaction in the calling thread's network namespace.
pub fn apply(deltas: &[SetDelta]) -> Result<(), NlError> {
    // Empty deltas add no message to the batch; nothing to change, no transaction.
    if deltas.iter().all(SetDelta::is_empty) {
        return Ok(());
    }
    let (batch, expected) = encode(deltas);
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // Errors quote only the header of the failed message, not its 48 KiB of elements.
    socket.set_cap_ack(true)?;
    // The kernel takes a batch only whole, in one send; the socket's default buffer is far
    // smaller than 100k elements (root may raise it past the sysctl limit, as nft does).
    crate::dataplane::sockopt::set_int_option(
        &socket,
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        i32::try_from(batch.len() + (1 << 16)).unwrap_or(i32::MAX),
    )?;
    socket.set_rx_buf_sz(1 << 20)?;
    socket.send(&batch, 0)?;
    // One answer per element message (all of them, also after a failure: the kernel checks
    // the whole batch before it aborts it).
    let mut answered = 0;
    let mut failure: Option<(i32, u32)> = None;
    receive(&socket, |msg| {
        if let NetlinkPayload::Error(e) = msg.payload {
            answered += 1;
            if let Some(code) = e.code {
                failure.get_or_insert((code.get(), msg.header.sequence_number));
            }
        }
        (answered == expected).then_some(Ok(()))
    })?;
    match failure {
        Some((code, seq)) => Err(NlError::Kernel(
            code,
            format!("message {seq}: {}", errno(code)),
        )),
        None => Ok(()),
    }
}

/// The text of a netlink error code (a negative errno).
fn errno(code: i32) -> String {
    std::io::Error::from_raw_os_error(-code).to_string()
}

/// Reads the kernel's answer from `socket`, message by message, until `each` returns a result.
fn receive<T>(
    socket: &Socket,
    mut each: impl FnMut(NetlinkMessage<NetfilterMessage>) -> Option<Result<T, NlError>>,
) -> Result<T, NlError> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let size = socket.recv(&mut &mut buf[..], 0)?;
        if size == 0 {
            return Err(NlError::Incomplete);
        }
        let mut offset = 0;
        while offset < size {
            let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[offset..size])
                .map_err(|e| NlError::Decode(e.to_string()))?;
            let len = msg.header.length as usize;
            if len == 0 {
                break;
            }
            offset += len;
            if let Some(result) = each(msg) {
                return result;
            }
        }
    }
}

/// `NFTA_OBJ_*` and `NFTA_COUNTER_*` (linux/netfilter/nf_tables.h).
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
const NFT_OBJECT_COUNTER: u32 = 1;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

fn nla_value(nla: &DefaultNla) -> Vec<u8> {
    let mut v = vec![0; nla.value_len()];
    nla.emit_value(&mut v);
    v
}

fn c_string(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

/// One counter object from a `NEWOBJ` message: (name, packets, bytes).
fn counter_of(attrs: &[DefaultNla]) -> Option<(String, u64, u64)> {
    let (mut name, mut packets, mut bytes) = (None, None, None);
    for a in attrs {
        match a.kind() & !netlink_packet_core::NLA_F_NESTED {
            NFTA_OBJ_NAME => name = Some(c_string(&nla_value(a))),
            NFTA_OBJ_DATA => {
                let data = nla_value(a);
                for inner in NlasIterator::new(&data[..]) {
                    let inner = DefaultNla::parse(&inner.ok()?).ok()?;
                    let v: [u8; 8] = nla_value(&inner).try_into().ok()?;
                    match inner.kind() {
                        NFTA_COUNTER_BYTES => bytes = Some(u64::from_be_bytes(v)),
                        NFTA_COUNTER_PACKETS => packets = Some(u64::from_be_bytes(v)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((name?, packets?, bytes?))
}

/// Every named counter of our table in `family`: name -> (packets, bytes). A table that does
/// not exist has none.
pub fn counters(family: Family) -> Result<Vec<(String, u64, u64)>, NlError> {
    let socket = Socket::new(NETLINK_NETFILTER)?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let request = netlink(
        NLM_F_REQUEST | NLM_F_DUMP,
        NfTablesMessage::GetObject(vec![
            DefaultNla::new(NFTA_OBJ_TABLE, format!("{TABLE}\0").into_bytes()),
            DefaultNla::new(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER.to_be_bytes().to_vec()),
        ])
        .into(),
        NetfilterHeader::new(family.proto(), 0, 0),
    );
    socket.send(&request, 0)?;
    let mut out = Vec::new();
    receive(&socket, |msg| match msg.payload {
        NetlinkPayload::Done(_) => Some(Ok(())),
        NetlinkPayload::Error(e) => match e.code {
            // No table of ours in this family: no counters.
            None => Some(Ok(())),
            Some(code) if code.get() == -libc::ENOENT => Some(Ok(())),
            Some(code) => Some(Err(NlError::Kernel(
                code.get(),
                format!("counter dump: {}", errno(code.get())),
            ))),
        },
        NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewObject(attrs)),
            ..
        }) => {
            out.extend(counter_of(&attrs));
            None
        }
        _ => None,
    })?;
    Ok(out)
}

/// An attribute's bytes, as the kernel sends it (for the tests).
#[cfg(test)]
fn nla_buffer(kind: u16, value: &[u8]) -> Vec<u8> {
    let nla = DefaultNla::new(kind, value.to_vec());
    let mut out = vec![0; netlink_packet_core::Emitable::buffer_len(&nla)];
    netlink_packet_core::Emitable::emit(&nla, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        Key::Prefix(s.parse().unwrap())
    }

    fn keys_of(e: &ListAttribute<SetElementAttribute>) -> (Vec<u8>, bool, bool) {
        let ListAttribute::Element(attrs) = e else {
            panic!("not an element")
        };
        let mut out = (Vec::new(), false, false);
        for a in attrs {
            match a {
                SetElementAttribute::Key(DataAttribute::Value(v)) => out.0 = v.clone(),
                SetElementAttribute::Flags(f) => out.1 = f.contains(SetElementFlags::IntervalEnd),
                SetElementAttribute::UserData(u) => out.2 = u == &UDATA_INTERVAL_OPEN.to_vec(),
                _ => {}
            }
        }
        out
    }

    #[test]
    fn prefixes_encode_as_nft_does() {
        // What `nft --debug=netlink add element ... { 10.0.1.0/25, 10.0.2.5, 255.255.255.0/24 }`
        // sends, element by element.
        let e: Vec<_> = elements(&key("10.0.1.0/25")).iter().map(keys_of).collect();
        assert_eq!(
            e,
            [
                (vec![10, 0, 1, 0], false, false),
                (vec![10, 0, 1, 128], true, false)
            ]
        );
        let e: Vec<_> = elements(&key("10.0.2.5/32")).iter().map(keys_of).collect();
        assert_eq!(
            e,
            [
                (vec![10, 0, 2, 5], false, false),
                (vec![10, 0, 2, 6], true, false)
            ]
        );
        let e: Vec<_> = elements(&key("255.255.255.0/24"))
            .iter()
            .map(keys_of)
            .collect();
        assert_eq!(e, [(vec![255, 255, 255, 0], false, true)]);
        let e: Vec<_> = elements(&key("2001:db8::/32"))
            .iter()
            .map(keys_of)
            .collect();
        let mut end = vec![0x20, 0x01, 0x0d, 0xb9];
        end.resize(16, 0);
        assert_eq!(e[1], (end, true, false));
        let e: Vec<_> = elements(&Key::Addr("198.51.100.7".parse().unwrap()))
            .iter()
            .map(keys_of)
            .collect();
        assert_eq!(e, [(vec![198, 51, 100, 7], false, false)]);
    }

    #[test]
    fn counter_objects_decode() {
        let mut data = nla_buffer(NFTA_COUNTER_BYTES, &1234u64.to_be_bytes());
        data.extend(nla_buffer(NFTA_COUNTER_PACKETS, &7u64.to_be_bytes()));
        let attrs = vec![
            DefaultNla::new(NFTA_OBJ_TABLE, b"stockade_gateway\0".to_vec()),
            DefaultNla::new(NFTA_OBJ_NAME, b"fwd_1_in\0".to_vec()),
            DefaultNla::new(NFTA_OBJ_DATA | netlink_packet_core::NLA_F_NESTED, data),
        ];
        assert_eq!(counter_of(&attrs), Some(("fwd_1_in".into(), 7, 1234)));
        assert_eq!(counter_of(&attrs[..2]), None, "no data, no counter");
    }

    #[test]
    fn zero_start_is_flagged() {
        assert!(key("0.0.0.0/8").starts_at_zero());
        assert!(key("::/16").starts_at_zero());
        assert!(!key("10.0.0.0/8").starts_at_zero());
        assert!(!Key::Addr("0.0.0.0".parse().unwrap()).starts_at_zero());
    }

    #[test]
    fn large_deltas_split_into_messages_under_the_attribute_limit() {
        let add: Vec<Key> = (0..20_000u32)
            .map(|i| Key::Prefix(IpNet::new(IpAddr::V4((0x0a00_0000 + i * 4).into()), 30).unwrap()))
            .collect();
        let d = SetDelta {
            family: Family::Inet,
            set: "s".into(),
            delete: vec![key("192.0.2.0/24")],
            add,
        };
        let (bytes, acked) = encode(&[d]);
        // Walk the batch: begin, one delete, several adds, end; every message < 64 KiB and
        // sequence numbers 1.. in order.
        let mut off = 0;
        let mut seqs = Vec::new();
        let mut types = Vec::new();
        while off < bytes.len() {
            let len = u32::from_ne_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
            assert!(len < 65_536, "message of {len} bytes");
            types.push(u16::from_ne_bytes(
                bytes[off + 4..off + 6].try_into().unwrap(),
            ));
            seqs.push(u32::from_ne_bytes(
                bytes[off + 8..off + 12].try_into().unwrap(),
            ));
            off += len;
        }
        assert_eq!(off, bytes.len());
        assert_eq!(seqs, (1..=seqs.len() as u32).collect::<Vec<_>>());
        assert_eq!(types[0], 0x10, "batch begin");
        assert_eq!(*types.last().unwrap(), 0x11, "batch end");
        // NFT_MSG_DELSETELEM (14) then NFT_MSG_NEWSETELEM (12), subsystem 10 in the high byte.
        assert_eq!(types[1], (10 << 8) | 14);
        assert!(types[2..types.len() - 1]
            .iter()
            .all(|t| *t == (10 << 8) | 12));
        assert_eq!(acked, types.len() - 2);
        assert!(acked > 3, "20k prefixes need several messages");
    }
}
