//! The rules compiled to an nftables ruleset: a model of the two tables we own ([`Compiled`]),
//! the JSON batches that install it whole ([`Compiled::full_batch`]) or turn one installed
//! version into the next by difference ([`Compiled::diff_batch`]), and the meaning of every named
//! counter for the exporter.
//!
//! # The shape of the ruleset (every mechanism verified on kernel 6.18, see `nft/mod.rs`)
//!
//! ```text
//! bridge stockade_gateway                         inet stockade_gateway
//!  ports   (prerouting -300): iifname vmap to       forward (forward 0, policy drop):
//!          the port's chain; from_*: ether type       meta mark vmap {0x1: goto from_outside,
//!          vmap to from_*_ip/_ip6/_arp, non-IP drop                   0x2: goto from_inside}
//!  from_*_ip, _ip6: fragments, anti-spoofing by     from_*: packets of admitted flows (ct status
//!          port, MAC pins; IP continues to                confirmed) -> ct mark vmap
//!          br_netfilter with the port's mark              -> est_<id>_<dir> (per-rule counter,
//!          (0x1 outside, 0x2 inside); from_*_arp:         one_way checks); invalid; ND; new
//!          the ARP policy                             connections: the rules of this port's
//!  gate    (forward +100, policy drop): only          direction in file order; `ct count over N`;
//!          frames carrying the accept mark            default drop (no_rule)
//!          (0x101/0x102, set by the inet chain
//!          or by the ARP policy) pass
//!  local   (input, policy drop): nothing from the
//!          ports reaches the gateway itself
//! ```
//!
//! Every drop goes through a named counter whose name says rule, reason and direction
//! ([`CounterMeaning`]); the counters are read back over nf_tables netlink (`netlink.rs`).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{
    BinaryOperation, Expression, Exthdr, Meta, MetaKey, NamedExpression, Payload, PayloadBase,
    PayloadField, PayloadRaw, Prefix, Range, SetItem, Verdict, CT,
};
use nftables::schema::{
    Chain, Counter as CounterObj, FlushObject, NfCmd, NfListObject, Nftables, Rule, Set, SetFlag,
    SetType, SetTypeValue, Table,
};
use nftables::stmt::{
    CTCount, Counter, JumpTarget, Mangle, Match, Operator, Statement, VerdictMap,
};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::netlink::{Family, Key, SetDelta};
use crate::core::{Action, Direction, DropReason};
use crate::rules::{Policy, Protocol, RuleAction, RulesFile, Ruleset};

/// Name of both tables we own (one `inet`, one `bridge`). Nothing else is ever touched.
pub const TABLE: &str = "stockade_gateway";

/// skb mark set by the bridge `ports` chain: the frame arrived on the outside port.
pub const MARK_OUTSIDE: u32 = 0x1;
/// ... on the inside port.
pub const MARK_INSIDE: u32 = 0x2;
/// Bit set once a frame is admitted (by the inet chain for IP, by the ARP policy for ARP). The
/// bridge `gate` chain drops every frame without it, so if `bridge-nf-call-iptables` is ever
/// turned off (the inet chain no longer sees bridged IP) the gate stays shut.
pub const MARK_ACCEPTED: u32 = 0x100;

/// Bits of a conntrack mark that carry the admitting rule's id (see [`RuleIds`]).
pub const CT_ID_MASK: u32 = 0xffff;

/// One side of the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Outside,
    Inside,
}

impl Side {
    const BOTH: [Side; 2] = [Side::Outside, Side::Inside];
    fn mark(self) -> u32 {
        match self {
            Side::Outside => MARK_OUTSIDE,
            Side::Inside => MARK_INSIDE,
        }
    }
    /// Direction of a packet arriving on this side.
    fn direction(self) -> Direction {
        match self {
            Side::Outside => Direction::Inbound,
            Side::Inside => Direction::Outbound,
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Side::Outside => "in",
            Side::Inside => "out",
        }
    }
    fn chain(self) -> &'static str {
        match self {
            Side::Outside => "from_outside",
            Side::Inside => "from_inside",
        }
    }
}

/// What a named counter counts, for the exporter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterMeaning {
    /// The rule label (None: `-`).
    pub rule: Option<String>,
    pub action: Action,
    pub direction: Direction,
    /// Set for drops.
    pub reason: Option<DropReason>,
}

/// Stable ids for rule names, carried in the conntrack mark of every admitted flow. An id stays
/// with its rule name across reloads (so established flows keep their counter and their
/// one_way treatment while the ruleset is replaced); new names get fresh ids.
#[derive(Clone, Debug, Default)]
pub struct RuleIds {
    ids: HashMap<String, u32>,
    next: u32,
}

impl RuleIds {
    pub fn new() -> Self {
        RuleIds {
            ids: HashMap::new(),
            next: 1,
        }
    }

    /// The rule name that carries `id`, if any.
    pub fn name(&self, id: u32) -> Option<&str> {
        self.ids
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.as_str())
    }

    /// Ids for every rule of `rules`, in rule order (assigning new ones as needed).
    pub fn assign(&mut self, rules: &Ruleset) -> Vec<u32> {
        rules
            .rule_names()
            .iter()
            .map(|n| {
                if let Some(id) = self.ids.get(n) {
                    return *id;
                }
                // Ids are recycled only after 65535 distinct names; the mark keeps 16 bits.
                let id = self.next;
                self.next = if self.next >= CT_ID_MASK {
                    1
                } else {
                    self.next + 1
                };
                self.ids.insert(n.clone(), id);
                id
            })
            .collect()
    }
}

/// Port (interface) names of the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortNames {
    pub outside: String,
    pub inside: String,
}

impl Default for PortNames {
    fn default() -> Self {
        PortNames {
            outside: "outside".into(),
            inside: "inside".into(),
        }
    }
}

/// An element of a named set (its text form is the diff key).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Elem {
    Net(IpNet),
    Addr(IpAddr),
    Pin(IpAddr, String),
}

impl Elem {
    fn expr(&self) -> Expression<'static> {
        match self {
            Elem::Net(n) if n.prefix_len() == n.max_prefix_len() => s(n.addr().to_string()),
            Elem::Net(n) => Expression::Named(NamedExpression::Prefix(Prefix {
                addr: Box::new(s(n.addr().to_string())),
                len: u32::from(n.prefix_len()),
            })),
            Elem::Addr(a) => s(a.to_string()),
            Elem::Pin(a, mac) => Expression::Named(NamedExpression::Concat(vec![
                s(a.to_string()),
                s(mac.clone()),
            ])),
        }
    }
}

/// A named set as installed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SetDef {
    ty: Vec<SetType>,
    interval: bool,
    elems: BTreeSet<Elem>,
}

impl SetDef {
    /// The set's elements as keys the netlink path encodes ([`super::netlink`]), or None if some
    /// element is left to nft: MAC pins (concatenations, few) and intervals starting at the
    /// zero address (nft manages a marker element there).
    fn netlink_keys<'a>(&self, elems: impl Iterator<Item = &'a Elem>) -> Option<Vec<Key>> {
        elems
            .map(|e| match (e, self.interval) {
                (Elem::Net(n), true) => Some(Key::Prefix(*n)).filter(|k| !k.starts_at_zero()),
                (Elem::Addr(a), false) => Some(Key::Addr(*a)),
                _ => None,
            })
            .collect()
    }

    /// Whether every element can be loaded over netlink (and the set is worth it).
    fn filled_by_netlink(&self) -> bool {
        !self.elems.is_empty() && self.netlink_keys(self.elems.iter()).is_some()
    }
}

/// Hook, priority and policy of a base chain.
type BaseChain = (NfHook, i32, NfChainPolicy);

/// One of our two tables.
#[derive(Clone, Debug)]
struct TablePlan {
    family: NfFamily,
    /// Base chains (name, hook, priority, policy) and regular chains (hook None).
    chains: Vec<(String, Option<BaseChain>)>,
    sets: BTreeMap<String, SetDef>,
    counters: BTreeSet<String>,
    rules: Vec<(String, Vec<Statement<'static>>)>,
}

impl TablePlan {
    fn new(family: NfFamily) -> Self {
        TablePlan {
            family,
            chains: Vec::new(),
            sets: BTreeMap::new(),
            counters: BTreeSet::new(),
            rules: Vec::new(),
        }
    }
    fn base(&mut self, name: &str, hook: NfHook, prio: i32, policy: NfChainPolicy) {
        self.chains.push((name.into(), Some((hook, prio, policy))));
    }
    fn chain(&mut self, name: &str) {
        self.chains.push((name.into(), None));
    }
    fn rule(&mut self, chain: &str, stmts: Vec<Statement<'static>>) {
        self.rules.push((chain.into(), stmts));
    }
    fn counter(&mut self, name: &str) -> Statement<'static> {
        self.counters.insert(name.to_string());
        Statement::Counter(Counter::Named(name.to_string().into()))
    }
    fn table_obj(&self) -> NfListObject<'static> {
        NfListObject::Table(Table {
            family: self.family,
            name: TABLE.into(),
            handle: None,
        })
    }
    fn chain_obj(&self, name: &str, base: Option<BaseChain>) -> Chain<'static> {
        Chain {
            family: self.family,
            table: TABLE.into(),
            name: name.to_string().into(),
            newname: None,
            handle: None,
            _type: base.map(|_| NfChainType::Filter),
            hook: base.map(|b| b.0),
            prio: base.map(|b| b.1),
            dev: None,
            policy: base.map(|b| b.2),
        }
    }
    fn set_obj(&self, name: &str, def: &SetDef, with_elems: bool) -> Set<'static> {
        let ty = if def.ty.len() == 1 {
            SetTypeValue::Single(def.ty[0])
        } else {
            SetTypeValue::Concatenated(def.ty.clone().into())
        };
        let elems: Vec<Expression<'static>> = def.elems.iter().map(Elem::expr).collect();
        Set {
            family: self.family,
            table: TABLE.into(),
            name: name.to_string().into(),
            handle: None,
            set_type: ty,
            policy: None,
            flags: def.interval.then(|| HashSet::from([SetFlag::Interval])),
            elem: (with_elems && !elems.is_empty()).then(|| elems.into()),
            timeout: None,
            gc_interval: None,
            size: None,
            comment: None,
        }
    }
    fn counter_obj(&self, name: &str) -> NfListObject<'static> {
        NfListObject::Counter(CounterObj {
            family: self.family,
            table: TABLE.into(),
            name: name.to_string().into(),
            handle: None,
            packets: None,
            bytes: None,
        })
    }

    /// Everything after the table itself: counters, sets, chains, rules. With `skeleton`, the
    /// sets that [`TablePlan::fill`] loads over netlink are created empty.
    fn add_contents(&self, b: &mut Batch<'static>, skeleton: bool) {
        for c in &self.counters {
            b.add(self.counter_obj(c));
        }
        for (name, def) in &self.sets {
            let with_elems = !(skeleton && def.filled_by_netlink());
            b.add(NfListObject::Set(Box::new(
                self.set_obj(name, def, with_elems),
            )));
        }
        self.add_chains_and_rules(b);
    }

    fn netlink_family(&self) -> Family {
        match self.family {
            NfFamily::Bridge => Family::Bridge,
            _ => Family::Inet,
        }
    }

    /// The elements a skeleton left out (see [`TablePlan::add_contents`]).
    fn fill(&self) -> Vec<SetDelta> {
        self.sets
            .iter()
            .filter(|(_, def)| def.filled_by_netlink())
            .map(|(name, def)| SetDelta {
                family: self.netlink_family(),
                set: name.clone(),
                delete: Vec::new(),
                add: def.netlink_keys(def.elems.iter()).unwrap_or_default(),
            })
            .collect()
    }

    /// If `self` differs from `old` in set elements only, and all of those go over netlink,
    /// the element changes per set.
    fn element_deltas(&self, old: &TablePlan) -> Option<Vec<SetDelta>> {
        if self.family != old.family
            || self.chains != old.chains
            || self.rules != old.rules
            || self.counters != old.counters
            || self.sets.len() != old.sets.len()
        {
            return None;
        }
        let mut out = Vec::new();
        for ((name, new), (old_name, old_def)) in self.sets.iter().zip(&old.sets) {
            if name != old_name || new.ty != old_def.ty || new.interval != old_def.interval {
                return None;
            }
            let delete = new.netlink_keys(old_def.elems.difference(&new.elems))?;
            let add = new.netlink_keys(new.elems.difference(&old_def.elems))?;
            if !delete.is_empty() || !add.is_empty() {
                out.push(SetDelta {
                    family: self.netlink_family(),
                    set: name.clone(),
                    delete,
                    add,
                });
            }
        }
        Some(out)
    }

    fn add_chains_and_rules(&self, b: &mut Batch<'static>) {
        for (name, base) in &self.chains {
            b.add(NfListObject::Chain(self.chain_obj(name, *base)));
        }
        for (chain, stmts) in &self.rules {
            b.add(NfListObject::Rule(Rule {
                family: self.family,
                table: TABLE.into(),
                chain: chain.clone().into(),
                expr: stmts.clone().into(),
                handle: None,
                index: None,
                comment: None,
            }));
        }
    }

    /// Deletes our table whether or not it exists (add + delete in the same transaction is
    /// nft's idiom for that: `add table` of an existing table is a no-op).
    fn replace_table(&self, b: &mut Batch<'static>, skeleton: bool) {
        b.add(self.table_obj());
        b.delete(self.table_obj());
        b.add(self.table_obj());
        self.add_contents(b, skeleton);
    }

    /// Turns `old` (as installed) into `self` within the same transaction: all rules are
    /// flushed and re-added (rules are few), chains/sets/counters no longer used are deleted,
    /// sets whose contents changed are replaced, counters that exist in both are kept (so their
    /// values continue). (When only set contents change, [`Compiled::element_diff`] is faster.)
    fn diff_into(&self, old: &TablePlan, b: &mut Batch<'static>) {
        b.add_cmd(NfCmd::Flush(FlushObject::Table(Table {
            family: self.family,
            name: TABLE.into(),
            handle: None,
        })));
        let new_chains: HashSet<&str> = self.chains.iter().map(|(n, _)| n.as_str()).collect();
        for (name, base) in &old.chains {
            if !new_chains.contains(name.as_str()) {
                b.delete(NfListObject::Chain(old.chain_obj(name, *base)));
            }
        }
        // A set whose contents changed is replaced whole: nft 1.0.6 reads an interval set back
        // before it adds or deletes elements, which for 100k prefixes took minutes here, while
        // loading a new one takes under a second. (The rules that use it were flushed above.)
        for (name, def) in &old.sets {
            if self.sets.get(name) != Some(def) {
                b.delete(NfListObject::Set(Box::new(old.set_obj(name, def, false))));
            }
        }
        for c in old.counters.difference(&self.counters) {
            b.delete(old.counter_obj(c));
        }
        for c in self.counters.difference(&old.counters) {
            b.add(self.counter_obj(c));
        }
        for (name, def) in &self.sets {
            if old.sets.get(name) != Some(def) {
                b.add(NfListObject::Set(Box::new(self.set_obj(name, def, true))));
            }
        }
        self.add_chains_and_rules(b);
    }
}

/// The compiled ruleset: both tables, the rule ids and what each counter means.
#[derive(Clone, Debug)]
pub struct Compiled {
    inet: TablePlan,
    bridge: TablePlan,
    /// Counter name -> meaning (names are unique across both tables).
    pub counters: BTreeMap<String, CounterMeaning>,
    /// Rule id (ct mark) per rule, in rule order.
    pub rule_ids: Vec<u32>,
    /// Number of nft rules, for the log.
    pub nft_rules: usize,
}

/// Claim 1 in the TCP header, as `one_way::admits` has it: no URG, a zero urgent pointer, at
/// most 24 option bytes on a SYN, and after it only the exact option layouts (none,
/// `NOP NOP TS`, SACK blocks after `NOP NOP TS` or not), told apart by the data offset and the
/// bytes at fixed offsets, since nft cannot walk an option list. Where the SACK blocks may lie
/// is conntrack's to check (the highest right edge against what the stock server sent).
fn one_way_tcp_header(inet: &mut TablePlan, chain: &str, ow: &Statement<'static>) {
    use crate::one_way::SYN_OPTIONS_MAX;
    use crate::packet::options::{sack_prefix, TS_PREFIX};
    let tcp = || eq(meta(MetaKey::L4proto), s("tcp"));
    let syn = |set: bool| {
        let f = and(payload("tcp", "flags"), 0x02);
        if set {
            ne(f, n(0))
        } else {
            eq(f, n(0))
        }
    };
    let drop_when = |inet: &mut TablePlan, mut cond: Vec<Statement<'static>>| {
        cond.extend([ow.clone(), drop_()]);
        inet.rule(chain, cond);
    };
    drop_when(
        inet,
        vec![tcp(), ne(and(payload("tcp", "flags"), 0x20), n(0))],
    );
    drop_when(inet, vec![tcp(), ne(payload("tcp", "urgptr"), n(0))]);
    drop_when(
        inet,
        vec![
            tcp(),
            syn(true),
            // Spelled as a set: nftables 0.6.2 has `Operator::GT` and `LT` swapped in its
            // JSON (`GT` serialises as "<"; seen as `tcp doff < 10` in `nft list ruleset`).
            eq(
                payload("tcp", "doff"),
                anon((6 + u32::from(SYN_OPTIONS_MAX) / 4..=15).map(n).collect()),
            ),
        ],
    );
    // After the SYN, by data offset: the first option word, and with a timestamp ahead of
    // SACK blocks, the word after the timestamp (bit 256 = byte 32).
    let first = || th_bits(160, 32);
    for doff in 6..=15u32 {
        let mut rules: Vec<Statement<'static>> = Vec::new();
        let at = |doff: u32| vec![tcp(), syn(false), eq(payload("tcp", "doff"), n(doff))];
        match doff {
            8 => rules.push(ne(first(), anon(vec![n(TS_PREFIX), n(sack_prefix(1))]))),
            10 | 12 | 14 => rules.push(ne(first(), n(sack_prefix((doff - 8) / 2 + 1)))),
            11 | 13 | 15 => {
                drop_when(inet, [at(doff), vec![ne(first(), n(TS_PREFIX))]].concat());
                rules.push(ne(th_bits(256, 32), n(sack_prefix((doff - 9) / 2))));
            }
            _ => {} // 6, 7, 9: no layout of that length
        }
        let mut cond = at(doff);
        cond.extend(rules);
        drop_when(inet, cond);
    }
}

/// Small constructors that keep the rule code readable.
fn s(v: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(v.into()))
}
fn n(v: u32) -> Expression<'static> {
    Expression::Number(v)
}
fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}
fn ct(key: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.to_string().into(),
        family: None,
        dir: None,
    }))
}
fn payload(proto: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: proto.to_string().into(),
            field: field.to_string().into(),
        },
    )))
}
/// `@th,offset,len`: raw bits of the transport header.
fn th_bits(offset: u32, len: u32) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadRaw(PayloadRaw {
        base: PayloadBase::TH,
        offset,
        len,
    })))
}
fn and(l: Expression<'static>, r: u32) -> Expression<'static> {
    Expression::BinaryOperation(Box::new(BinaryOperation::AND(l, n(r))))
}
fn set_ref(name: &str) -> Expression<'static> {
    s(format!("@{name}"))
}
fn anon(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}
fn concat(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(items))
}
fn m(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}
fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    m(left, Operator::EQ, right)
}
fn ne(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    m(left, Operator::NEQ, right)
}
fn set_mark(v: u32) -> Statement<'static> {
    Statement::Mangle(Mangle {
        key: meta(MetaKey::Mark),
        value: n(v),
    })
}
fn accept() -> Statement<'static> {
    Statement::Accept(None)
}
fn drop_() -> Statement<'static> {
    Statement::Drop(None)
}
fn goto(chain: &str) -> Statement<'static> {
    Statement::Goto(JumpTarget {
        target: chain.to_string().into(),
    })
}
fn jump(chain: &str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: chain.to_string().into(),
    })
}
/// The frame's protocol (`ip`, `ip6`, `arp`), from `skb->protocol`: in the bridge family this
/// also satisfies nft's dependency for `ip ...`/`arp ...` matches, which would otherwise add an
/// `ether type` load (a copy out of the frame) to every such rule.
fn ether_type(t: &str) -> Statement<'static> {
    eq(meta(MetaKey::Protocol), s(t))
}
fn ct_state(states: &[&str]) -> Statement<'static> {
    m(
        ct("state"),
        Operator::IN,
        if states.len() == 1 {
            s(states[0])
        } else {
            Expression::List(states.iter().map(|x| s(*x)).collect())
        },
    )
}

/// Name of the nft set holding `nets` (one family), creating it in `t` if new. Identical
/// contents share one set (a 100k-prefix set used by three rules is loaded once).
fn net_set(
    t: &mut TablePlan,
    by_content: &mut HashMap<(bool, BTreeSet<Elem>), String>,
    wanted_name: String,
    v6: bool,
    nets: &[IpNet],
) -> String {
    let elems: BTreeSet<Elem> = IpNet::aggregate(&nets.to_vec())
        .into_iter()
        .map(Elem::Net)
        .collect();
    if let Some(existing) = by_content.get(&(v6, elems.clone())) {
        return existing.clone();
    }
    let mut name = wanted_name;
    let mut k = 2;
    while t.sets.contains_key(&name) {
        name = format!("{name}_{k}");
        k += 1;
    }
    t.sets.insert(
        name.clone(),
        SetDef {
            ty: vec![if v6 {
                SetType::Ipv6Addr
            } else {
                SetType::Ipv4Addr
            }],
            interval: true,
            elems: elems.clone(),
        },
    );
    by_content.insert((v6, elems), name.clone());
    name
}

fn split(nets: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
    nets.iter().partition(|n| matches!(n, IpNet::V4(_)))
}

fn is_any(nets: &[IpNet]) -> bool {
    nets.iter().any(|n| n.prefix_len() == 0)
}

fn reason_counter(reason: DropReason, side: Side) -> String {
    format!("reason_{}_{}", reason.as_str(), side.suffix())
}

fn meaning(
    counters: &mut BTreeMap<String, CounterMeaning>,
    name: &str,
    rule: Option<&str>,
    action: Action,
    side: Side,
    reason: Option<DropReason>,
) -> String {
    counters.insert(
        name.to_string(),
        CounterMeaning {
            rule: rule.map(str::to_string),
            action,
            direction: side.direction(),
            reason,
        },
    );
    name.to_string()
}

/// The counter statement of a drop `reason` on `side`, declared in `t`.
fn reason_stmt(
    t: &mut TablePlan,
    counters: &mut BTreeMap<String, CounterMeaning>,
    side: Side,
    reason: DropReason,
) -> Statement<'static> {
    let name = meaning(
        counters,
        &reason_counter(reason, side),
        None,
        Action::Drop,
        side,
        Some(reason),
    );
    t.counter(&name)
}

/// Compiles a checked rules file. `ids` gives each rule its ct mark id (see [`RuleIds`]).
pub fn compile(file: &RulesFile, rules: &Ruleset, ids: &[u32], ports: &PortNames) -> Compiled {
    assert_eq!(ids.len(), rules.rules().len(), "one id per rule");
    let mut counters: BTreeMap<String, CounterMeaning> = BTreeMap::new();
    let cm = &mut counters;

    // ---- Address sets shared by both tables' policy ----
    let inside = rules.inside_sources();
    let (inside4, inside6) = split(inside);
    let mut known: Vec<IpNet> = inside.to_vec();
    known.extend(file.sets.values().flatten().map(|c| c.0));
    for r in &file.rules {
        for a in r.src.iter().chain(r.dst.iter()) {
            if let crate::rules::AddrRef::Cidr(c) = a {
                known.push(c.0);
            }
        }
    }
    known.extend(file.pins.keys().map(|a| IpNet::from(*a)));
    let (known4, known6) = split(&known);
    let pins4: Vec<(IpAddr, String)> = file
        .pins
        .iter()
        .filter(|(a, _)| a.is_ipv4())
        .map(|(a, mac)| (*a, mac.to_string()))
        .collect();
    let pins6: Vec<(IpAddr, String)> = file
        .pins
        .iter()
        .filter(|(a, _)| a.is_ipv6())
        .map(|(a, mac)| (*a, mac.to_string()))
        .collect();

    let addr_set = |v6: bool, nets: &[IpNet]| SetDef {
        ty: vec![if v6 {
            SetType::Ipv6Addr
        } else {
            SetType::Ipv4Addr
        }],
        interval: true,
        elems: IpNet::aggregate(&nets.to_vec())
            .into_iter()
            .map(Elem::Net)
            .collect(),
    };

    // ---- bridge table ----
    let mut br = TablePlan::new(NfFamily::Bridge);
    br.sets.insert("inside4".into(), addr_set(false, &inside4));
    br.sets.insert("inside6".into(), addr_set(true, &inside6));
    br.sets.insert("known4".into(), addr_set(false, &known4));
    for (name, pins, v6) in [("4", &pins4, false), ("6", &pins6, true)] {
        let addr_ty = if v6 {
            SetType::Ipv6Addr
        } else {
            SetType::Ipv4Addr
        };
        br.sets.insert(
            format!("pinned{name}"),
            SetDef {
                ty: vec![addr_ty],
                interval: false,
                elems: pins.iter().map(|(a, _)| Elem::Addr(*a)).collect(),
            },
        );
        br.sets.insert(
            format!("pins{name}"),
            SetDef {
                ty: vec![addr_ty, SetType::EtherAddr],
                interval: false,
                elems: pins.iter().map(|(a, m)| Elem::Pin(*a, m.clone())).collect(),
            },
        );
        // The same pins split by the side their address belongs to (suffix: the direction its
        // frames travel, `in` from outside, `out` from inside), for the fast rule in `ports`: a
        // match there also says the source is on the right side.
        for side in Side::BOTH {
            br.sets.insert(
                format!("pins{name}_{}", side.suffix()),
                SetDef {
                    ty: vec![addr_ty, SetType::EtherAddr],
                    interval: false,
                    elems: pins
                        .iter()
                        .filter(|(a, _)| {
                            inside.iter().any(|n| n.contains(a)) == (side == Side::Inside)
                        })
                        .map(|(a, m)| Elem::Pin(*a, m.clone()))
                        .collect(),
                },
            );
        }
    }
    br.base("ports", NfHook::Prerouting, -300, NfChainPolicy::Accept);
    br.base("gate", NfHook::Forward, 100, NfChainPolicy::Drop);
    // Bridge input: frames the bridge would deliver to the gateway itself (broadcasts, its own
    // MAC). The gateway never speaks on the data path, so nothing is delivered.
    br.base("local", NfHook::Input, -200, NfChainPolicy::Drop);
    // `ports` sends a frame to the chain of its port and protocol with plain compares, IPv4
    // first: a frame meets only its own protocol's rules, and a compare costs less than a set
    // lookup (the per-frame cost of this plane is mostly rule evaluation, see BENCHMARKS.md).
    let port_name = |side: Side| match side {
        Side::Outside => ports.outside.clone(),
        Side::Inside => ports.inside.clone(),
    };
    for proto in ["ip", "ip6", "arp"] {
        for side in Side::BOTH {
            let chain = format!("{}_{proto}", side.chain());
            br.chain(&chain);
            let v = match proto {
                "ip" => "4",
                "ip6" => "6",
                _ => "",
            };
            let side_pins = format!("pins{v}_{}", side.suffix());
            if !v.is_empty() && br.sets.get(&side_pins).is_some_and(|p| !p.elems.is_empty()) {
                // The data path's own senders (service, stock servers) are pinned: a source
                // pinned on this port's side, with its own MAC and not a fragment, passes on
                // this one rule, which has every check of the protocol chain below. Anything
                // else goes through that chain, which says why it drops.
                let mut st = vec![
                    eq(meta(MetaKey::Iifname), s(port_name(side))),
                    ether_type(proto),
                    eq(
                        concat(vec![payload(proto, "saddr"), payload("ether", "saddr")]),
                        set_ref(&side_pins),
                    ),
                ];
                if rules.settings().fragments == Policy::Drop {
                    st.push(if proto == "ip" {
                        eq(and(payload("ip", "frag-off"), 0x3fff), n(0))
                    } else {
                        eq(
                            Expression::Named(NamedExpression::Exthdr(Exthdr {
                                name: "frag".into(),
                                field: None,
                                offset: None,
                            })),
                            Expression::Boolean(false),
                        )
                    });
                }
                st.extend([set_mark(side.mark()), accept()]);
                br.rule("ports", st);
            }
            br.rule(
                "ports",
                vec![
                    eq(meta(MetaKey::Iifname), s(port_name(side))),
                    ether_type(proto),
                    goto(&chain),
                ],
            );
        }
    }
    // Everything else from our ports (other ethertypes, VLAN-tagged frames).
    for side in Side::BOTH {
        let ni = reason_stmt(&mut br, cm, side, DropReason::NonIp);
        br.rule(
            "ports",
            vec![eq(meta(MetaKey::Iifname), s(port_name(side))), ni, drop_()],
        );
    }
    // A frame from a port that is not one of ours (someone added a port to our bridge).
    let st = reason_stmt(&mut br, cm, Side::Outside, DropReason::KernelOther);
    br.rule("ports", vec![st, drop_()]);
    let settings = rules.settings();
    for side in Side::BOTH {
        let ch = side.chain();
        let (ch_ip, ch_ip6, ch_arp) = (
            &format!("{ch}_ip"),
            &format!("{ch}_ip6"),
            &format!("{ch}_arp"),
        );
        let d = side.suffix();
        // Fragments are judged here, before br_netfilter's defragmentation (which runs at
        // bridge prerouting priority 0, i.e. after this chain) would reassemble them.
        if settings.fragments == Policy::Drop {
            let c = reason_stmt(&mut br, cm, side, DropReason::Fragment);
            br.rule(
                ch_ip,
                vec![
                    ether_type("ip"),
                    ne(and(payload("ip", "frag-off"), 0x3fff), n(0)),
                    c.clone(),
                    drop_(),
                ],
            );
            br.rule(
                ch_ip6,
                vec![
                    ether_type("ip6"),
                    eq(
                        Expression::Named(NamedExpression::Exthdr(Exthdr {
                            name: "frag".into(),
                            field: None,
                            offset: None,
                        })),
                        Expression::Boolean(true),
                    ),
                    c,
                    drop_(),
                ],
            );
        }
        // Anti-spoofing by port: stock addresses only from inside, nothing else from inside.
        let sp = reason_stmt(&mut br, cm, side, DropReason::Spoofed);
        match side {
            Side::Outside => {
                br.rule(
                    ch_ip,
                    vec![
                        ether_type("ip"),
                        eq(payload("ip", "saddr"), set_ref("inside4")),
                        sp.clone(),
                        drop_(),
                    ],
                );
                br.rule(
                    ch_ip6,
                    vec![
                        ether_type("ip6"),
                        eq(payload("ip6", "saddr"), set_ref("inside6")),
                        sp.clone(),
                        drop_(),
                    ],
                );
            }
            Side::Inside => {
                br.rule(
                    ch_ip,
                    vec![
                        ether_type("ip"),
                        ne(payload("ip", "saddr"), set_ref("inside4")),
                        sp.clone(),
                        drop_(),
                    ],
                );
                // `::` is only a DAD neighbour solicitation (as in the userspace plane).
                br.rule(
                    ch_ip6,
                    vec![
                        ether_type("ip6"),
                        ne(payload("ip6", "saddr"), set_ref("inside6")),
                        ne(payload("ip6", "saddr"), s("::")),
                        sp.clone(),
                        drop_(),
                    ],
                );
                br.rule(
                    ch_ip6,
                    vec![
                        ether_type("ip6"),
                        eq(payload("ip6", "saddr"), s("::")),
                        ne(meta(MetaKey::L4proto), s("ipv6-icmp")),
                        sp.clone(),
                        drop_(),
                    ],
                );
                br.rule(
                    ch_ip6,
                    vec![
                        ether_type("ip6"),
                        eq(payload("ip6", "saddr"), s("::")),
                        ne(payload("icmpv6", "type"), s("nd-neighbor-solicit")),
                        sp.clone(),
                        drop_(),
                    ],
                );
            }
        }
        // MAC pins (IP source). A pinned address with its own MAC passes on one lookup (the
        // pair); a pinned address with another MAC is spoofed; unpinned addresses pass.
        for (fam, v, pins) in [("ip", "4", &pins4), ("ip6", "6", &pins6)] {
            let chain = if fam == "ip" { ch_ip } else { ch_ip6 };
            if !pins.is_empty() {
                br.rule(
                    chain,
                    vec![
                        ether_type(fam),
                        eq(
                            concat(vec![payload(fam, "saddr"), payload("ether", "saddr")]),
                            set_ref(&format!("pins{v}")),
                        ),
                        set_mark(side.mark()),
                        accept(),
                    ],
                );
                br.rule(
                    chain,
                    vec![
                        ether_type(fam),
                        eq(payload(fam, "saddr"), set_ref(&format!("pinned{v}"))),
                        sp.clone(),
                        drop_(),
                    ],
                );
            }
            // IP goes on to br_netfilter and the inet chain, marked with its port.
            br.rule(chain, vec![set_mark(side.mark()), accept()]);
        }
        // ARP: only about addresses the rules know, senders checked like IP sources.
        let au = reason_stmt(&mut br, cm, side, DropReason::ArpUnknown);
        br.rule(
            ch_arp,
            vec![
                ether_type("arp"),
                ne(payload("arp", "daddr ip"), set_ref("known4")),
                au.clone(),
                drop_(),
            ],
        );
        br.rule(
            ch_arp,
            vec![
                ether_type("arp"),
                ne(payload("arp", "saddr ip"), s("0.0.0.0")),
                ne(payload("arp", "saddr ip"), set_ref("known4")),
                au,
                drop_(),
            ],
        );
        let mut spoof_arp = vec![
            ether_type("arp"),
            ne(payload("arp", "saddr ip"), s("0.0.0.0")),
        ];
        match side {
            Side::Outside => spoof_arp.push(eq(payload("arp", "saddr ip"), set_ref("inside4"))),
            Side::Inside => spoof_arp.push(ne(payload("arp", "saddr ip"), set_ref("inside4"))),
        }
        spoof_arp.extend([sp.clone(), drop_()]);
        br.rule(ch_arp, spoof_arp);
        if !pins4.is_empty() {
            for mac_field in [payload("ether", "saddr"), payload("arp", "saddr ether")] {
                br.rule(
                    ch_arp,
                    vec![
                        ether_type("arp"),
                        eq(payload("arp", "saddr ip"), set_ref("pinned4")),
                        ne(
                            concat(vec![payload("arp", "saddr ip"), mac_field]),
                            set_ref("pins4"),
                        ),
                        sp.clone(),
                        drop_(),
                    ],
                );
            }
        }
        let pass = meaning(cm, &format!("pass_{d}"), None, Action::Forward, side, None);
        let pass = br.counter(&pass);
        br.rule(
            ch_arp,
            vec![
                ether_type("arp"),
                pass,
                set_mark(side.mark() | MARK_ACCEPTED),
                accept(),
            ],
        );

        // The gate, after br_netfilter ran the inet forward chain (bridge forward priority 0).
        br.rule(
            "gate",
            vec![
                eq(meta(MetaKey::Mark), n(side.mark() | MARK_ACCEPTED)),
                accept(),
            ],
        );
    }
    for side in Side::BOTH {
        // IP that reached the gate without the accept mark: the inet chain did not run (e.g.
        // bridge-nf-call-iptables was turned off). The kernel cannot say more.
        let st = reason_stmt(&mut br, cm, side, DropReason::KernelOther);
        br.rule(
            "gate",
            vec![eq(meta(MetaKey::Mark), n(side.mark())), st, drop_()],
        );
    }

    // ---- inet table ----
    let mut inet = TablePlan::new(NfFamily::INet);
    inet.sets.insert("known6".into(), addr_set(true, &known6));
    inet.base("forward", NfHook::Forward, 0, NfChainPolicy::Drop);
    for side in Side::BOTH {
        inet.chain(side.chain());
    }
    let accept_ids: Vec<(usize, u32)> = rules
        .rules()
        .iter()
        .enumerate()
        .filter(|(_, r)| r.action == RuleAction::Accept)
        .map(|(i, _)| (i, ids[i]))
        .collect();
    // Every packet of a flow a rule already admitted goes, in one lookup keyed by its port and
    // the admitting rule's id (the conntrack mark), to that rule's chain for its direction:
    // established, related (ICMP errors quoting the flow), and also `ct state new` packets of a
    // confirmed entry (a UDP flow not yet answered, a retransmitted SYN), which would otherwise
    // walk every rule and the `ct count` limit again, per packet, for a flow already judged
    // (the userspace core, too, treats them as packets of the existing flow). An entry not
    // yet confirmed has mark 0 (no rule has id 0); invalid and untracked packets have no entry,
    // so `ct mark` does not match at all; all of these take the per-port chains below.
    if !accept_ids.is_empty() {
        let mut entries = Vec::new();
        for &(_, id) in &accept_ids {
            for side in Side::BOTH {
                entries.push(SetItem::Mapping(
                    concat(vec![n(side.mark()), n(id)]),
                    Expression::Verdict(Verdict::Goto(JumpTarget {
                        target: format!("est_{id}_{}", side.suffix()).into(),
                    })),
                ));
            }
        }
        inet.rule(
            "forward",
            vec![Statement::VerdictMap(VerdictMap {
                key: concat(vec![meta(MetaKey::Mark), ct("mark")]),
                data: Expression::Named(NamedExpression::Set(entries)),
            })],
        );
    }
    for side in Side::BOTH {
        inet.rule(
            "forward",
            vec![eq(meta(MetaKey::Mark), n(side.mark())), goto(side.chain())],
        );
    }
    {
        let c = reason_counter(DropReason::KernelOther, Side::Outside);
        let st = inet.counter(&c);
        inet.rule("forward", vec![st, drop_()]);
    }
    // The conntrack limit: one `ct count` shared by every accept rule (a chain of its own, so
    // there is a single connection list), applied to connections a rule is about to admit.
    inet.chain("climit");
    inet.chain("cfull");
    inet.rule(
        "climit",
        vec![
            Statement::CTCount(CTCount {
                val: n(u32::try_from(settings.conntrack_limit).unwrap_or(u32::MAX)),
                inv: Some(true),
            }),
            goto("cfull"),
        ],
    );
    for side in Side::BOTH {
        let st = reason_stmt(&mut inet, cm, side, DropReason::ConntrackFull);
        inet.rule(
            "cfull",
            vec![eq(meta(MetaKey::Mark), n(side.mark())), st, drop_()],
        );
    }

    let mut by_content: HashMap<(bool, BTreeSet<Elem>), String> = HashMap::new();
    let file_rules = &file.rules;
    // Per-rule chains for established traffic, per side.
    for &(i, id) in &accept_ids {
        let r = &rules.rules()[i];
        for side in Side::BOTH {
            let chain = format!("est_{id}_{}", side.suffix());
            inet.chain(&chain);
            let fwd = meaning(
                cm,
                &format!("fwd_{id}_{}", side.suffix()),
                Some(&r.name),
                Action::Forward,
                side,
                None,
            );
            let fwd_st = inet.counter(&fwd);
            if r.one_way && side == Side::Outside {
                // Claim 1: on a one_way connection the outside side sends no payload. nft has
                // no arithmetic between header fields, so "no payload" is spelled out: IPv4
                // without options (IHL 5) and, per TCP data offset N, a total length of exactly
                // 20 + 4N; IPv6 without extension headers and a payload length of 4N; UDP with
                // length 8; other protocols carry payload by definition here. Related ICMP
                // errors (`ct state related`) are not subject to this and pass.
                let ow = meaning(
                    cm,
                    &format!("oneway_{id}_in"),
                    Some(&r.name),
                    Action::Drop,
                    side,
                    Some(DropReason::OneWay),
                );
                let ow = inet.counter(&ow);
                inet.rule(
                    &chain,
                    vec![
                        ct_state(&["related"]),
                        fwd_st.clone(),
                        set_mark(side.mark() | MARK_ACCEPTED),
                        accept(),
                    ],
                );
                inet.rule(
                    &chain,
                    vec![
                        eq(meta(MetaKey::Nfproto), s("ipv4")),
                        ne(payload("ip", "hdrlength"), n(5)),
                        ow.clone(),
                        drop_(),
                    ],
                );
                // IPv6 extension headers: the transport is not the first next header.
                for l4 in ["tcp", "udp"] {
                    inet.rule(
                        &chain,
                        vec![
                            eq(meta(MetaKey::Nfproto), s("ipv6")),
                            eq(meta(MetaKey::L4proto), s(l4)),
                            ne(payload("ip6", "nexthdr"), s(l4)),
                            ow.clone(),
                            drop_(),
                        ],
                    );
                }
                one_way_tcp_header(&mut inet, &chain, &ow);
                for doff in 5..=15u32 {
                    inet.rule(
                        &chain,
                        vec![
                            eq(meta(MetaKey::Nfproto), s("ipv4")),
                            eq(payload("tcp", "doff"), n(doff)),
                            ne(payload("ip", "length"), n(20 + 4 * doff)),
                            ow.clone(),
                            drop_(),
                        ],
                    );
                    inet.rule(
                        &chain,
                        vec![
                            eq(meta(MetaKey::Nfproto), s("ipv6")),
                            eq(payload("tcp", "doff"), n(doff)),
                            ne(payload("ip6", "length"), n(4 * doff)),
                            ow.clone(),
                            drop_(),
                        ],
                    );
                }
                inet.rule(
                    &chain,
                    vec![
                        eq(meta(MetaKey::L4proto), s("udp")),
                        ne(payload("udp", "length"), n(8)),
                        ow.clone(),
                        drop_(),
                    ],
                );
                inet.rule(
                    &chain,
                    vec![
                        ne(meta(MetaKey::L4proto), anon(vec![s("tcp"), s("udp")])),
                        ow,
                        drop_(),
                    ],
                );
            }
            inet.rule(
                &chain,
                vec![fwd_st, set_mark(side.mark() | MARK_ACCEPTED), accept()],
            );
        }
        // Admission of a new connection: the shared conntrack limit, then count and accept.
        let admit = format!("admit_{id}");
        inet.chain(&admit);
        let side = match r.direction {
            Direction::Inbound => Side::Outside,
            Direction::Outbound => Side::Inside,
        };
        let fwd = inet.counter(&format!("fwd_{id}_{}", side.suffix()));
        inet.rule(&admit, vec![jump("climit")]);
        inet.rule(
            &admit,
            vec![fwd, set_mark(side.mark() | MARK_ACCEPTED), accept()],
        );
    }

    for side in Side::BOTH {
        let ch = side.chain();
        let d = side.suffix();
        // A tracked flow whose rule is gone (revocation follows the reload within
        // milliseconds, see `nft::NftPlane::rules_changed`).
        let inv = reason_stmt(&mut inet, cm, side, DropReason::InvalidState);
        inet.rule(
            ch,
            vec![ct_state(&["established", "related"]), inv.clone(), drop_()],
        );
        // Conntrack's own verdict: bad L4 checksum, outside the TCP window, unparsable... the
        // kernel does not say which, so these are `kernel_other`.
        let ko = reason_stmt(&mut inet, cm, side, DropReason::KernelOther);
        inet.rule(ch, vec![ct_state(&["invalid"]), ko, drop_()]);
        // IPv6 neighbour discovery (untracked by conntrack): only from known addresses or `::`.
        // (The userspace plane also checks the target address; nft 1.0.6 cannot match the ND
        // target field, see README.md, "The nftables plane".)
        let au = reason_stmt(&mut inet, cm, side, DropReason::ArpUnknown);
        inet.rule(
            ch,
            vec![
                eq(meta(MetaKey::L4proto), s("ipv6-icmp")),
                eq(
                    payload("icmpv6", "type"),
                    anon(vec![s("nd-neighbor-solicit"), s("nd-neighbor-advert")]),
                ),
                ne(payload("ip6", "saddr"), s("::")),
                ne(payload("ip6", "saddr"), set_ref("known6")),
                au.clone(),
                drop_(),
            ],
        );
        let pass = inet.counter(&format!("pass_{d}"));
        inet.rule(
            ch,
            vec![
                eq(meta(MetaKey::L4proto), s("ipv6-icmp")),
                eq(
                    payload("icmpv6", "type"),
                    anon(vec![s("nd-neighbor-solicit"), s("nd-neighbor-advert")]),
                ),
                pass,
                set_mark(side.mark() | MARK_ACCEPTED),
                accept(),
            ],
        );
        // Router solicitations/advertisements and redirects: the topology has no router.
        inet.rule(
            ch,
            vec![
                eq(meta(MetaKey::L4proto), s("ipv6-icmp")),
                eq(
                    payload("icmpv6", "type"),
                    anon(vec![
                        s("nd-router-solicit"),
                        s("nd-router-advert"),
                        s("nd-redirect"),
                    ]),
                ),
                au,
                drop_(),
            ],
        );
        let no_rule = reason_stmt(&mut inet, cm, side, DropReason::NoRule);
        // Other untracked traffic (MLD...) opens nothing.
        inet.rule(ch, vec![ct_state(&["untracked"]), no_rule.clone(), drop_()]);
        // From here on: ct state new. Only a SYN opens a TCP connection; an echo reply opens
        // nothing.
        inet.rule(
            ch,
            vec![
                ne(
                    and(payload("tcp", "flags"), 0x17), // fin|syn|rst|ack
                    n(0x02),
                ),
                inv.clone(),
                drop_(),
            ],
        );
        inet.rule(
            ch,
            vec![
                eq(payload("icmp", "type"), s("echo-reply")),
                inv.clone(),
                drop_(),
            ],
        );
        inet.rule(
            ch,
            vec![eq(payload("icmpv6", "type"), s("echo-reply")), inv, drop_()],
        );
        // The rules of this port's direction, in file order: first match decides.
        for (i, r) in rules.rules().iter().enumerate() {
            if r.direction != side.direction() {
                continue;
            }
            let id = ids[i];
            let fr = &file_rules[i];
            let (src4, src6) = split(&r.src);
            let (dst4, dst6) = split(&r.dst);
            for v6 in [false, true] {
                let (src, dst) = if v6 { (&src6, &dst6) } else { (&src4, &dst4) };
                if src.is_empty() || dst.is_empty() {
                    continue;
                }
                match (r.protocol, v6) {
                    (Protocol::Icmp, true) | (Protocol::Icmpv6, false) => continue,
                    _ => {}
                }
                let fam = if v6 { "ip6" } else { "ip" };
                let mut st = vec![eq(
                    meta(MetaKey::Nfproto),
                    s(if v6 { "ipv6" } else { "ipv4" }),
                )];
                for (field, nets, refs) in [("saddr", src, &fr.src), ("daddr", dst, &fr.dst)] {
                    if is_any(nets) {
                        continue;
                    }
                    let wanted = match refs.as_slice() {
                        [crate::rules::AddrRef::Set(name)] => {
                            format!("set_{name}_{}", if v6 { "v6" } else { "v4" })
                        }
                        _ => format!(
                            "rule_{}_{}_{}",
                            r.name,
                            if field == "saddr" { "src" } else { "dst" },
                            if v6 { "v6" } else { "v4" }
                        ),
                    };
                    let name = net_set(&mut inet, &mut by_content, wanted, v6, nets);
                    st.push(eq(payload(fam, field), set_ref(&name)));
                }
                if let Some(p) = r.protocol.number() {
                    st.push(eq(meta(MetaKey::L4proto), n(u32::from(p))));
                }
                let l4 = match r.protocol {
                    Protocol::Tcp => Some("tcp"),
                    Protocol::Udp => Some("udp"),
                    _ => None,
                };
                if let Some(l4) = l4 {
                    for (field, ranges) in [("sport", &r.src_ports), ("dport", &r.dst_ports)] {
                        if ranges.is_empty() {
                            continue;
                        }
                        let items: Vec<Expression<'static>> = ranges
                            .iter()
                            .map(|p| {
                                if p.lo == p.hi {
                                    n(u32::from(p.lo))
                                } else {
                                    Expression::Range(Box::new(Range {
                                        range: [n(u32::from(p.lo)), n(u32::from(p.hi))],
                                    }))
                                }
                            })
                            .collect();
                        let right = if items.len() == 1 && ranges[0].lo == ranges[0].hi {
                            items.into_iter().next().expect("one item")
                        } else {
                            anon(items)
                        };
                        st.push(eq(payload(l4, field), right));
                    }
                }
                if !r.icmp_types.is_empty() {
                    let proto = if v6 { "icmpv6" } else { "icmp" };
                    let items: Vec<Expression<'static>> =
                        r.icmp_types.iter().map(|t| n(u32::from(*t))).collect();
                    st.push(eq(payload(proto, "type"), anon(items)));
                }
                match r.action {
                    RuleAction::Accept => {
                        st.push(Statement::Mangle(Mangle {
                            key: ct("mark"),
                            value: n(id),
                        }));
                        st.push(goto(&format!("admit_{id}")));
                    }
                    RuleAction::Drop => {
                        let c = meaning(
                            cm,
                            &format!("drop_{id}_{d}"),
                            Some(&r.name),
                            Action::Drop,
                            side,
                            Some(DropReason::NoRule),
                        );
                        st.push(inet.counter(&c));
                        st.push(drop_());
                    }
                }
                inet.rule(ch, st);
            }
        }
        inet.rule(ch, vec![no_rule, drop_()]);
    }

    let nft_rules = inet.rules.len() + br.rules.len();
    Compiled {
        inet,
        bridge: br,
        counters,
        rule_ids: ids.to_vec(),
        nft_rules,
    }
}

impl Compiled {
    /// One transaction that installs both tables from scratch, replacing any earlier version
    /// (e.g. left by a crashed gateway, which kept enforcing until this moment).
    pub fn full_batch(&self) -> Nftables<'static> {
        let mut b = Batch::new();
        self.inet.replace_table(&mut b, false);
        self.bridge.replace_table(&mut b, false);
        b.to_nftables()
    }

    /// [`Compiled::full_batch`] with the large sets created empty, for a start with no
    /// ruleset of ours in force and the ports not yet in the bridge; [`Compiled::fill`] then
    /// loads their elements over netlink (nft takes seconds for 100k prefixes, the kernel a
    /// fraction of that). Nothing can cross in between: no frame reaches the tables before
    /// the ports join the bridge.
    pub fn skeleton_batch(&self) -> Nftables<'static> {
        let mut b = Batch::new();
        self.inet.replace_table(&mut b, true);
        self.bridge.replace_table(&mut b, true);
        b.to_nftables()
    }

    /// The elements [`Compiled::skeleton_batch`] left out, for [`super::netlink::apply`].
    pub fn fill(&self) -> Vec<SetDelta> {
        let mut out = self.inet.fill();
        out.extend(self.bridge.fill());
        out
    }

    /// If `self` differs from the installed `old` only in the elements of its sets (an
    /// allowlist edit), those changes as one netlink transaction's worth ([`super::netlink::apply`]);
    /// None when chains, rules, counters or set definitions differ, which takes
    /// [`Compiled::diff_batch`].
    pub fn element_diff(&self, old: &Compiled) -> Option<Vec<SetDelta>> {
        if self.counters != old.counters || self.rule_ids != old.rule_ids {
            return None;
        }
        let mut out = self.inet.element_deltas(&old.inet)?;
        out.extend(self.bridge.element_deltas(&old.bridge)?);
        Some(out)
    }

    /// One transaction that turns the installed `old` into `self`: large sets change by
    /// element difference, counters of rules that stay keep counting.
    pub fn diff_batch(&self, old: &Compiled) -> Nftables<'static> {
        let mut b = Batch::new();
        self.inet.diff_into(&old.inet, &mut b);
        self.bridge.diff_into(&old.bridge, &mut b);
        b.to_nftables()
    }

    /// One transaction that deletes exactly our two tables (if present).
    pub fn teardown_batch() -> Nftables<'static> {
        let mut b = Batch::new();
        for family in [NfFamily::INet, NfFamily::Bridge] {
            let t = NfListObject::Table(Table {
                family,
                name: TABLE.into(),
                handle: None,
            });
            b.add(t.clone());
            b.delete(t);
        }
        b.to_nftables()
    }

    /// Elements in all named sets (for the log and tests).
    pub fn set_elements(&self) -> usize {
        self.inet
            .sets
            .values()
            .chain(self.bridge.sets.values())
            .map(|s| s.elems.len())
            .sum()
    }
}

#[cfg(test)]
mod tests;
