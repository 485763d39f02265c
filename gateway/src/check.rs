//! `stockade-gateway check FILE`: validate and lint a rules file.
//!
//! Exit codes (for scripts): **0** the file is valid and has no lint warnings; **1** the file
//! is valid but has lint warnings (it would load); **2** the file is invalid (it would be
//! refused, and a running gateway keeps its old rules).
//!
//! Errors: YAML syntax, unknown keys, wrong types or values, unknown set references, ports
//! or ICMP types on the wrong protocol, duplicate rule names, an inbound accept from an
//! address without a MAC pin and without `unpinned_reason` (DESIGN.md: clients and the
//! service share the outside port).
//!
//! Lints: a rule that can never match (shadowed by an earlier rule, or address families that
//! cannot meet), overlapping sets, an empty or unused set, a rule that would let clients (an
//! unpinned source) reach the stock side or send it data (claim 1 of JP H11-73391), and a
//! `malformed: forward` policy.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;

use ipnet::IpNet;

use crate::core::Direction;
use crate::rules::{
    self, AddrRef, CompiledRule, Policy, PortSpec, Protocol, RuleAction, RulesFile, Ruleset,
};

/// Error or warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The file is refused.
    Error,
    /// The file loads, but probably does not say what was meant.
    Warning,
}

/// One finding, printed `file:line:column: severity: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// Short machine-readable kind (`invalid`, `shadowed`, `overlapping-sets`, `empty-set`,
    /// `unused-set`, `never-matches`, `admits-clients`, `malformed-forward`).
    pub code: &'static str,
    /// File name.
    pub file: String,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match self.position {
            Some((l, c)) => write!(
                f,
                "{}:{}:{}: {sev}[{}]: {}",
                self.file, l, c, self.code, self.message
            ),
            None => write!(f, "{}: {sev}[{}]: {}", self.file, self.code, self.message),
        }
    }
}

/// The outcome of `check`.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    /// File name.
    pub file: String,
    /// Errors: the file is refused.
    pub errors: Vec<Finding>,
    /// Lint warnings.
    pub lints: Vec<Finding>,
    /// Number of rules (when the file parsed).
    pub rules: usize,
    /// Number of sets (when the file parsed).
    pub sets: usize,
}

impl CheckReport {
    /// 0 ok, 1 lint warnings only, 2 errors.
    pub fn exit_code(&self) -> i32 {
        if !self.errors.is_empty() {
            2
        } else if !self.lints.is_empty() {
            1
        } else {
            0
        }
    }

    /// True when the file would load.
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in self.errors.iter().chain(self.lints.iter()) {
            writeln!(f, "{e}")?;
        }
        if self.errors.is_empty() {
            writeln!(
                f,
                "{}: valid ({} rules, {} sets), {} warning(s)",
                self.file,
                self.rules,
                self.sets,
                self.lints.len()
            )
        } else {
            writeln!(f, "{}: invalid, {} error(s)", self.file, self.errors.len())
        }
    }
}

/// Check a rules file.
pub fn check_file(path: impl AsRef<Path>) -> CheckReport {
    let path = path.as_ref();
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => check_str(&text, &origin),
        Err(e) => CheckReport {
            file: origin.clone(),
            errors: vec![Finding {
                severity: Severity::Error,
                code: "invalid",
                file: origin,
                position: None,
                message: format!("cannot read: {e}"),
            }],
            ..Default::default()
        },
    }
}

/// Check rules given as text; `origin` names them in the findings.
pub fn check_str(text: &str, origin: &str) -> CheckReport {
    check_and_compile(text, origin).0
}

/// [`check_str`], also handing back what it compiled when the file is valid (a reload then
/// parses and compiles a large file once, not three times).
pub fn check_and_compile(text: &str, origin: &str) -> (CheckReport, Option<(RulesFile, Ruleset)>) {
    let mut report = CheckReport {
        file: origin.to_string(),
        ..Default::default()
    };
    match rules::compile_str(text, origin) {
        Err(e) => {
            report.errors.push(Finding {
                severity: Severity::Error,
                code: "invalid",
                file: origin.to_string(),
                position: e.line.map(|l| (l, e.column.unwrap_or(1))),
                message: e.message,
            });
            (report, None)
        }
        Ok((file, rs)) => {
            report.rules = file.rules.len();
            report.sets = file.sets.len();
            report.lints = lint(&file, &rs, text, origin);
            let valid = report.is_valid();
            (report, valid.then_some((file, rs)))
        }
    }
}

/// The lint warnings for a valid file. `text` is only used to find line numbers.
pub fn lint(file: &RulesFile, rs: &Ruleset, text: &str, origin: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let warn = |code, position, message: String| Finding {
        severity: Severity::Warning,
        code,
        file: origin.to_string(),
        position,
        message,
    };
    let rules = rs.rules();

    // Rules that can never match.
    for (j, rj) in rules.iter().enumerate() {
        let pos = rules::locate_rule(text, &rj.name, None);
        if let Some(i) = (0..j).find(|&i| covers(&rules[i], rj)) {
            out.push(warn(
                "shadowed",
                pos,
                format!(
                    "rule `{}` can never match: the earlier rule `{}` covers every packet it would match",
                    rj.name, rules[i].name
                ),
            ));
        } else if !families_meet(rj) {
            out.push(warn(
                "never-matches",
                pos,
                format!(
                    "rule `{}` can never match: its sources, destinations and protocol have no address family in common",
                    rj.name
                ),
            ));
        }
    }

    // Sets: empty, unused, overlapping.
    let mut used: BTreeSet<&str> = BTreeSet::new();
    for r in &file.rules {
        for a in r.src.iter().chain(r.dst.iter()) {
            if let AddrRef::Set(n) = a {
                used.insert(n);
            }
        }
    }
    for a in &file.settings.inside_sources {
        if let AddrRef::Set(n) = a {
            used.insert(n);
        }
    }
    for (name, cidrs) in &file.sets {
        let pos = rules::locate_set(text, name);
        if cidrs.is_empty() {
            out.push(warn("empty-set", pos, format!("set `{name}` is empty")));
        } else if !used.contains(name.as_str()) {
            out.push(warn(
                "unused-set",
                pos,
                format!("set `{name}` is not used by any rule or by inside_sources"),
            ));
        }
    }
    for (a, b, na, nb) in overlapping_sets(file) {
        out.push(warn(
            "overlapping-sets",
            rules::locate_set(text, &b),
            format!("sets `{a}` and `{b}` overlap ({na} and {nb}); an address in both is easy to admit by mistake"),
        ));
    }

    // Rules that would let clients reach the stock side (claim 1: a client may never open a
    // connection to the stock server nor send it a byte of data).
    for (r, spec) in rules.iter().zip(file.rules.iter()) {
        if r.action != RuleAction::Accept {
            continue;
        }
        let pos = rules::locate_rule(text, &r.name, None);
        match r.direction {
            Direction::Inbound => {
                let unpinned = unpinned(rs, &r.src);
                if !unpinned.is_empty() {
                    out.push(warn(
                        "admits-clients",
                        pos,
                        format!(
                            "rule `{}` admits unpinned sources ({}) toward the stock side; unpinned_reason: {}",
                            r.name,
                            unpinned.join(", "),
                            spec.unpinned_reason.as_deref().unwrap_or("")
                        ),
                    ));
                }
            }
            Direction::Outbound => {
                let carries_data =
                    matches!(r.protocol, Protocol::Tcp | Protocol::Udp | Protocol::Any);
                let unpinned = unpinned(rs, &r.dst);
                if carries_data && !r.one_way && !unpinned.is_empty() {
                    out.push(warn(
                        "admits-clients",
                        pos,
                        format!(
                            "rule `{}` opens two-way connections to unpinned destinations ({}); their replies carry data to the stock side; add `one_way: true` if the stock side only pushes",
                            r.name,
                            unpinned.join(", ")
                        ),
                    ));
                }
            }
        }
    }

    if file.settings.malformed == Policy::Forward {
        out.push(warn(
            "malformed-forward",
            rules::locate_setting(text, "malformed"),
            "malformed: forward passes frames the gateway cannot read, unchecked".to_string(),
        ));
    }
    out
}

fn unpinned(rs: &Ruleset, nets: &[IpNet]) -> Vec<String> {
    nets.iter()
        .filter(|n| n.prefix_len() != n.max_prefix_len() || rs.pin(n.addr()).is_none())
        .map(|n| rules::Cidr(*n).to_string())
        .collect()
}

/// Inclusive address range of a net, with IPv4 and IPv6 kept apart.
fn range(n: &IpNet) -> (bool, u128, u128) {
    match n {
        IpNet::V4(v) => (
            false,
            u32::from(v.network()) as u128,
            u32::from(v.broadcast()) as u128,
        ),
        IpNet::V6(v) => (true, u128::from(v.network()), u128::from(v.broadcast())),
    }
}

/// True if the union of `outer` contains every address of `inner`.
fn nets_cover(outer: &[IpNet], inner: &[IpNet]) -> bool {
    let mut ranges: Vec<(bool, u128, u128)> = outer.iter().map(range).collect();
    ranges.sort();
    // Merge adjacent and overlapping ranges.
    let mut merged: Vec<(bool, u128, u128)> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(m) if m.0 == r.0 && r.1 <= m.2.saturating_add(1) => m.2 = m.2.max(r.2),
            _ => merged.push(r),
        }
    }
    inner.iter().map(range).all(|(v6, lo, hi)| {
        merged
            .iter()
            .any(|&(f, a, b)| f == v6 && a <= lo && hi <= b)
    })
}

fn ports_cover(outer: &[PortSpec], inner: &[PortSpec]) -> bool {
    if outer.is_empty() {
        return true;
    }
    let all = [PortSpec { lo: 0, hi: 65535 }];
    let inner = if inner.is_empty() { &all[..] } else { inner };
    let mut o: Vec<PortSpec> = outer.to_vec();
    o.sort();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for p in o {
        let (lo, hi) = (u32::from(p.lo), u32::from(p.hi));
        match merged.last_mut() {
            Some(m) if lo <= m.1 + 1 => m.1 = m.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    inner.iter().all(|p| {
        merged
            .iter()
            .any(|&(a, b)| a <= u32::from(p.lo) && u32::from(p.hi) <= b)
    })
}

/// True if every packet `later` matches is matched by `earlier` first.
fn covers(earlier: &CompiledRule, later: &CompiledRule) -> bool {
    earlier.direction == later.direction
        && (earlier.protocol == Protocol::Any || earlier.protocol == later.protocol)
        && ports_cover(&earlier.src_ports, &later.src_ports)
        && ports_cover(&earlier.dst_ports, &later.dst_ports)
        && (earlier.icmp_types.is_empty()
            || (!later.icmp_types.is_empty()
                && later
                    .icmp_types
                    .iter()
                    .all(|t| earlier.icmp_types.contains(t))))
        && nets_cover(&earlier.src, &later.src)
        && nets_cover(&earlier.dst, &later.dst)
}

fn families_meet(r: &CompiledRule) -> bool {
    let has = |nets: &[IpNet], v6: bool| nets.iter().any(|n| matches!(n, IpNet::V6(_)) == v6);
    let ok = |v6: bool| has(&r.src, v6) && has(&r.dst, v6);
    match r.protocol {
        Protocol::Icmp => ok(false),
        Protocol::Icmpv6 => ok(true),
        _ => ok(false) || ok(true),
    }
}

/// Pairs of sets that share addresses, with one example CIDR from each.
fn overlapping_sets(file: &RulesFile) -> Vec<(String, String, String, String)> {
    let names: Vec<&String> = file.sets.keys().collect();
    let mut iv: Vec<(bool, u128, u128, usize, IpNet)> = Vec::new();
    for (si, name) in names.iter().enumerate() {
        for c in &file.sets[*name] {
            let (f, lo, hi) = range(&c.0);
            iv.push((f, lo, hi, si, c.0));
        }
    }
    iv.sort_by_key(|x| (x.0, x.1, std::cmp::Reverse(x.2)));
    // Sweep: for every set, the open interval reaching furthest; an interval starting before
    // another set's furthest end overlaps it.
    let mut furthest: HashMap<usize, (bool, u128, IpNet)> = HashMap::new();
    let mut found: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut out = Vec::new();
    for &(f, lo, hi, si, net) in &iv {
        for (&sj, &(fj, end, nj)) in &furthest {
            if sj != si && fj == f && lo <= end {
                let key = (sj.min(si), sj.max(si));
                if found.insert(key) {
                    out.push((
                        names[sj].clone(),
                        names[si].clone(),
                        rules::Cidr(nj).to_string(),
                        rules::Cidr(net).to_string(),
                    ));
                }
            }
        }
        let e = furthest.entry(si).or_insert((f, hi, net));
        if e.0 != f || hi > e.1 {
            *e = (f, hi, net);
        }
    }
    out
}

#[cfg(test)]
mod tests;
