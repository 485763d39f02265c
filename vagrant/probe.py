#!/usr/bin/env python3
"""The no-bypass attempts of vagrant/test.sh, run as root on a client or service VM (issue 14).

  probe.py reach IFACE:TARGET[,TARGET...] [IFACE:TARGET...]
      From each NIC, to each address: TCP (the stock API, metrics and SSH ports), UDP and ICMP
      echo, bound to that NIC (SO_BINDTODEVICE: the kernel sends out of it even where no route
      points there, as an attacker would). One line per attempt:
          tcp 198.51.100.50:7443 via vagrant0: timeout
      `reached` or `refused` (a reset, an ICMP port unreachable) or `reply` (an echo reply)
      means the stock VM answered. Exit 1 if any attempt got an answer.

  probe.py forge IFACE SRC:SPORT DST:DPORT SEQ ACK [MAC...]
      Sends TCP segments carrying the payload STOCKADE-FORGED, with the given tuple and sequence
      numbers, out of IFACE as raw Ethernet frames (broadcast, to every MAC this VM has seen,
      and to the MACs given), so that nothing on the link is spared. Prints how many were sent.

  probe.py knock IFACE TARGET PORT SECONDS
      A TCP connection attempt out of IFACE every 0.3 s for SECONDS (or until killed): while the
      gateway VM reboots, none may get through. Prints the count of each outcome at the end
      (also on SIGTERM/SIGINT).

  probe.py seq PCAP PORT
      The tuple and this VM's next sequence numbers (snd_nxt, rcv_nxt) on its TCP connection
      on local PORT, from a capture of it: what a client knows of its own push connection.

Every wait is bounded (3 s an attempt); attempts run in parallel.
"""
import concurrent.futures
import errno
import os
import socket
import struct
import sys
import time

TIMEOUT = 3.0
TCP_PORTS = (7443, 9443, 22)
SO_BINDTODEVICE = 25


def bound(kind, proto, iface):
    s = socket.socket(socket.AF_INET, kind, proto)
    s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, iface.encode())
    s.settimeout(TIMEOUT)
    return s


def attempt(s, action):
    """`action(s)` on a bound socket: reached, refused (a reset, an ICMP port unreachable),
    timeout, or unreachable (a local error such as no ARP answer)."""
    try:
        action(s)
        return "reached"
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "unreachable (%s)" % errno.errorcode.get(e.errno, e.errno)
    finally:
        s.close()


def tcp(iface, target, port):
    return attempt(bound(socket.SOCK_STREAM, 0, iface), lambda s: s.connect((target, port)))


def udp(iface, target, port=9999):
    def exchange(s):
        s.connect((target, port))
        s.send(b"stockade-probe")
        s.recv(64)

    return attempt(bound(socket.SOCK_DGRAM, 0, iface), exchange)


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp(iface, target):
    s = bound(socket.SOCK_RAW, socket.IPPROTO_ICMP, iface)
    ident = os.getpid() & 0xFFFF
    body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"stockade-probe"
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    try:
        s.sendto(body, (target, 0))
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                pkt, (src, _) = s.recvfrom(2048)
            except socket.timeout:
                break
            if src == target:
                return "reply"
        return "timeout"
    except OSError as e:
        return "unreachable (%s)" % errno.errorcode.get(e.errno, e.errno)
    finally:
        s.close()


def reach(specs):
    jobs = []
    for spec in specs:
        iface, _, targets = spec.partition(":")
        for t in filter(None, targets.split(",")):
            for p in TCP_PORTS:
                jobs.append(("tcp %s:%d via %s" % (t, p, iface), tcp, (iface, t, p)))
            jobs.append(("udp %s:9999 via %s" % (t, iface), udp, (iface, t)))
            jobs.append(("icmp %s via %s" % (t, iface), icmp, (iface, t)))
    answered = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = [(what, pool.submit(f, *args)) for what, f, args in jobs]
        for what, fut in results:
            r = fut.result()
            if r in ("reached", "refused", "reply"):
                answered += 1
            print("%s: %s" % (what, r), flush=True)
    print("%d attempts, %d answered" % (len(jobs), answered))
    return 1 if answered else 0


def forge(iface, src, dst, seq, ack, *extra_macs):
    from scapy.all import ARP, Ether, IP, TCP, Raw, conf, get_if_hwaddr, sendp, sniff

    conf.verb = 0
    sip, sport = src.rsplit(":", 1)
    dip, dport = dst.rsplit(":", 1)
    macs = {"ff:ff:ff:ff:ff:ff", *extra_macs}
    # Every MAC seen on this link for 2 s (the host's bridge, any VM that talks).
    for p in sniff(iface=iface, timeout=2):
        if Ether in p:
            macs.add(p[Ether].src)
    macs.discard(get_if_hwaddr(iface))
    seg = IP(src=sip, dst=dip) / TCP(sport=int(sport), dport=int(dport), flags="PA", seq=int(seq), ack=int(ack)) / Raw(b"STOCKADE-FORGED")
    n = 0
    for mac in sorted(macs):
        for _ in range(3):
            sendp(Ether(dst=mac) / seg, iface=iface)
            n += 1
    print("forged %d segments %s -> %s seq %s ack %s out of %s to %s" % (n, src, dst, seq, ack, iface, ",".join(sorted(macs))))
    return 0


def knock(iface, target, port, seconds):
    import signal

    counts = {}

    def report(*_):
        print(" ".join("%s=%d" % kv for kv in sorted(counts.items())) or "no attempts", flush=True)
        # At once, from the signal handler: sys.exit here races the interpreter's shutdown.
        os._exit(0)

    signal.signal(signal.SIGTERM, report)
    signal.signal(signal.SIGINT, report)
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        s = bound(socket.SOCK_STREAM, 0, iface)
        s.settimeout(0.3)
        try:
            s.connect((target, int(port)))
            r = "reached"
        except ConnectionRefusedError:
            r = "refused"
        except socket.timeout:
            r = "timeout"
        except OSError as e:
            r = errno.errorcode.get(e.errno, str(e.errno))
        finally:
            s.close()
        counts[r] = counts.get(r, 0) + 1
        time.sleep(0.3)
    report()


def seq(pcap, port):
    """The tuple and the next sequence numbers of this VM's side of the connection on local
    `port`, from a capture of it: the last segment this VM sent carries its snd_nxt as seq
    and its rcv_nxt as ack (the kernel acknowledges what arrives even while the process is
    stopped, or has not yet accepted the connection)."""
    from scapy.all import IP, TCP, rdpcap

    last = None
    for p in rdpcap(pcap):
        if IP in p and TCP in p and p[TCP].sport == int(port):
            last = p
    if last is None:
        print("no segment from local port %s in %s" % (port, pcap), file=sys.stderr)
        return 1
    t = last[TCP]
    print("%s:%d %s:%d %d %d" % (last[IP].src, t.sport, last[IP].dst, t.dport, t.seq, t.ack))
    return 0


def main(argv):
    if len(argv) >= 2 and argv[0] == "reach":
        return reach(argv[1:])
    if len(argv) >= 6 and argv[0] == "forge":
        return forge(*argv[1:])
    if len(argv) == 5 and argv[0] == "knock":
        return knock(*argv[1:])
    if len(argv) == 3 and argv[0] == "seq":
        return seq(argv[1], argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
