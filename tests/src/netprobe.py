"""Bounded network probes for the lab tests, run inside a host's namespace.

    python3 netprobe.py probe TIMEOUT SPEC...     SPEC: tcp:ADDR:PORT | udp:ADDR:PORT | icmp:ADDR
    python3 netprobe.py forge TIMEOUT IFACE SRC_MAC DST_MAC SRC_IP DST_IP DST_PORT
    python3 netprobe.py sniff IFACE SECONDS STOP_FILE
    python3 netprobe.py https TIMEOUT ADDR PORT PATH CA CERT KEY

`probe` runs every attempt at once and prints one line per SPEC: `SPEC OUTCOME`, where OUTCOME
is `reached` (a TCP connection / a UDP or ICMP answer), `timeout` (nothing came back, what a
gateway drop looks like), `refused` (a TCP reset, an ICMP error: something did come back) or
`unreachable:<error>` (the local stack gave up, e.g. no ARP answer).

`forge` writes raw Ethernet frames with a forged IPv4 source (TCP SYN, UDP, ICMP echo, with
correct checksums so that only the address is wrong), then listens on IFACE for TIMEOUT
seconds for any IPv4 frame from DST_IP; prints `sent N` and `answers M`.

`sniff` counts the IPv4 frames arriving on IFACE by source MAC and source address until
SECONDS pass or STOP_FILE exists; prints `ready` once listening, then one JSON object.

`https` GETs PATH over TLS with a client certificate and prints the body (exit 0 on HTTP 200);
exit 3 with `timeout` if nothing came back, 4 on any other failure.
"""

import errno
import json
import os
import random
import select
import socket
import ssl
import struct
import sys
import threading
import time

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800


def outcome_of(err):
    if isinstance(err, socket.timeout):
        return "timeout"
    if isinstance(err, (ConnectionRefusedError, ConnectionResetError)):
        return "refused"
    if isinstance(err, OSError) and err.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable:" + os.strerror(err.errno)
    return "unreachable:" + repr(err)


def probe_tcp(addr, port, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((addr, port))
        return "reached"
    except Exception as e:  # noqa: BLE001 - every outcome is reported
        return outcome_of(e)
    finally:
        s.close()


def probe_udp(addr, port, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.connect((addr, port))
        s.send(b"stockade-test udp probe")
        deadline = time.monotonic() + timeout
        # An ICMP port unreachable comes back as ECONNREFUSED on the connected socket; send
        # again after a moment so that an early error is not missed.
        sent_again = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            s.settimeout(min(left, 0.5))
            try:
                s.recv(2048)
                return "reached"
            except socket.timeout:
                if not sent_again:
                    s.send(b"stockade-test udp probe")
                    sent_again = True
                continue
    except Exception as e:  # noqa: BLE001
        return outcome_of(e)
    finally:
        s.close()


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return (~s) & 0xFFFF


def probe_icmp(addr, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = (os.getpid() ^ random.randint(0, 0xFFFF)) & 0xFFFF
    try:
        payload = b"stockade-test icmp probe"
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
        pkt = struct.pack("!BBHHH", 8, 0, checksum(hdr + payload), ident, 1) + payload
        s.sendto(pkt, (addr, 0))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            r, _, _ = select.select([s], [], [], left)
            if not r:
                return "timeout"
            data, (src, _) = s.recvfrom(2048)
            ihl = (data[0] & 0x0F) * 4
            icmp_type = data[ihl]
            if icmp_type == 0 and src == addr:
                rid = struct.unpack("!H", data[ihl + 4 : ihl + 6])[0]
                if rid == ident:
                    return "reached"
            elif icmp_type in (3, 11):
                # An error quoting our echo toward addr.
                inner = data[ihl + 8 :]
                if len(inner) >= 20 and socket.inet_ntoa(inner[16:20]) == addr:
                    return "refused"
    except Exception as e:  # noqa: BLE001
        return outcome_of(e)
    finally:
        s.close()


def run_probe(spec, timeout):
    kind, _, rest = spec.partition(":")
    if kind == "tcp":
        a, p = rest.rsplit(":", 1)
        return probe_tcp(a, int(p), timeout)
    if kind == "udp":
        a, p = rest.rsplit(":", 1)
        return probe_udp(a, int(p), timeout)
    if kind == "icmp":
        return probe_icmp(rest, timeout)
    return "bad-spec"


def cmd_probe(args):
    timeout = float(args[0])
    specs = args[1:]
    results = {}

    def work(spec):
        results[spec] = run_probe(spec, timeout)

    threads = [threading.Thread(target=work, args=(s,)) for s in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in specs:
        print(s, results[s])


def mac_bytes(mac):
    return bytes(int(x, 16) for x in mac.split(":"))


def ipv4(src, dst, proto, l4, ident):
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, 0x4000, 64, proto, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + l4


def l4_checksum(src, dst, proto, seg):
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, len(seg))
    return checksum(pseudo + seg)


def cmd_forge(args):
    timeout = float(args[0])
    iface, src_mac, dst_mac, src_ip, dst_ip, dport = args[1:7]
    dport = int(dport)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    eth = mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", ETH_P_IP)
    frames = []
    sport = random.randint(20000, 60000)
    # TCP SYN
    tcp = struct.pack("!HHIIBBHHH", sport, dport, random.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
    c = l4_checksum(src_ip, dst_ip, 6, tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    frames.append(ipv4(src_ip, dst_ip, 6, tcp, random.getrandbits(16)))
    # UDP datagram with data
    body = b"forged by a client"
    udp = struct.pack("!HHHH", sport, 9999, 8 + len(body), 0) + body
    c = l4_checksum(src_ip, dst_ip, 17, udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    frames.append(ipv4(src_ip, dst_ip, 17, udp, random.getrandbits(16)))
    # ICMP echo
    payload = b"forged echo"
    icmp = struct.pack("!BBHHH", 8, 0, 0, sport, 1) + payload
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    frames.append(ipv4(src_ip, dst_ip, 1, icmp, random.getrandbits(16)))
    sent = 0
    for _ in range(2):
        for f in frames:
            s.send(eth + f)
            sent += 1
        time.sleep(0.2)
    answers = 0
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([s], [], [], left)
        if not r:
            break
        data, addr = s.recvfrom(65535)
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        if len(data) >= 34 and struct.unpack("!H", data[12:14])[0] == ETH_P_IP:
            if socket.inet_ntoa(data[26:30]) == dst_ip:
                answers += 1
    print("sent", sent)
    print("answers", answers)


def cmd_sniff(args):
    iface, seconds, stop = args[0], float(args[1]), args[2]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    by_mac = {}
    by_src = {}
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not os.path.exists(stop):
        r, _, _ = select.select([s], [], [], 0.1)
        if not r:
            continue
        data, addr = s.recvfrom(65535)
        if addr[2] == socket.PACKET_OUTGOING or len(data) < 34:
            continue
        if struct.unpack("!H", data[12:14])[0] != ETH_P_IP:
            continue
        mac = ":".join("%02x" % b for b in data[6:12])
        src = socket.inet_ntoa(data[26:30])
        by_mac[mac] = by_mac.get(mac, 0) + 1
        by_src[src] = by_src.get(src, 0) + 1
    print(json.dumps({"by_mac": by_mac, "by_src": by_src}), flush=True)


def cmd_https(args):
    timeout, addr, port, path, ca, cert, key = args
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    try:
        raw = socket.create_connection((addr, int(port)), timeout=float(timeout))
        with ctx.wrap_socket(raw, server_hostname=addr) as s:
            req = "GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n" % (path, addr, port)
            s.sendall(req.encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except socket.timeout:
        print("timeout")
        sys.exit(3)
    except Exception as e:  # noqa: BLE001
        print("failed:", repr(e))
        sys.exit(4)
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 200 " not in status + " ":
        print("failed:", status)
        sys.exit(4)
    if b"transfer-encoding: chunked" in head.lower():
        out = b""
        while body:
            size_line, _, rest = body.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out += rest[:size]
            body = rest[size + 2 :]
        body = out
    sys.stdout.write(body.decode(errors="replace"))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"probe": cmd_probe, "forge": cmd_forge, "sniff": cmd_sniff, "https": cmd_https}[cmd](args)


if __name__ == "__main__":
    main()
