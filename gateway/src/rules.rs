//! The rules file: one serde type for the YAML schema ([`RulesFile`]), its loader, and the
//! compiled, immutable [`Ruleset`] the decision core looks packets up in.
//!
//! `serde_yaml` (archived upstream, but what the project named) is used only in this module,
//! in [`load_str`], so a maintained fork can replace it in one line.
//!
//! Lookups do not scan CIDR lists: every direction has one longest-prefix-match table per
//! address family for sources and one for destinations (`prefix-trie`). Each stored prefix
//! carries the bitset of rules whose source (or destination) contains it, already merged with
//! the bitsets of all shorter prefixes that contain it, so one LPM lookup gives every rule the
//! address matches. `src bits & dst bits`, then the lowest set bit whose protocol and ports
//! match, is the first matching rule in file order.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::core::Direction;
use crate::packet::{proto, MacAddr};

// ---------------------------------------------------------------------------------------------
// The schema
// ---------------------------------------------------------------------------------------------

/// A stockade-gateway rules file: firewall 45 of JP H11-73391 as data. Default drop: a packet
/// that no `accept` rule admits (and that belongs to no admitted connection) is dropped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// Gateway-wide settings.
    pub settings: Settings,
    /// Named sets of CIDRs (IPv4 and IPv6). A bare address means a single host (/32 or /128).
    #[serde(default)]
    pub sets: BTreeMap<String, Vec<Cidr>>,
    /// MAC pins: a frame whose IP source (or ARP sender) is this address must come from this
    /// MAC, else it is dropped as `spoofed`. Every address admitted inbound must be pinned.
    #[serde(default)]
    pub pins: BTreeMap<IpAddr, MacAddr>,
    /// Rules in order; the first one that matches a new connection decides it.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// Gateway-wide settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Addresses that may appear as a source on the inside (stock) port. Used for
    /// anti-spoofing: these may not arrive on the outside port, and nothing else may arrive on
    /// the inside port. Set names or CIDRs.
    pub inside_sources: Vec<AddrRef>,
    /// Maximum number of tracked connections. When full, new connections are dropped as
    /// `conntrack_full`; established ones keep working.
    #[serde(default = "default_conntrack_limit")]
    pub conntrack_limit: usize,
    /// Idle timeouts in seconds.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// TCP sequence window checking: `loose` (default) or `strict` (pf-style).
    #[serde(default)]
    pub tcp_window: TcpWindow,
    /// IP fragments: `drop` (default) or `forward` (only between the two addresses of a
    /// tracked, non-`one_way` connection of the same protocol).
    #[serde(default)]
    pub fragments: Policy,
    /// Frames that cannot be parsed: `drop` (default) or `forward` (unchecked; `check` warns).
    #[serde(default)]
    pub malformed: Policy,
    /// Where `/metrics` listens (the management address, never a data port), e.g.
    /// `192.0.2.1:9464`.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

fn default_conntrack_limit() -> usize {
    65536
}

/// Idle timeouts, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP before the handshake completes.
    pub tcp_opening: u64,
    /// TCP established.
    pub tcp_established: u64,
    /// TCP after the first FIN.
    pub tcp_closing: u64,
    /// TCP after both FINs or a RST (late segments still match the flow).
    pub tcp_closed: u64,
    /// UDP with traffic seen one way only.
    pub udp_single: u64,
    /// UDP with traffic seen both ways.
    pub udp_multiple: u64,
    /// ICMP/ICMPv6 echo, and other protocols.
    pub icmp: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        // pf's defaults (tcp.first 120, tcp.established 86400, tcp.closing 900 shortened,
        // udp.first 60, udp.multiple 60, icmp 20) adjusted for a lab gateway.
        Timeouts {
            tcp_opening: 30,
            tcp_established: 86400,
            tcp_closing: 120,
            tcp_closed: 10,
            udp_single: 30,
            udp_multiple: 120,
            icmp: 20,
        }
    }
}

impl Timeouts {
    /// Seconds as a `Duration`.
    pub fn secs(v: u64) -> Duration {
        Duration::from_secs(v)
    }
}

/// TCP sequence window checking.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TcpWindow {
    /// Accept segments within a generous window (±1 GiB of the tracked sequence) and RSTs
    /// only inside the receiver's window.
    #[default]
    Loose,
    /// pf-style: segments must fit the peer's advertised (scaled) window, ACKs may not run
    /// ahead of data sent, and RSTs must carry exactly the expected sequence number.
    Strict,
}

/// What to do with frames that a check cannot classify.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Drop and count.
    #[default]
    Drop,
    /// Forward (see the setting's description for the limits).
    Forward,
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique name; it is the `rule` label of the metrics.
    pub name: String,
    /// `inbound` (toward the inside/stock port) or `outbound` (from it). The direction also
    /// fixes the port a new connection may arrive on.
    pub direction: Direction,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or `any`.
    pub protocol: Protocol,
    /// Sources: set names, CIDRs, or `any`.
    pub src: Vec<AddrRef>,
    /// Destinations: set names, CIDRs, or `any`.
    pub dst: Vec<AddrRef>,
    /// Source ports (tcp/udp only): numbers or ranges like "1024-65535". Empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub src_ports: Vec<PortSpec>,
    /// Destination ports (tcp/udp only). Empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dst_ports: Vec<PortSpec>,
    /// ICMP or ICMPv6 types (icmp/icmpv6 only). Empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icmp_types: Vec<u8>,
    /// `accept` opens a tracked connection; `drop` drops (reason `no_rule`, rule named).
    pub action: RuleAction,
    /// Claim 1 of JP H11-73391: on connections opened under this rule, packets from the
    /// outside side may only acknowledge (pure ACK/FIN/RST): no payload, IP options, IPv6
    /// extension headers or urgent data, and TCP options only as a SYN-ACK's or as a
    /// timestamp and SACK blocks inside what was sent; anything else is dropped as `one_way`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_way: bool,
    /// Why an inbound accept rule admits sources that are not pinned to a MAC. Without it,
    /// such a rule is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpinned_reason: Option<String>,
    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Transport protocol of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP (IPv4).
    Icmp,
    /// ICMPv6.
    Icmpv6,
    /// Any IP protocol.
    Any,
}

impl Protocol {
    /// True if an IP protocol number is covered.
    pub fn matches(self, p: u8) -> bool {
        match self {
            Protocol::Tcp => p == proto::TCP,
            Protocol::Udp => p == proto::UDP,
            Protocol::Icmp => p == proto::ICMP,
            Protocol::Icmpv6 => p == proto::ICMPV6,
            Protocol::Any => true,
        }
    }

    /// The protocol number, or None for `any`.
    pub fn number(self) -> Option<u8> {
        match self {
            Protocol::Tcp => Some(proto::TCP),
            Protocol::Udp => Some(proto::UDP),
            Protocol::Icmp => Some(proto::ICMP),
            Protocol::Icmpv6 => Some(proto::ICMPV6),
            Protocol::Any => None,
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Icmpv6 => "icmpv6",
            Protocol::Any => "any",
        }
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "icmp" => Ok(Protocol::Icmp),
            "icmpv6" => Ok(Protocol::Icmpv6),
            "any" => Ok(Protocol::Any),
            o => Err(format!(
                "expected one of tcp, udp, icmp, icmpv6, any; got `{o}`"
            )),
        }
    }
}

/// What a rule does with a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Admit and track the connection.
    Accept,
    /// Drop it.
    Drop,
}

/// A CIDR (or a bare address, meaning one host). Host bits must be zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(pub IpNet);

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(a) = s.parse::<IpAddr>() {
            return Ok(Cidr(IpNet::from(a)));
        }
        let net: IpNet = s.parse().map_err(|_| {
            format!(
                "expected a CIDR like 198.51.100.0/24 or 2001:db8::/32, or an address; got `{s}`"
            )
        })?;
        if net.trunc() != net {
            return Err(format!(
                "`{s}` has host bits set; expected the network address, e.g. `{}`",
                net.trunc()
            ));
        }
        Ok(Cidr(net))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Cidr {
    fn schema_name() -> String {
        "Cidr".to_string()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        string_schema(
            "An IPv4 or IPv6 CIDR (e.g. 198.51.100.0/24, 2001:db8::/32) or a single address.",
            None,
        )
    }
}

/// An address reference in a rule: `any`, a set name, or an inline CIDR/address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AddrRef {
    /// Every IPv4 and IPv6 address.
    Any,
    /// An inline CIDR.
    Cidr(Cidr),
    /// A named set from `sets:`.
    Set(String),
}

impl FromStr for AddrRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "any" {
            return Ok(AddrRef::Any);
        }
        let looks_numeric = s.contains(':')
            || s.contains('/')
            || s.chars().next().is_some_and(|c| c.is_ascii_digit());
        if looks_numeric {
            return s.parse().map(AddrRef::Cidr);
        }
        if valid_name(s) {
            Ok(AddrRef::Set(s.to_string()))
        } else {
            Err(format!(
                "expected `any`, a set name (letters, digits, `-`, `_`) or a CIDR; got `{s}`"
            ))
        }
    }
}

impl fmt::Display for AddrRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrRef::Any => f.write_str("any"),
            AddrRef::Cidr(c) => c.fmt(f),
            AddrRef::Set(s) => f.write_str(s),
        }
    }
}

impl Serialize for AddrRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AddrRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for AddrRef {
    fn schema_name() -> String {
        "AddrRef".to_string()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        string_schema(
            "`any`, the name of a set from `sets:`, or an inline CIDR or address.",
            None,
        )
    }
}

/// A port or an inclusive port range ("1024-65535").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec {
    /// First port.
    pub lo: u16,
    /// Last port (inclusive).
    pub hi: u16,
}

impl PortSpec {
    /// True if `p` is in the range.
    pub fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl FromStr for PortSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("expected a port (0-65535) or a range like 1024-65535; got `{s}`");
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s.trim(), s.trim()),
        };
        let lo: u16 = lo.parse().map_err(|_| bad())?;
        let hi: u16 = hi.parse().map_err(|_| bad())?;
        if lo > hi {
            return Err(format!("port range `{s}` is empty: {lo} > {hi}"));
        }
        Ok(PortSpec { lo, hi })
    }
}

impl Serialize for PortSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.lo == self.hi {
            s.serialize_u16(self.lo)
        } else {
            s.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port (0-65535) or a range like \"1024-65535\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortSpec, E> {
                let p = u16::try_from(v)
                    .map_err(|_| E::custom(format!("expected a port 0-65535, got {v}")))?;
                Ok(PortSpec { lo: p, hi: p })
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortSpec, E> {
                let p = u16::try_from(v)
                    .map_err(|_| E::custom(format!("expected a port 0-65535, got {v}")))?;
                Ok(PortSpec { lo: p, hi: p })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortSpec, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for PortSpec {
    fn schema_name() -> String {
        "PortSpec".to_string()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        use schemars::schema::*;
        let num = SchemaObject {
            instance_type: Some(InstanceType::Integer.into()),
            number: Some(Box::new(NumberValidation {
                minimum: Some(0.0),
                maximum: Some(65535.0),
                ..Default::default()
            })),
            ..Default::default()
        };
        let range = string_schema("", Some("^[0-9]{1,5}-[0-9]{1,5}$"));
        SchemaObject {
            metadata: Some(Box::new(Metadata {
                description: Some("A port, or an inclusive range \"lo-hi\".".to_string()),
                ..Default::default()
            })),
            subschemas: Some(Box::new(SubschemaValidation {
                one_of: Some(vec![num.into(), range]),
                ..Default::default()
            })),
            ..Default::default()
        }
        .into()
    }
}

fn string_schema(desc: &str, pattern: Option<&str>) -> schemars::schema::Schema {
    use schemars::schema::*;
    SchemaObject {
        instance_type: Some(InstanceType::String.into()),
        string: pattern.map(|p| {
            Box::new(StringValidation {
                pattern: Some(p.to_string()),
                ..Default::default()
            })
        }),
        metadata: (!desc.is_empty()).then(|| {
            Box::new(Metadata {
                description: Some(desc.to_string()),
                ..Default::default()
            })
        }),
        ..Default::default()
    }
    .into()
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s != "any"
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The JSON Schema of [`RulesFile`], pretty-printed (committed as `rules/schema.json`).
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(RulesFile);
    let mut s = serde_json::to_string_pretty(&schema).expect("schema serializes");
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------------------------
// Errors and loading
// ---------------------------------------------------------------------------------------------

/// Where in the source an error is, found after the fact for semantic errors.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Hint {
    Rule { name: String, token: Option<String> },
    Set { name: String, token: Option<String> },
    Settings { token: String },
    Pin { addr: String },
}

/// An invalid rules file: `file:line:column: message`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct RulesError {
    /// File name (or "<input>").
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong and what was expected.
    pub message: String,
    hint: Option<Box<Hint>>,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{}:{}: {}", self.file, l, c, self.message),
            (Some(l), None) => write!(f, "{}:{}: {}", self.file, l, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl RulesError {
    fn new(message: impl Into<String>, hint: Option<Hint>) -> Self {
        RulesError {
            file: "<input>".to_string(),
            line: None,
            column: None,
            message: message.into(),
            hint: hint.map(Box::new),
        }
    }

    /// Attach the file name and, where the error came from compiling, find the line.
    fn located(mut self, origin: &str, text: &str) -> Self {
        self.file = origin.to_string();
        if self.line.is_none() {
            if let Some(h) = &self.hint {
                if let Some((l, c)) = locate(text, h) {
                    self.line = Some(l);
                    self.column = Some(c);
                }
            }
        }
        self
    }
}

/// Read and parse a rules file (schema only; see [`load_ruleset`] for a checked, compiled one).
pub fn load_file(path: impl AsRef<Path>) -> Result<RulesFile, RulesError> {
    let path = path.as_ref();
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| RulesError {
        file: origin.clone(),
        line: None,
        column: None,
        message: format!("cannot read: {e}"),
        hint: None,
    })?;
    load_str(&text, &origin)
}

/// Parse rules from text; `origin` names it in errors.
pub fn load_str(text: &str, origin: &str) -> Result<RulesFile, RulesError> {
    serde_yaml::from_str::<RulesFile>(text).map_err(|e| {
        let loc = e.location();
        let mut msg = e.to_string();
        // serde_yaml appends " at line L column C"; we print the position in front instead.
        if let Some(i) = msg.find(" at line ") {
            msg.truncate(i);
        }
        RulesError {
            file: origin.to_string(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            message: msg,
            hint: None,
        }
    })
}

/// Read, parse and compile a rules file; every error carries file:line:column.
pub fn load_ruleset(path: impl AsRef<Path>) -> Result<(RulesFile, Ruleset), RulesError> {
    let path = path.as_ref();
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| RulesError {
        file: origin.clone(),
        line: None,
        column: None,
        message: format!("cannot read: {e}"),
        hint: None,
    })?;
    compile_str(&text, &origin)
}

/// Parse and compile rules from text.
pub fn compile_str(text: &str, origin: &str) -> Result<(RulesFile, Ruleset), RulesError> {
    let file = load_str(text, origin)?;
    let rs = Ruleset::compile(&file).map_err(|e| e.located(origin, text))?;
    Ok((file, rs))
}

/// Position (1-based line, column) of rule `name` in `text`.
pub(crate) fn locate_rule(text: &str, name: &str, token: Option<&str>) -> Option<(usize, usize)> {
    locate(
        text,
        &Hint::Rule {
            name: name.to_string(),
            token: token.map(str::to_string),
        },
    )
}

/// Position of set `name` in `text`.
pub(crate) fn locate_set(text: &str, name: &str) -> Option<(usize, usize)> {
    locate(
        text,
        &Hint::Set {
            name: name.to_string(),
            token: None,
        },
    )
}

/// Position of a settings key in `text`.
pub(crate) fn locate_setting(text: &str, key: &str) -> Option<(usize, usize)> {
    locate(
        text,
        &Hint::Settings {
            token: key.to_string(),
        },
    )
}

/// Find a hint's position: the anchor line (rule name, set key, settings key), then the first
/// occurrence of the token after it.
fn locate(text: &str, hint: &Hint) -> Option<(usize, usize)> {
    let find_from = |from: usize, needle: &str| text[from..].find(needle).map(|i| from + i);
    let anchor = |needles: &[String]| needles.iter().filter_map(|n| find_from(0, n)).min();
    let (start, token) = match hint {
        Hint::Rule { name, token } => {
            let start = anchor(&[
                format!("name: {name}"),
                format!("name: \"{name}\""),
                format!("name: '{name}'"),
            ])?;
            (start, token.clone())
        }
        Hint::Set { name, token } => {
            let sets = find_from(0, "sets:").unwrap_or(0);
            let start = [format!("{name}:"), format!("\"{name}\":")]
                .iter()
                .filter_map(|n| find_from(sets, n))
                .min()?;
            (start, token.clone())
        }
        Hint::Settings { token } => (find_from(0, "settings:")?, Some(token.clone())),
        Hint::Pin { addr } => (find_from(0, "pins:")?, Some(addr.clone())),
    };
    let pos = token.and_then(|t| find_from(start, &t)).unwrap_or(start);
    let line = text[..pos].matches('\n').count() + 1;
    let col = pos - text[..pos].rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    Some((line, col))
}

// ---------------------------------------------------------------------------------------------
// The compiled ruleset
// ---------------------------------------------------------------------------------------------

/// One rule after set references are resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledRule {
    /// Name.
    pub name: String,
    /// Direction.
    pub direction: Direction,
    /// Protocol.
    pub protocol: Protocol,
    /// Resolved source CIDRs (sorted, deduplicated).
    pub src: Vec<IpNet>,
    /// Resolved destination CIDRs.
    pub dst: Vec<IpNet>,
    /// Source port ranges; empty = any.
    pub src_ports: Vec<PortSpec>,
    /// Destination port ranges; empty = any.
    pub dst_ports: Vec<PortSpec>,
    /// ICMP types; empty = any.
    pub icmp_types: Vec<u8>,
    /// Accept or drop.
    pub action: RuleAction,
    /// Claim 1 one-way option.
    pub one_way: bool,
}

/// The L3/L4 fields a rule is matched against (the first packet of a connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowQuery {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// TCP/UDP source port (0 otherwise).
    pub src_port: u16,
    /// TCP/UDP destination port (0 otherwise).
    pub dst_port: u16,
    /// ICMP type, for ICMP/ICMPv6.
    pub icmp_type: Option<u8>,
}

impl CompiledRule {
    /// Protocol, ports and ICMP type (not addresses) match.
    pub fn matches_l4(&self, q: &FlowQuery) -> bool {
        if !self.protocol.matches(q.proto) {
            return false;
        }
        let port_ok =
            |ranges: &[PortSpec], p: u16| ranges.is_empty() || ranges.iter().any(|r| r.contains(p));
        if !port_ok(&self.src_ports, q.src_port) || !port_ok(&self.dst_ports, q.dst_port) {
            return false;
        }
        if !self.icmp_types.is_empty() {
            match q.icmp_type {
                Some(t) if self.icmp_types.contains(&t) => {}
                _ => return false,
            }
        }
        true
    }

    /// Full match by scanning the CIDR lists (used by lints and tests, not per packet).
    pub fn matches_linear(&self, q: &FlowQuery) -> bool {
        self.matches_l4(q)
            && self.src.iter().any(|n| n.contains(&q.src))
            && self.dst.iter().any(|n| n.contains(&q.dst))
    }
}

/// Everything the core needs to know about one address, found with one LPM lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrInfo {
    /// May be a source on the inside (stock) port.
    pub inside: bool,
    /// Mentioned by the rules (ARP / neighbour discovery pass only for these).
    pub known: bool,
    /// The MAC this exact address is pinned to.
    pub pin: Option<MacAddr>,
    /// Bitsets of the rules whose [inbound src, outbound src, inbound dst, outbound dst]
    /// contain the address (indices into `Ruleset::bitsets`).
    bits: [u32; 4],
}

/// An address no stored prefix contains.
const NO_INFO: AddrInfo = AddrInfo {
    inside: false,
    known: false,
    pin: None,
    bits: [0; 4],
};

/// What one stored prefix contributes before merging with the prefixes containing it.
#[derive(Clone, Debug, Default)]
struct Own {
    bits: [Vec<u64>; 4],
    inside: bool,
    known: bool,
    pin: Option<MacAddr>,
}

/// One longest-prefix-match table per family from address to [`AddrInfo`]. Each prefix's
/// info is already merged with that of every shorter prefix containing it (rule bits and the
/// inside/known flags are inherited; a pin belongs to its exact address only), so a single
/// LPM lookup answers everything about an address.
#[derive(Debug, Default)]
struct AddrTable {
    v4: PrefixMap<Ipv4Net, u32>,
    v6: PrefixMap<Ipv6Net, u32>,
    infos: Vec<AddrInfo>,
    /// Interned rule bitsets; index 0 is all zeroes.
    bitsets: Vec<Box<[u64]>>,
}

impl AddrTable {
    fn build(own: BTreeMap<IpNet, Own>, words: usize) -> AddrTable {
        let mut t = AddrTable {
            bitsets: vec![vec![0; words].into_boxed_slice()],
            ..Default::default()
        };
        let mut bit_ids: HashMap<Box<[u64]>, u32> = HashMap::new();
        bit_ids.insert(t.bitsets[0].clone(), 0);
        let mut info_ids: HashMap<AddrInfo, u32> = HashMap::new();
        // Shorter prefixes first, so each prefix's containing prefixes are already in the trie
        // and the nearest one carries everything inherited.
        let mut order: Vec<(IpNet, Own)> = own.into_iter().collect();
        order.sort_by_key(|(n, _)| n.prefix_len());
        for (net, mut o) in order {
            let parent = match net {
                IpNet::V4(n) => t.v4.get_lpm(&n).map(|(_, &i)| i),
                IpNet::V6(n) => t.v6.get_lpm(&n).map(|(_, &i)| i),
            }
            .map(|i| t.infos[i as usize]);
            let mut info = AddrInfo {
                inside: o.inside,
                known: o.known,
                pin: o.pin,
                bits: [0; 4],
            };
            for (k, own_bits) in o.bits.iter_mut().enumerate() {
                let mut bits = if own_bits.is_empty() {
                    vec![0; words]
                } else {
                    std::mem::take(own_bits)
                };
                if let Some(p) = parent {
                    for (b, pb) in bits.iter_mut().zip(t.bitsets[p.bits[k] as usize].iter()) {
                        *b |= pb;
                    }
                }
                let bits = bits.into_boxed_slice();
                info.bits[k] = match bit_ids.get(&bits) {
                    Some(&id) => id,
                    None => {
                        let id = t.bitsets.len() as u32;
                        t.bitsets.push(bits.clone());
                        bit_ids.insert(bits, id);
                        id
                    }
                };
            }
            if let Some(p) = parent {
                info.inside |= p.inside;
                info.known |= p.known;
            }
            let id = *info_ids.entry(info).or_insert_with(|| {
                t.infos.push(info);
                (t.infos.len() - 1) as u32
            });
            match net {
                IpNet::V4(n) => {
                    t.v4.insert(n, id);
                }
                IpNet::V6(n) => {
                    t.v6.insert(n, id);
                }
            }
        }
        t
    }

    #[inline]
    fn lookup(&self, ip: IpAddr) -> &AddrInfo {
        let id = match ip {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).map(|(_, &i)| i),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).map(|(_, &i)| i),
        };
        match id {
            Some(i) => &self.infos[i as usize],
            None => &NO_INFO,
        }
    }
}

/// The compiled rules: immutable, shared in an `Arc`, swapped whole on reload.
#[derive(Debug)]
pub struct Ruleset {
    names: Vec<String>,
    rules: Vec<CompiledRule>,
    settings: Settings,
    words: usize,
    table: AddrTable,
    inside_cidrs: Vec<IpNet>,
}

fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    }
}

const ANY: [IpNet; 2] = [
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0)),
    IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 0)),
];

impl Ruleset {
    /// Resolve set references, validate, and build the lookup tables.
    pub fn compile(file: &RulesFile) -> Result<Ruleset, RulesError> {
        let s = &file.settings;
        // Sets.
        for name in file.sets.keys() {
            if !valid_name(name) {
                return Err(RulesError::new(
                    format!(
                        "set name `{name}`: expected letters, digits, `-` or `_`, starting with a letter (and not `any`)"
                    ),
                    Some(Hint::Set { name: name.clone(), token: None }),
                ));
            }
        }
        let resolve = |refs: &[AddrRef],
                       hint: &dyn Fn(String) -> Hint|
         -> Result<Vec<IpNet>, RulesError> {
            let mut out = Vec::new();
            for r in refs {
                match r {
                    AddrRef::Any => out.extend_from_slice(&ANY),
                    AddrRef::Cidr(c) => out.push(c.0),
                    AddrRef::Set(n) => match file.sets.get(n) {
                        Some(v) => out.extend(v.iter().map(|c| c.0)),
                        None => {
                            let known: Vec<&str> = file.sets.keys().map(String::as_str).collect();
                            return Err(RulesError::new(
                                format!(
                                    "unknown set `{n}`; expected `any`, a CIDR or one of the sets: {}",
                                    if known.is_empty() { "(none defined)".to_string() } else { known.join(", ") }
                                ),
                                Some(hint(n.clone())),
                            ));
                        }
                    },
                }
            }
            out.sort();
            out.dedup();
            Ok(out)
        };

        // Settings.
        if s.conntrack_limit == 0 {
            return Err(RulesError::new(
                "conntrack_limit: expected a positive number of connections",
                Some(Hint::Settings {
                    token: "conntrack_limit".into(),
                }),
            ));
        }
        if s.inside_sources.is_empty() {
            return Err(RulesError::new(
                "inside_sources: expected at least one set or CIDR (the stock side's addresses); with none every packet from the inside port is spoofed",
                Some(Hint::Settings { token: "inside_sources".into() }),
            ));
        }
        let inside_cidrs = resolve(&s.inside_sources, &|n| Hint::Settings { token: n })?;

        // Pins.
        for (addr, mac) in &file.pins {
            if mac.0[0] & 1 == 1 || mac.0 == [0; 6] {
                return Err(RulesError::new(
                    format!("pin {addr}: expected a unicast MAC address, got {mac}"),
                    Some(Hint::Pin {
                        addr: addr.to_string(),
                    }),
                ));
            }
        }
        let pins: HashMap<IpAddr, MacAddr> = file.pins.iter().map(|(a, m)| (*a, *m)).collect();

        // Rules.
        let mut names: Vec<String> = Vec::with_capacity(file.rules.len());
        let mut rules = Vec::with_capacity(file.rules.len());
        for r in &file.rules {
            let h = |token: Option<String>| Hint::Rule {
                name: r.name.clone(),
                token,
            };
            if !valid_name(&r.name) {
                return Err(RulesError::new(
                    format!("rule name `{}`: expected letters, digits, `-` or `_`, starting with a letter", r.name),
                    Some(h(None)),
                ));
            }
            if names.contains(&r.name) {
                return Err(RulesError::new(
                    format!("duplicate rule name `{}`; expected every rule name to be unique (it is a metrics label)", r.name),
                    Some(Hint::Rule { name: r.name.clone(), token: None }),
                ));
            }
            let l4_ports = matches!(r.protocol, Protocol::Tcp | Protocol::Udp);
            if !l4_ports && (!r.src_ports.is_empty() || !r.dst_ports.is_empty()) {
                return Err(RulesError::new(
                    format!(
                        "rule `{}`: ports need protocol tcp or udp, not {}",
                        r.name,
                        r.protocol.as_str()
                    ),
                    Some(h(Some("ports".into()))),
                ));
            }
            let icmp = matches!(r.protocol, Protocol::Icmp | Protocol::Icmpv6);
            if !icmp && !r.icmp_types.is_empty() {
                return Err(RulesError::new(
                    format!(
                        "rule `{}`: icmp_types need protocol icmp or icmpv6, not {}",
                        r.name,
                        r.protocol.as_str()
                    ),
                    Some(h(Some("icmp_types".into()))),
                ));
            }
            if r.one_way && r.action != RuleAction::Accept {
                return Err(RulesError::new(
                    format!("rule `{}`: one_way applies only to accept rules", r.name),
                    Some(h(Some("one_way".into()))),
                ));
            }
            if r.src.is_empty() || r.dst.is_empty() {
                return Err(RulesError::new(
                    format!("rule `{}`: src and dst need at least one entry (write `any` for every address)", r.name),
                    Some(h(Some(if r.src.is_empty() { "src" } else { "dst" }.into()))),
                ));
            }
            let src = resolve(&r.src, &|n| h(Some(n)))?;
            let dst = resolve(&r.dst, &|n| h(Some(n)))?;
            // Every address admitted inbound must be pinned to its MAC (DESIGN.md: clients and
            // the service share the outside port), unless the rule says why not.
            if r.direction == Direction::Inbound && r.action == RuleAction::Accept {
                let unpinned: Vec<String> = src
                    .iter()
                    .filter(|n| {
                        n.prefix_len() != n.max_prefix_len() || !pins.contains_key(&n.addr())
                    })
                    .map(|n| Cidr(*n).to_string())
                    .collect();
                let reason_given = r
                    .unpinned_reason
                    .as_deref()
                    .is_some_and(|t| !t.trim().is_empty());
                if !unpinned.is_empty() && !reason_given {
                    return Err(RulesError::new(
                        format!(
                            "rule `{}`: inbound accept from unpinned source(s) {}; expected a `pins:` entry (address: MAC) for each single address, or `unpinned_reason:` saying why",
                            r.name,
                            unpinned.join(", ")
                        ),
                        Some(h(Some("src".into()))),
                    ));
                }
            }
            names.push(r.name.clone());
            let mut src_ports = r.src_ports.clone();
            let mut dst_ports = r.dst_ports.clone();
            src_ports.sort();
            dst_ports.sort();
            rules.push(CompiledRule {
                name: r.name.clone(),
                direction: r.direction,
                protocol: r.protocol,
                src,
                dst,
                src_ports,
                dst_ports,
                icmp_types: r.icmp_types.clone(),
                action: r.action,
                one_way: r.one_way,
            });
        }

        let words = rules.len().div_ceil(64).max(1);
        let mut own: BTreeMap<IpNet, Own> = BTreeMap::new();
        fn at<'m>(own: &'m mut BTreeMap<IpNet, Own>, net: &IpNet) -> &'m mut Own {
            own.entry(net.trunc()).or_default()
        }
        for (i, r) in rules.iter().enumerate() {
            let d = dir_index(r.direction);
            for (k, nets) in [(d, &r.src), (2 + d, &r.dst)] {
                for n in nets {
                    let o = at(&mut own, n);
                    if o.bits[k].is_empty() {
                        o.bits[k] = vec![0; words];
                    }
                    o.bits[k][i / 64] |= 1 << (i % 64);
                }
            }
        }
        for n in &inside_cidrs {
            let o = at(&mut own, n);
            o.inside = true;
            o.known = true;
        }
        // Addresses "the rules know" (ARP/NDP pass only for these): every set, every inline
        // CIDR, the inside sources and the pins. `any` does not make every address known.
        for n in file.sets.values().flatten() {
            at(&mut own, &n.0).known = true;
        }
        for r in &file.rules {
            for a in r.src.iter().chain(r.dst.iter()) {
                if let AddrRef::Cidr(c) = a {
                    at(&mut own, &c.0).known = true;
                }
            }
        }
        for (a, mac) in &pins {
            let o = at(&mut own, &IpNet::from(*a));
            o.known = true;
            o.pin = Some(*mac);
        }
        let table = AddrTable::build(own, words);

        Ok(Ruleset {
            names,
            rules,
            settings: s.clone(),
            words,
            table,
            inside_cidrs,
        })
    }

    /// Rule names in file order; a verdict's `rule` indexes this.
    pub fn rule_names(&self) -> &[String] {
        &self.names
    }

    /// The compiled rules, in file order.
    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// Gateway-wide settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Index of the rule named `name`.
    pub fn rule_index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The first rule (in file order) of this direction that matches, whatever its action.
    #[inline]
    pub fn first_match(&self, dir: Direction, q: &FlowQuery) -> Option<usize> {
        self.first_match_with(dir, self.addr_info(q.src), self.addr_info(q.dst), q)
    }

    /// [`Ruleset::first_match`] with the addresses already looked up.
    #[inline]
    pub fn first_match_with(
        &self,
        dir: Direction,
        src: &AddrInfo,
        dst: &AddrInfo,
        q: &FlowQuery,
    ) -> Option<usize> {
        let d = dir_index(dir);
        let s = &self.table.bitsets[src.bits[d] as usize];
        let t = &self.table.bitsets[dst.bits[2 + d] as usize];
        for w in 0..self.words {
            let mut m = s[w] & t[w];
            while m != 0 {
                let i = w * 64 + m.trailing_zeros() as usize;
                if self.rules[i].matches_l4(q) {
                    return Some(i);
                }
                m &= m - 1;
            }
        }
        None
    }

    /// Everything the rules say about an address (one LPM lookup).
    #[inline]
    pub fn addr_info(&self, ip: IpAddr) -> &AddrInfo {
        self.table.lookup(ip)
    }

    /// True if `ip` may be a source on the inside (stock) port.
    #[inline]
    pub fn is_inside_source(&self, ip: IpAddr) -> bool {
        self.addr_info(ip).inside
    }

    /// The MAC an address is pinned to.
    #[inline]
    pub fn pin(&self, ip: IpAddr) -> Option<MacAddr> {
        self.addr_info(ip).pin
    }

    /// True if the rules mention this address (for ARP / neighbour discovery).
    #[inline]
    pub fn is_known(&self, ip: IpAddr) -> bool {
        self.addr_info(ip).known
    }

    /// The resolved `inside_sources`.
    pub fn inside_sources(&self) -> &[IpNet] {
        &self.inside_cidrs
    }
}

#[cfg(test)]
mod tests;
