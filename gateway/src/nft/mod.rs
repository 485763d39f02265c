//! The nftables data plane: the rules compiled to an nftables ruleset (JSON, applied with the
//! `nftables` crate, which drives `nft -j`) enforced by the kernel on a bridge over the two ports.
//!
//! # Kernel mechanisms, and why each (all verified on Linux 6.18 with nft 1.0.6 in scratch
//! namespaces; `gateway/tests/nft_*.rs` exercise them end to end)
//!
//! * **Stateful filtering of bridged traffic needs `br_netfilter`.** The bridge family has no
//!   conntrack on our kernels (`CONFIG_NF_CONNTRACK_BRIDGE` is not set), so `ct state` does not
//!   exist there. `br_netfilter` with `net.bridge.bridge-nf-call-iptables=1` (and the ip6 twin)
//!   in the gateway's namespace passes bridged IP through the inet family's prerouting and
//!   forward hooks, where conntrack works. The sysctls are per namespace (default 1); `run`
//!   refuses to start when either is 0 ([`host::check_br_netfilter`]).
//! * **The ingress port is carried as a packet mark.** In the inet forward hook the input device
//!   is the bridge, not the port (`meta ibrport` needs `CONFIG_NFT_BRIDGE_META`, not set here),
//!   so a bridge-family prerouting chain (priority -300, before br_netfilter at 0) sets
//!   `meta mark` 0x1 (outside) or 0x2 (inside); the skb mark survives into the inet chain, which
//!   dispatches on it. The same chain does anti-spoofing by port and the MAC pins, with the
//!   Ethernet header at hand, before conntrack ever sees a spoofed packet.
//! * **A flipped `bridge-nf-call-iptables` cannot open the gate.** Every frame the inet chain
//!   admits gets the accept bit (0x100) in its mark; a bridge forward chain at priority 100 (after
//!   br_netfilter's forward hook at 0) drops every frame without it. Verified: with the sysctl set
//!   to 0 at run time, a previously working TCP connect times out and the gate's counter rises.
//! * **The conntrack limit is `ct count over N`.** `nf_conntrack_max` is read-only outside the
//!   initial namespace (EACCES, verified), so one `ct count` expression, in a chain every accept
//!   rule jumps to, refuses new connections beyond the configured limit (`conntrack_full`). Its
//!   connection list starts empty whenever the inet ruleset is re-applied: after a reload the
//!   limit counts connections opened since.
//! * **one_way without payload arithmetic**: see `compile.rs` (`tcp doff N` with
//!   `ip length != 20+4N` dropped, IP options dropped).
//! * **Fragments** are judged in the bridge prerouting chain, before br_netfilter reassembles
//!   them (`fragments: drop`, the default: dropped and counted as `fragment`). With
//!   `fragments: forward` the kernel reassembles the datagram and the whole datagram is judged
//!   by the rules (the userspace plane instead forwards fragments only between the two
//!   addresses of a tracked flow).
//! * **Revocation** goes through conntrack netlink ([`ctnl`]): after a reload every entry whose
//!   mark carries one of our rule ids is judged by the new rules (the same `first_match` as the
//!   userspace plane); entries no longer admitted are deleted and counted in
//!   `stockade_gateway_flows_revoked_total`, entries admitted by another rule get its id. Between
//!   the commit and the end of that pass (milliseconds) an established flow of a narrowed rule
//!   still passes; a flow whose rule was removed is dropped at once (its id has no chain).
//! * **`conntrack list|flush`** on the control socket read the kernel's table through the same
//!   conntrack netlink socket ([`KernelFlows`]): only entries carrying one of our rule ids in
//!   their mark are listed (with the rule's name) or deleted.
//! * **Counters**: every rule and every drop reason has a named nft counter, read back through
//!   nft's JSON (`nft -j list counters`). A reload keeps the counters of rules that stay; a table
//!   that is replaced starts its counters at 0, so the exporter adds increments and treats a
//!   smaller value as a restart ([`exporter`]): Prometheus counters never go backwards.
//!   Byte counts are the IP length plus 14 (the Ethernet header) per packet, as the userspace
//!   plane counts frame bytes.
//! * **Large sets go over nf_tables netlink** ([`netlink`]): nft 1.0.6 reads an interval set back
//!   before it changes it, which took minutes for a 1% edit of a 100k-prefix set. A reload that
//!   changes only set contents (an allowlist edit) is one netlink transaction of element
//!   deletions and additions (tens of milliseconds at 100k); a fresh start creates the tables
//!   through nft with the address sets empty and fills them over netlink before the ports join
//!   the bridge. A reload that changes rules goes through nft and replaces changed sets whole
//!   in the same transaction. Every path is one transaction: all of it or nothing.
//! * **Fail closed**: the ruleset is applied before the ports join the bridge; on exit the ports
//!   leave the bridge first, then exactly our two tables are deleted. After a crash (SIGKILL)
//!   bridge and ruleset stay and keep enforcing; the next start replaces the ruleset atomically.
//!
//! Differences to the userspace plane that the kernel imposes (documented in README.md, "The nftables plane"):
//! conntrack's own TCP tracking (not the `tcp_window` setting) and checksum verification decide
//! `ct state invalid`, counted as `kernel_other` because the kernel does not say why; IPv6
//! neighbour discovery is checked by source only (nft 1.0.6 cannot match the ND target).

pub mod compile;
pub mod ctnl;
pub mod exporter;
pub mod host;
pub mod netlink;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ipnet::IpNet;
use nftables::schema::Nftables;
use thiserror::Error;
use tracing::{info, warn};

use crate::core::Direction;
use crate::ctl::FlowTable;
use crate::dataplane::{ports, DataPlane, DataPlaneError, Gateway};
use crate::rules::{self, FlowQuery, RuleAction, RulesFile, Ruleset};

pub use compile::{compile, Compiled, PortNames, RuleIds};

#[derive(Debug, Error)]
pub enum NftError {
    #[error("nft: {0}")]
    Nft(String),
    #[error("{0}")]
    Host(String),
    #[error(transparent)]
    Conntrack(#[from] ctnl::CtError),
    #[error(transparent)]
    Netlink(#[from] netlink::NlError),
    #[error(transparent)]
    Rules(#[from] rules::RulesError),
    #[error(transparent)]
    Port(#[from] ports::PortError),
}

impl From<NftError> for DataPlaneError {
    fn from(e: NftError) -> Self {
        DataPlaneError::Other(e.to_string())
    }
}

fn nft_error(e: nftables::helper::NftablesError) -> NftError {
    match e {
        nftables::helper::NftablesError::NftFailed {
            hint,
            stdout,
            stderr,
            ..
        } => NftError::Nft(format!("{hint}: {}{}", stderr.trim(), stdout.trim())),
        other => NftError::Nft(other.to_string()),
    }
}

/// Applies one batch as one transaction (`nft -j -f -`): all of it or nothing.
pub fn apply(batch: &Nftables) -> Result<(), NftError> {
    nftables::helper::apply_ruleset(batch).map_err(nft_error)
}

/// Whether either of our tables is in the kernel (a crashed gateway's ruleset, still enforcing).
pub fn tables_present() -> Result<bool, NftError> {
    let v = nft_json(&["list", "tables"])?;
    Ok(v.get("nftables")
        .and_then(|o| o.as_array())
        .is_some_and(|objs| {
            objs.iter().any(|o| {
                o.get("table")
                    .and_then(|t| t.get("name"))
                    .and_then(|n| n.as_str())
                    == Some(compile::TABLE)
            })
        }))
}

/// Installs `compiled` from scratch. With no ruleset of ours in force, the structure goes in
/// through nft and the large sets' elements over netlink ([`Compiled::skeleton_batch`]; the
/// ports are not in the bridge yet, so nothing crosses in between). Over a crashed gateway's
/// ruleset, which may still be forwarding, everything goes in one nft transaction instead.
fn install(compiled: &Compiled) -> Result<&'static str, NftError> {
    if tables_present()? {
        apply(&compiled.full_batch())?;
        return Ok("nft (replacing a ruleset left in the kernel)");
    }
    apply(&compiled.skeleton_batch())?;
    if let Err(e) = netlink::apply(&compiled.fill()) {
        warn!(error = %e, "loading set elements over netlink failed; loading them through nft");
        apply(&compiled.full_batch())?;
        return Ok("nft (netlink fill failed)");
    }
    Ok("nft + netlink set elements")
}

/// Turns the installed `old` into `new` in one transaction: over netlink when only set
/// elements changed (an allowlist edit: fast at any set size), else through nft by difference.
fn reinstall(new: &Compiled, old: &Compiled) -> Result<&'static str, NftError> {
    if let Some(deltas) = new.element_diff(old) {
        match netlink::apply(&deltas) {
            Ok(()) => return Ok("netlink set elements"),
            // The transaction was refused whole, so the old ruleset is intact; nft reads the
            // kernel's state and tries the same change its own way.
            Err(e) => warn!(error = %e, "set element transaction failed; re-applying through nft"),
        }
    }
    apply(&new.diff_batch(old))?;
    Ok("nft diff")
}

/// `nft -j <args>` (the JSON output, never nft's text).
pub fn nft_json(args: &[&str]) -> Result<serde_json::Value, NftError> {
    let raw = nftables::helper::get_current_ruleset_raw(nftables::helper::DEFAULT_NFT, args)
        .map_err(nft_error)?;
    serde_json::from_str(&raw).map_err(|e| NftError::Nft(format!("invalid JSON from nft: {e}")))
}

/// Loads and compiles a rules file the way `run` does (rule ids in file order).
pub fn compile_file(path: &Path, ports: &PortNames) -> Result<Compiled, NftError> {
    let (file, rules) = rules::load_ruleset(path)?;
    let ids = RuleIds::new().assign(&rules);
    Ok(compile(&file, &rules, &ids, ports))
}

/// Loads a batch into a scratch network namespace of its own (`unshare --net`, so nothing of
/// this host is touched) and returns `nft list ruleset` there, for an operator to read.
pub fn text_listing(batch: &Nftables) -> Result<String, NftError> {
    let json = serde_json::to_string(batch).map_err(|e| NftError::Nft(e.to_string()))?;
    let mut tmp = std::env::temp_dir();
    tmp.push(format!(
        "stockade-gateway-compile-{}.json",
        std::process::id()
    ));
    std::fs::write(&tmp, json).map_err(|e| NftError::Host(format!("{}: {e}", tmp.display())))?;
    let out = Command::new("unshare")
        .args([
            "--net",
            "--",
            "sh",
            "-c",
            "nft -j -f \"$1\" && nft list ruleset",
            "sh",
        ])
        .arg(&tmp)
        .output();
    let _ = std::fs::remove_file(&tmp);
    let out = out.map_err(|e| NftError::Host(format!("unshare: {e}")))?;
    if !out.status.success() {
        return Err(NftError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Counts of one revocation pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    /// Entries deleted because the rules no longer admit them.
    pub revoked: usize,
    /// Entries admitted by another rule than before (their mark was updated).
    pub remarked: usize,
    /// Entries looked at (those carrying one of our rule ids).
    pub ours: usize,
}

/// The rule (index) that admits a tracked connection under `rules`, if any: the same judgement
/// as the userspace plane's revocation. The direction follows from the originator's address
/// (anti-spoofing ties inside sources to the inside port).
pub fn admitting_rule(
    rules: &Ruleset,
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    proto: u8,
    src_port: u16,
    dst_port: u16,
    icmp_type: Option<u8>,
) -> Option<usize> {
    let dir = if rules.is_inside_source(src) {
        Direction::Outbound
    } else {
        Direction::Inbound
    };
    let q = FlowQuery {
        src,
        dst,
        proto,
        src_port: if icmp_type.is_some() { 0 } else { src_port },
        dst_port: if icmp_type.is_some() { 0 } else { dst_port },
        icmp_type,
    };
    rules
        .first_match(dir, &q)
        .filter(|&i| rules.rules()[i].action == RuleAction::Accept)
}

/// Deletes every kernel conntrack entry of ours that `rules` no longer admit and re-marks those
/// admitted by another rule. Entries without one of our ids (the management connections of the
/// gateway's own namespace) are left alone.
pub fn revoke(rules: &Ruleset, ids: &[u32]) -> Result<Revocation, NftError> {
    let mut ct = ctnl::Conntrack::open()?;
    let mut r = Revocation::default();
    for e in ct.dump()? {
        let id = e.mark & compile::CT_ID_MASK;
        if id == 0 {
            continue;
        }
        r.ours += 1;
        match admitting_rule(
            rules,
            e.src,
            e.dst,
            e.proto,
            e.src_port,
            e.dst_port,
            e.icmp_type,
        ) {
            Some(i) if ids[i] == id => {}
            Some(i) => {
                if ct.set_mark(&e, ids[i])? {
                    r.remarked += 1;
                }
            }
            None => {
                if ct.delete(&e)? {
                    r.revoked += 1;
                }
            }
        }
    }
    Ok(r)
}

/// One kernel conntrack entry of ours as `conntrack list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelFlow {
    /// Protocol name.
    pub proto: &'static str,
    /// Originator address and port (the echo id for ICMP).
    pub src: IpAddr,
    pub src_port: u16,
    /// Responder address and port.
    pub dst: IpAddr,
    pub dst_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// The admitting rule's name (empty if its id is no longer known).
    pub rule_name: String,
    /// The conntrack mark (the rule id in its low 16 bits).
    pub mark: u32,
}

/// The kernel's connection table as the control socket sees it: only entries whose conntrack
/// mark carries one of the gateway's rule ids (the gateway's own management connections, and
/// anything else in the namespace, are neither listed nor flushed).
pub struct KernelFlows {
    state: Arc<Mutex<State>>,
}

impl KernelFlows {
    fn ours() -> Result<(ctnl::Conntrack, Vec<ctnl::CtEntry>), NftError> {
        let mut ct = ctnl::Conntrack::open()?;
        let entries = ct
            .dump()?
            .into_iter()
            .filter(|e| e.mark & compile::CT_ID_MASK != 0)
            .collect();
        Ok((ct, entries))
    }

    /// Our entries, with their rule names.
    pub fn list_flows(&self) -> Result<Vec<KernelFlow>, NftError> {
        let (_, entries) = Self::ours()?;
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(entries
            .into_iter()
            .map(|e| KernelFlow {
                proto: crate::packet::proto::name(e.proto),
                src: e.src,
                src_port: e.src_port,
                dst: e.dst,
                dst_port: e.dst_port,
                icmp_type: e.icmp_type,
                rule_name: st
                    .ids
                    .name(e.mark & compile::CT_ID_MASK)
                    .unwrap_or_default()
                    .to_string(),
                mark: e.mark,
            })
            .collect())
    }

    /// Deletes our entries opened from `src` (all of ours without it); returns how many the
    /// kernel deleted (an entry that expired meanwhile is not counted).
    pub fn flush_flows(&self, src: Option<IpNet>) -> Result<usize, NftError> {
        let (mut ct, entries) = Self::ours()?;
        let mut n = 0;
        for e in entries
            .iter()
            .filter(|e| src.is_none_or(|net| net.contains(&e.src)))
        {
            if ct.delete(e)? {
                n += 1;
            }
        }
        Ok(n)
    }
}

impl FlowTable for KernelFlows {
    fn list(&self) -> Result<Vec<serde_json::Value>, String> {
        let flows = self.list_flows().map_err(|e| e.to_string())?;
        flows
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    }

    fn flush(&self, src: Option<IpNet>) -> Result<usize, String> {
        let n = self.flush_flows(src).map_err(|e| e.to_string())?;
        // Bring the gauge up to date now rather than at the next scrape.
        if let (Some(gw), Some(count)) = (
            self.state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .gateway
                .clone(),
            host::conntrack_count(),
        ) {
            gw.metrics.conntrack_entries.set(count);
        }
        Ok(n)
    }
}

struct State {
    gateway: Option<Arc<Gateway>>,
    ids: RuleIds,
    installed: Option<Compiled>,
    exporter: exporter::Exporter,
}

/// The nftables implementation of [`DataPlane`].
pub struct NftPlane {
    ports: PortNames,
    bridge: String,
    rules_path: PathBuf,
    port_setup: bool,
    /// Ports `prepare`d at start, released at stop.
    prepared: Vec<ports::PreparedPort>,
    state: Arc<Mutex<State>>,
    gateway: Option<Arc<Gateway>>,
}

/// Default name of the bridge the plane creates in the gateway's namespace.
pub const DEFAULT_BRIDGE: &str = "stockade0";

impl NftPlane {
    /// `rules_path` is the file `run` loaded; the plane reads it again on reload for what the
    /// compiled [`Ruleset`] does not keep (pins, the addresses ARP/ND may ask about, set names).
    pub fn new(outside: &str, inside: &str, rules_path: impl Into<PathBuf>) -> Self {
        NftPlane {
            ports: PortNames {
                outside: outside.into(),
                inside: inside.into(),
            },
            bridge: DEFAULT_BRIDGE.into(),
            rules_path: rules_path.into(),
            port_setup: true,
            prepared: Vec::new(),
            state: Arc::new(Mutex::new(State {
                gateway: None,
                ids: RuleIds::new(),
                installed: None,
                exporter: exporter::Exporter::default(),
            })),
            gateway: None,
        }
    }

    /// Leaves the ports as provisioning prepared them (offloads, promiscuous mode).
    pub fn without_port_setup(mut self) -> Self {
        self.port_setup = false;
        self
    }

    /// Uses another bridge name.
    pub fn with_bridge(mut self, bridge: &str) -> Self {
        self.bridge = bridge.into();
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The control socket's view of the kernel's connection table (`conntrack list|flush`).
    pub fn flow_table(&self) -> Arc<dyn FlowTable> {
        Arc::new(KernelFlows {
            state: self.state.clone(),
        })
    }

    /// A handle that brings the metrics up to date from the kernel (named counters, conntrack
    /// entry count); `run` calls it before every scrape.
    pub fn metrics_refresher(&self) -> Arc<dyn Fn() + Send + Sync> {
        let state = self.state.clone();
        Arc::new(move || {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            let st = &mut *st;
            let Some(gw) = st.gateway.clone() else { return };
            if let Some(c) = &st.installed {
                if let Err(e) = st.exporter.poll(c, &gw.metrics) {
                    warn!(error = %e, "reading nft counters");
                }
            }
            if let Some(n) = host::conntrack_count() {
                gw.metrics.conntrack_entries.set(n);
            }
        })
    }

    fn load(&self) -> Result<(RulesFile, Ruleset), NftError> {
        Ok(rules::load_ruleset(&self.rules_path)?)
    }

    fn set_timeouts(rules: &Ruleset) {
        for failed in host::set_timeouts(&rules.settings().timeouts) {
            warn!(%failed, "conntrack timeout sysctl not set; the kernel default applies");
        }
    }

    fn start_inner(&mut self, gateway: Arc<Gateway>) -> Result<(), NftError> {
        host::check_br_netfilter()?;
        let (file, rules) = self.load()?;
        let started = Instant::now();
        {
            let mut st = self.state();
            let ids = st.ids.assign(&rules);
            let compiled = compile(&file, &rules, &ids, &self.ports);
            // One transaction that also replaces a ruleset left by a crashed gateway (which
            // kept enforcing until now).
            let via = install(&compiled)?;
            info!(
                via,
                nft_rules = compiled.nft_rules,
                set_elements = compiled.set_elements(),
                took_ms = started.elapsed().as_millis() as u64,
                "nftables ruleset applied"
            );
            st.exporter.reset();
            st.installed = Some(compiled);
            Self::set_timeouts(&rules);
            // Entries left by a previous run are judged by these rules like after a reload.
            let r = revoke(&rules, &ids)?;
            if r.revoked > 0 {
                gateway.metrics.flows_revoked.inc_by(r.revoked as u64);
            }
        }
        // Only now may frames cross: the ports join the bridge after the ruleset is in force.
        host::ensure_bridge(&self.bridge)?;
        for port in [&self.ports.outside, &self.ports.inside] {
            if self.port_setup {
                let p = ports::prepare(port)?;
                if !p.offloads_left_on.is_empty() {
                    info!(port = %p.name, offloads = ?p.offloads_left_on, "offloads left on");
                }
                self.prepared.push(p);
            }
            host::attach(&self.bridge, port)?;
        }
        self.gateway = Some(gateway.clone());
        self.state().gateway = Some(gateway.clone());
        gateway.open();
        info!(bridge = %self.bridge, outside = %self.ports.outside, inside = %self.ports.inside,
              "nftables plane forwarding");
        Ok(())
    }

    /// Re-applies the rules the reloader checked and swapped in (`file` as parsed, `rules` as
    /// compiled from it): the kernel enforces exactly what the gateway reports as loaded.
    fn reload_inner(&mut self, file: &RulesFile, rules: &Ruleset) -> Result<(), NftError> {
        let Some(gateway) = self.gateway.clone() else {
            return Ok(());
        };
        let started = Instant::now();
        let mut st = self.state();
        let st = &mut *st;
        let ids = st.ids.assign(rules);
        let compiled = compile(file, rules, &ids, &self.ports);
        let compile_ms = started.elapsed().as_millis() as u64;
        // Export what the old counters reached before some of them go away.
        if let Some(old) = &st.installed {
            if let Err(e) = st.exporter.poll(old, &gateway.metrics) {
                warn!(error = %e, "reading nft counters before reload");
            }
        }
        let via = match &st.installed {
            Some(old) => reinstall(&compiled, old)?,
            None => {
                apply(&compiled.full_batch())?;
                "nft"
            }
        };
        let applied = started.elapsed();
        st.exporter.retain(&compiled);
        st.installed = Some(compiled);
        Self::set_timeouts(rules);
        let r = revoke(rules, &ids)?;
        gateway.metrics.flows_revoked.inc_by(r.revoked as u64);
        info!(
            via,
            compile_ms,
            apply_ms = applied.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            revoked = r.revoked,
            remarked = r.remarked,
            tracked = r.ours,
            "nftables ruleset re-applied"
        );
        Ok(())
    }

    fn stop_inner(&mut self) -> Result<(), NftError> {
        if let Some(gw) = &self.gateway {
            gw.close();
        }
        // Detach first: a port outside the bridge forwards nothing, whatever comes next.
        let mut first_err = None;
        for port in [&self.ports.outside, &self.ports.inside] {
            if let Err(e) = host::detach(port) {
                warn!(%port, error = %e, "detaching port");
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            // Ports still in the bridge: keep the ruleset enforcing rather than open the gate.
            return Err(e);
        }
        host::delete_bridge(&self.bridge)?;
        apply(&Compiled::teardown_batch())?;
        for p in self.prepared.drain(..) {
            if let Err(e) = ports::release(&p) {
                warn!(port = %p.name, error = %e, "releasing port");
            }
        }
        self.state().installed = None;
        info!("nftables plane stopped; ports detached, tables deleted");
        Ok(())
    }
}

impl DataPlane for NftPlane {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn start(&mut self, gateway: Arc<Gateway>) -> Result<(), DataPlaneError> {
        Ok(self.start_inner(gateway)?)
    }

    fn rules_changed(
        &mut self,
        file: &RulesFile,
        rules: &Arc<Ruleset>,
    ) -> Result<(), DataPlaneError> {
        Ok(self.reload_inner(file, rules)?)
    }

    fn stop(&mut self) -> Result<(), DataPlaneError> {
        Ok(self.stop_inner()?)
    }
}
