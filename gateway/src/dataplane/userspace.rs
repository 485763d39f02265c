//! The userspace data plane: one AF_PACKET socket per port (pnet's datalink channel over a
//! socket we open with `PACKET_IGNORE_OUTGOING`), one receive loop per port. A frame received
//! on one port is parsed, decided by `core` and either sent unchanged out of the other port or
//! dropped. The loops own their buffers (pnet's), so the per-packet path does not allocate.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pnet_datalink::{Channel, Config, DataLinkReceiver, DataLinkSender, NetworkInterface};
use tracing::{error, info, warn};

use std::os::fd::OwnedFd;

use super::batch::{Batch, Received, Sender, BATCH};
use super::droplog::{Admit, RateLimiter};
use super::ring::RxRing;
use super::{ports, sockopt, DataPlane, DataPlaneError, Gateway, Outcome};
use crate::core::DropReason;
use crate::metrics::DECISION_SAMPLE_EVERY;
use crate::packet::{proto, Packet, PacketKind, Port};

/// How often a blocked receive wakes up to look at the stop flag (bounds shutdown latency).
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Receive buffer: larger than any frame the kernel can hand over, so nothing is truncated.
const FRAME_BUFFER: usize = 65_600;
/// Per-frame buffer of the batched I/O: a 9000-byte jumbo frame fits; anything larger (only
/// possible with receive offloads left on) is reported truncated and dropped as `malformed`.
const BATCH_FRAME: usize = 9_216 + 64;
/// Socket receive queue (both I/O variants).
const RECEIVE_QUEUE: usize = 8 << 20;

/// How the plane moves frames. Both use one AF_PACKET socket per port with
/// `PACKET_IGNORE_OUTGOING` and the same decision path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Io {
    /// `recvmmsg`/`sendmmsg`, up to 64 frames per system call; no added latency.
    Batched,
    /// pnet's datalink channel, one frame per call.
    Pnet,
    /// A PACKET_MMAP receive ring (TPACKET_V3) and `sendmmsg`: the fastest (see
    /// gateway/bench/forward.sh); a frame may wait up to 1 ms for its block under light load.
    #[default]
    Ring,
}

impl std::str::FromStr for Io {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "batched" => Ok(Io::Batched),
            "pnet" => Ok(Io::Pnet),
            "ring" => Ok(Io::Ring),
            o => Err(format!("expected `batched`, `ring` or `pnet`, got `{o}`")),
        }
    }
}

pub struct UserspacePlane {
    io: Io,
    outside: String,
    inside: String,
    prepare_ports: bool,
    /// Ports `prepare`d at start, released at stop.
    prepared: Vec<ports::PreparedPort>,
    stop: Arc<AtomicBool>,
    loops: Vec<(String, JoinHandle<Result<(), DataPlaneError>>)>,
    gateway: Option<Arc<Gateway>>,
}

impl UserspacePlane {
    /// A plane between the interfaces `outside` (clients, service) and `inside` (stock).
    pub fn new(outside: impl Into<String>, inside: impl Into<String>) -> Self {
        Self {
            io: Io::default(),
            outside: outside.into(),
            inside: inside.into(),
            prepare_ports: true,
            prepared: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            loops: Vec::new(),
            gateway: None,
        }
    }

    /// Selects the frame I/O.
    pub fn with_io(mut self, io: Io) -> Self {
        self.io = io;
        self
    }

    /// Skip port preparation (for ports prepared by other means).
    pub fn without_port_setup(mut self) -> Self {
        self.prepare_ports = false;
        self
    }
}

fn interface(name: &str) -> Result<NetworkInterface, DataPlaneError> {
    pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| ports::PortError::NoSuchInterface(name.to_string()).into())
}

type Halves = (Box<dyn DataLinkSender>, Box<dyn DataLinkReceiver>);

fn open_channel(iface: &NetworkInterface) -> Result<Halves, DataPlaneError> {
    let io_err = |what: &'static str| {
        move |error: io::Error| DataPlaneError::Io {
            port: iface.name.clone(),
            what,
            error,
        }
    };
    let fd = sockopt::packet_socket_ignoring_outgoing().map_err(io_err("AF_PACKET socket"))?;
    sockopt::set_receive_buffer(&fd, RECEIVE_QUEUE).map_err(io_err("receive buffer"))?;
    let config = Config {
        read_buffer_size: FRAME_BUFFER,
        write_buffer_size: FRAME_BUFFER,
        read_timeout: Some(POLL_INTERVAL),
        write_timeout: Some(POLL_INTERVAL),
        promiscuous: true,
        // pnet takes ownership of the descriptor (it binds it and closes it on drop).
        socket_fd: Some(sockopt::into_raw(fd)),
        ..Config::default()
    };
    match pnet_datalink::channel(iface, config).map_err(io_err("datalink channel"))? {
        Channel::Ethernet(tx, rx) => Ok((tx, rx)),
        _ => Err(DataPlaneError::NotEthernet(iface.name.clone())),
    }
}

impl DataPlane for UserspacePlane {
    fn name(&self) -> &'static str {
        "userspace"
    }

    fn start(&mut self, gateway: Arc<Gateway>) -> Result<(), DataPlaneError> {
        if self.prepare_ports {
            for name in [&self.outside, &self.inside] {
                let p = ports::prepare(name)?;
                info!(port = %p.name, ifindex = p.index, offloads_left_on = ?p.offloads_left_on, "port prepared");
                self.prepared.push(p);
            }
        }
        let out_if = interface(&self.outside)?;
        let in_if = interface(&self.inside)?;
        self.stop.store(false, Ordering::SeqCst);
        match self.io {
            Io::Pnet => {
                let (out_tx, out_rx) = open_channel(&out_if)?;
                let (in_tx, in_rx) = open_channel(&in_if)?;
                for (port, rx, tx) in [
                    (Port::Outside, out_rx, in_tx),
                    (Port::Inside, in_rx, out_tx),
                ] {
                    let (gw, stop) = (gateway.clone(), self.stop.clone());
                    self.spawn(port, move || receive_loop(&gw, port, rx, tx, &stop))?;
                }
            }
            Io::Ring => {
                let (out_sock, out_ring) = open_ring(&out_if)?;
                let (in_sock, in_ring) = open_ring(&in_if)?;
                let (out_sock, in_sock) = (Arc::new(out_sock), Arc::new(in_sock));
                for (port, rx, ring, tx) in [
                    (Port::Outside, out_sock.clone(), out_ring, in_sock.clone()),
                    (Port::Inside, in_sock, in_ring, out_sock),
                ] {
                    let (gw, stop) = (gateway.clone(), self.stop.clone());
                    self.spawn(port, move || ring_loop(&gw, port, &rx, ring, &tx, &stop))?;
                }
            }
            Io::Batched => {
                let out_sock = Arc::new(open_batched(&out_if)?);
                let in_sock = Arc::new(open_batched(&in_if)?);
                for (port, rx, tx) in [
                    (Port::Outside, out_sock.clone(), in_sock.clone()),
                    (Port::Inside, in_sock, out_sock),
                ] {
                    let (gw, stop) = (gateway.clone(), self.stop.clone());
                    self.spawn(port, move || batched_loop(&gw, port, &rx, &tx, &stop))?;
                }
            }
        }
        // Both sockets exist and the loops run: only now may frames cross.
        gateway.open();
        self.gateway = Some(gateway);
        info!(outside = %self.outside, inside = %self.inside, io = ?self.io, "userspace plane forwarding");
        Ok(())
    }

    fn stop(&mut self) -> Result<(), DataPlaneError> {
        // Close the gate first: from here on no frame is forwarded, even one already received.
        if let Some(gw) = &self.gateway {
            gw.close();
        }
        self.stop.store(true, Ordering::SeqCst);
        let mut result = Ok(());
        for (name, handle) in self.loops.drain(..) {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(DataPlaneError::Panicked(name)),
            }
        }
        for p in self.prepared.drain(..) {
            if let Err(e) = ports::release(&p) {
                warn!(port = %p.name, error = %e, "could not release port");
            }
        }
        result
    }
}

impl Drop for UserspacePlane {
    fn drop(&mut self) {
        if !self.loops.is_empty() {
            let _ = self.stop();
        }
    }
}

impl UserspacePlane {
    fn spawn(
        &mut self,
        port: Port,
        f: impl FnOnce() -> Result<(), DataPlaneError> + Send + 'static,
    ) -> Result<(), DataPlaneError> {
        let name = match port {
            Port::Outside => self.outside.clone(),
            Port::Inside => self.inside.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("rx-{}", port.as_str()))
            .spawn(f)
            .map_err(|error| DataPlaneError::Io {
                port: name.clone(),
                what: "spawn",
                error,
            })?;
        self.loops.push((name, handle));
        Ok(())
    }
}

/// One socket per port for the batched I/O: bound to the port, promiscuous, ignoring its own
/// transmissions, with timeouts so the loops notice the stop flag.
fn open_batched(iface: &NetworkInterface) -> Result<OwnedFd, DataPlaneError> {
    let io_err = |what: &'static str| {
        move |error: io::Error| DataPlaneError::Io {
            port: iface.name.clone(),
            what,
            error,
        }
    };
    let fd = sockopt::packet_socket_ignoring_outgoing().map_err(io_err("AF_PACKET socket"))?;
    sockopt::bind_to_interface(&fd, iface.index).map_err(io_err("bind"))?;
    sockopt::add_promiscuous_membership(&fd, iface.index).map_err(io_err("promiscuous"))?;
    sockopt::set_timeouts(&fd, POLL_INTERVAL).map_err(io_err("timeouts"))?;
    sockopt::set_receive_buffer(&fd, RECEIVE_QUEUE).map_err(io_err("receive buffer"))?;
    Ok(fd)
}

/// One socket per port with a receive ring (set up before binding, so the ring sees only
/// this port's frames).
fn open_ring(iface: &NetworkInterface) -> Result<(OwnedFd, RxRing), DataPlaneError> {
    let io_err = |what: &'static str| {
        move |error: io::Error| DataPlaneError::Io {
            port: iface.name.clone(),
            what,
            error,
        }
    };
    let fd = sockopt::packet_socket_ignoring_outgoing().map_err(io_err("AF_PACKET socket"))?;
    let ring = RxRing::new(&fd).map_err(io_err("receive ring"))?;
    sockopt::bind_to_interface(&fd, iface.index).map_err(io_err("bind"))?;
    sockopt::add_promiscuous_membership(&fd, iface.index).map_err(io_err("promiscuous"))?;
    sockopt::set_timeouts(&fd, POLL_INTERVAL).map_err(io_err("timeouts"))?;
    Ok((fd, ring))
}

fn ring_loop(
    gw: &Gateway,
    port: Port,
    rx: &OwnedFd,
    mut ring: RxRing,
    tx: &OwnedFd,
    stop: &AtomicBool,
) -> Result<(), DataPlaneError> {
    let mut sender = Sender::default();
    let mut droplog = RateLimiter::default();
    let mut sendlog = RateLimiter::default();
    let mut n: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        match ring.wait(rx, POLL_INTERVAL) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                error!(port = port.as_str(), error = %e, "receive failed; stopping this port");
                gw.close();
                return Err(DataPlaneError::Io {
                    port: port.as_str().to_string(),
                    what: "receive",
                    error: e,
                });
            }
        }
        let now = Instant::now();
        let block = ring.ready_block();
        let mut forward: [&[u8]; BATCH] = [&[]; BATCH];
        let mut k = 0;
        while let Some(item) = block.next() {
            n = n.wrapping_add(1);
            let (outcome, pkt, len) = match item {
                Err(len) => {
                    gw.count_undecided(port, DropReason::Malformed, len);
                    (Outcome::Drop(DropReason::Malformed), None, len)
                }
                Ok(frame) => {
                    let (o, p) = gw.process(now, frame, port, n & (DECISION_SAMPLE_EVERY - 1) == 0);
                    if o == Outcome::Forward {
                        forward[k] = frame;
                        k += 1;
                    }
                    (o, p, frame.len())
                }
            };
            if let Outcome::Drop(reason) = outcome {
                if let Admit::Log { suppressed_before } = droplog.admit(now) {
                    log_drop(port, reason, pkt.as_ref(), len, suppressed_before);
                }
            }
            if k == BATCH {
                flush(gw, port, tx, &mut sender, &forward[..k], &mut sendlog, now);
                k = 0;
            }
        }
        flush(gw, port, tx, &mut sender, &forward[..k], &mut sendlog, now);
        // Dropping the block hands it back to the kernel (after everything was sent).
        drop(block);
    }
    Ok(())
}

fn flush(
    gw: &Gateway,
    port: Port,
    tx: &OwnedFd,
    sender: &mut Sender,
    frames: &[&[u8]],
    sendlog: &mut RateLimiter,
    now: Instant,
) {
    // Re-check the gate: shutdown may have started while these frames were decided.
    if frames.is_empty() || !gw.is_open() {
        return;
    }
    match sender.send(tx, frames) {
        Ok(sent) if sent == frames.len() => {}
        Ok(sent) => {
            if let Admit::Log { suppressed_before } = sendlog.admit(now) {
                warn!(
                    port = port.as_str(),
                    lost = frames.len() - sent,
                    suppressed_before,
                    "transmit queue full"
                );
            }
        }
        Err(e) => {
            if let Admit::Log { suppressed_before } = sendlog.admit(now) {
                warn!(port = port.as_str(), lost = frames.len(), error = %e, suppressed_before, "forwarding failed");
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

fn batched_loop(
    gw: &Gateway,
    port: Port,
    rx: &OwnedFd,
    tx: &OwnedFd,
    stop: &AtomicBool,
) -> Result<(), DataPlaneError> {
    let mut batch = Batch::new(BATCH_FRAME);
    let mut forward = [0u8; BATCH];
    let mut droplog = RateLimiter::default();
    let mut sendlog = RateLimiter::default();
    let mut n: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = batch.recv(rx) {
            if is_timeout(&e) {
                continue;
            }
            error!(port = port.as_str(), error = %e, "receive failed; stopping this port");
            gw.close();
            return Err(DataPlaneError::Io {
                port: port.as_str().to_string(),
                what: "receive",
                error: e,
            });
        }
        // One clock read per batch: timeouts are seconds, a batch is microseconds.
        let now = Instant::now();
        let mut k = 0;
        for i in 0..batch.len() {
            n = n.wrapping_add(1);
            let (outcome, pkt, len) = match batch.get(i) {
                Received::Truncated(len) => {
                    gw.count_undecided(port, DropReason::Malformed, len);
                    (Outcome::Drop(DropReason::Malformed), None, len)
                }
                Received::Frame(frame) => {
                    let (o, p) = gw.process(now, frame, port, n & (DECISION_SAMPLE_EVERY - 1) == 0);
                    (o, p, frame.len())
                }
            };
            match outcome {
                Outcome::Forward => {
                    forward[k] = i as u8;
                    k += 1;
                }
                Outcome::Drop(reason) => {
                    if let Admit::Log { suppressed_before } = droplog.admit(now) {
                        log_drop(port, reason, pkt.as_ref(), len, suppressed_before);
                    }
                }
                Outcome::GateClosed => {}
            }
        }
        // Re-check the gate: shutdown may have started while this batch was decided.
        if k == 0 || !gw.is_open() {
            continue;
        }
        match batch.send(tx, &forward[..k]) {
            Ok(sent) if sent == k => {}
            Ok(sent) => {
                if let Admit::Log { suppressed_before } = sendlog.admit(now) {
                    warn!(
                        port = port.as_str(),
                        lost = k - sent,
                        suppressed_before,
                        "transmit queue full"
                    );
                }
            }
            Err(e) => {
                if let Admit::Log { suppressed_before } = sendlog.admit(now) {
                    warn!(port = port.as_str(), lost = k, error = %e, suppressed_before, "forwarding failed");
                }
            }
        }
    }
    Ok(())
}

fn receive_loop(
    gw: &Gateway,
    port: Port,
    mut rx: Box<dyn DataLinkReceiver>,
    mut tx: Box<dyn DataLinkSender>,
    stop: &AtomicBool,
) -> Result<(), DataPlaneError> {
    let mut droplog = RateLimiter::default();
    let mut sendlog = RateLimiter::default();
    let mut n: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        let frame = match rx.next() {
            Ok(frame) => frame,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                ) =>
            {
                continue
            }
            Err(e) => {
                error!(port = port.as_str(), error = %e, "receive failed; stopping this port");
                gw.close();
                return Err(DataPlaneError::Io {
                    port: port.as_str().to_string(),
                    what: "receive",
                    error: e,
                });
            }
        };
        n = n.wrapping_add(1);
        let now = Instant::now();
        let (outcome, pkt) = gw.process(now, frame, port, n & (DECISION_SAMPLE_EVERY - 1) == 0);
        match outcome {
            Outcome::Forward => {
                // Re-check the gate: shutdown may have started while this frame was decided.
                if !gw.is_open() {
                    continue;
                }
                if let Some(Err(e)) = tx.send_to(frame, None) {
                    if let Admit::Log { suppressed_before } = sendlog.admit(now) {
                        warn!(port = port.as_str(), len = frame.len(), error = %e, suppressed_before, "forwarding failed");
                    }
                }
            }
            Outcome::Drop(reason) => {
                if let Admit::Log { suppressed_before } = droplog.admit(now) {
                    log_drop(port, reason, pkt.as_ref(), frame.len(), suppressed_before);
                }
            }
            Outcome::GateClosed => {}
        }
    }
    Ok(())
}

fn log_drop(
    port: Port,
    reason: DropReason,
    pkt: Option<&Packet<'_>>,
    len: usize,
    suppressed_before: u64,
) {
    const T: &str = "stockade_gateway::drop";
    let (port, reason) = (port.as_str(), reason.as_str());
    match pkt.map(|p| (p.src_mac, &p.kind)) {
        Some((mac, PacketKind::Ip(ip))) => {
            let (sport, dport) = ip.flow_ports();
            info!(target: T, port, reason, proto = proto::name(ip.proto), src = %ip.src, sport,
                dst = %ip.dst, dport, src_mac = %mac, len, suppressed_before, "drop");
        }
        Some((mac, PacketKind::Arp(a))) => {
            info!(target: T, port, reason, proto = "arp", op = a.operation, sender = %a.sender_ip,
                target = %a.target_ip, src_mac = %mac, len, suppressed_before, "drop");
        }
        Some((mac, PacketKind::NonIp { ether_type })) => {
            info!(target: T, port, reason, ether_type = format_args!("{ether_type:#06x}"),
                src_mac = %mac, len, suppressed_before, "drop");
        }
        None => info!(target: T, port, reason, len, suppressed_before, "drop"),
    }
}
