#!/usr/bin/env python3
"""Traffic and metric helpers of gateway/bench/reapply.sh (python3 standard library only).

    flows.py server  --port P                        TCP echo server (runs until killed)
    flows.py probe   --host H --port P [--every S] [--timeout S]
        Starts a fresh TCP connect every S seconds (default 0.01) until one succeeds; prints the
        wall-clock time (epoch seconds) of the first success. Exit 1 on timeout.
    flows.py client  --host H --port P --conns N --ready F --stop F --mark F [--period S]
                     [--lost-after S] [--max-seconds S]
        Opens N connections; on each, a 16-byte request every S seconds (default 0.02), echoed by
        the server. Writes F(ready) once every connection has had a reply; stops when F(stop)
        exists (or after max-seconds) and prints a JSON summary. A connection is lost on an
        error, a reset, an EOF, or a request without its reply for lost-after seconds (default 2).
        F(mark) holds the epoch time of the edit; the summary splits the waits for replies
        (stalls) into before and after it.
    flows.py metrics --url URL                       prints the reload/revocation counters (JSON)
    flows.py watch   --url URL --ready F [--every S] [--timeout S]
        Reads stockade_gateway_rules_reloads_total{result="ok"|"error"}, writes F, then scrapes
        every S seconds (default 0.02) until either grows; prints JSON with the epoch time of the
        first scrape that showed it.
"""

import argparse
import asyncio
import json
import os
import socket
import sys
import time
import urllib.request

MSG = 16


# --------------------------------------------------------------------------------------------
# server


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.tr = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        self.tr.write(data)


async def server(a):
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(Echo, host=a.bind, port=a.port, backlog=4096,
                                   reuse_address=True)
    print(f"listening on {a.bind}:{a.port}", file=sys.stderr, flush=True)
    async with srv:
        await srv.serve_forever()


# --------------------------------------------------------------------------------------------
# probe


async def probe(a):
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    tasks = set()

    async def attempt():
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(a.host, a.port), 3.0)
        except (OSError, asyncio.TimeoutError):
            return
        if not done.done():
            done.set_result(time.time())
        w.close()

    deadline = loop.time() + a.timeout
    while not done.done() and loop.time() < deadline:
        t = asyncio.create_task(attempt())
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        try:
            await asyncio.wait_for(asyncio.shield(done), a.every)
        except asyncio.TimeoutError:
            pass
    for t in list(tasks):
        t.cancel()
    if not done.done():
        print("probe: no connection within the timeout", file=sys.stderr)
        return 1
    print(f"{done.result():.6f}")
    return 0


# --------------------------------------------------------------------------------------------
# client


class Conn(asyncio.Protocol):
    def __init__(self, st, idx):
        self.st, self.idx = st, idx
        self.tr = None
        self.buf = b""
        self.sent_at = None  # loop time of the outstanding request
        self.replies = 0
        self.dead = False

    def connection_made(self, transport):
        self.tr = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self):
        if self.dead or self.st.stopping:
            return
        self.sent_at = self.st.loop.time()
        self.tr.write(self.st.payload)

    def data_received(self, data):
        self.buf += data
        while len(self.buf) >= MSG and self.sent_at is not None:
            self.buf = self.buf[MSG:]
            now = self.st.loop.time()
            self.st.samples.append((self.sent_at, now - self.sent_at))
            self.replies += 1
            nxt = max(self.sent_at + self.st.period, now)
            self.sent_at = None
            if self.replies == 1:
                self.st.first_reply(self)
            self.st.loop.call_at(nxt, self.send)

    def eof_received(self):
        self.st.lose(self, "eof")
        return False

    def connection_lost(self, exc):
        if exc is None:
            self.st.lose(self, "closed")
        elif isinstance(exc, ConnectionResetError):
            self.st.lose(self, "reset")
        else:
            self.st.lose(self, type(exc).__name__)


class ClientState:
    def __init__(self, a, loop):
        self.a, self.loop = a, loop
        self.period = a.period
        self.payload = b"x" * MSG
        self.stopping = False
        self.samples = []  # (loop time sent, seconds until the reply)
        self.losses = []  # (loop time, reason, replies before)
        self.conns = []
        self.answered = 0
        self.all_answered = loop.create_future()
        # loop time -> epoch: epoch = loop time + offset
        self.offset = time.time() - loop.time()

    def first_reply(self, c):
        self.answered += 1
        if self.answered == self.a.conns and not self.all_answered.done():
            self.all_answered.set_result(True)

    def lose(self, c, reason):
        if c.dead or self.stopping:
            return
        c.dead = True
        self.losses.append((self.loop.time(), reason, c.replies))
        if c.tr is not None:
            c.tr.abort()


async def client(a):
    loop = asyncio.get_running_loop()
    st = ClientState(a, loop)
    started = loop.time()

    async def connect(i):
        c = Conn(st, i)
        await asyncio.wait_for(loop.create_connection(lambda: c, a.host, a.port), 10.0)
        st.conns.append(c)
        # Spread the connections over one period so requests do not come in bursts.
        loop.call_later(a.period * i / a.conns, c.send)

    try:
        for lo in range(0, a.conns, 50):
            await asyncio.gather(*(connect(i) for i in range(lo, min(lo + 50, a.conns))))
        await asyncio.wait_for(asyncio.shield(st.all_answered), 10.0)
    except (OSError, asyncio.TimeoutError) as e:
        print(json.dumps({"error": f"setup: {type(e).__name__}: {e}",
                          "connected": len(st.conns), "answered": st.answered}))
        return 2
    if st.losses:
        print(json.dumps({"error": "connections lost during setup", "lost": len(st.losses)}))
        return 2
    ready_at = loop.time()
    with open(a.ready + ".tmp", "w") as f:
        f.write(f"{ready_at + st.offset:.6f}\n")
    os.rename(a.ready + ".tmp", a.ready)

    # Loss by silence: a request without its reply for lost-after seconds.
    while not os.path.exists(a.stop) and loop.time() - started < a.max_seconds:
        now = loop.time()
        for c in st.conns:
            if not c.dead and c.sent_at is not None and now - c.sent_at > a.lost_after:
                st.lose(c, "timeout")
        await asyncio.sleep(0.05)
    stopped_at = loop.time()
    st.stopping = True
    for c in st.conns:
        if c.tr is not None:
            c.tr.abort()

    mark = None
    try:
        with open(a.mark) as f:
            mark = float(f.read().strip()) - st.offset  # as loop time
    except (OSError, ValueError):
        pass
    before = [s for s in st.samples if mark is None or s[0] + s[1] < mark]
    after = [s for s in st.samples if mark is not None and s[0] + s[1] >= mark]

    def worst(samples):
        if not samples:
            return None, None
        s = max(samples, key=lambda x: x[1])
        rel = None if mark is None else round((s[0] - mark) * 1000, 1)
        return round(s[1] * 1000, 1), rel

    wb, _ = worst(before)
    wa, wa_at = worst(after)
    reasons = {}
    for _, r, _ in st.losses:
        reasons[r] = reasons.get(r, 0) + 1
    loss_rel = [round((t - mark) * 1000) for t, _, _ in st.losses] if mark is not None else []
    print(json.dumps({
        "conns": a.conns,
        "lost": len(st.losses),
        "lost_reasons": reasons,
        "first_loss_ms_after_mark": min(loss_rel) if loss_rel else None,
        "last_loss_ms_after_mark": max(loss_rel) if loss_rel else None,
        "replies": len(st.samples),
        "replies_after_mark": len(after),
        "seconds": round(stopped_at - ready_at, 2),
        "seconds_after_mark": None if mark is None else round(stopped_at - mark, 2),
        "stall_before_ms": wb,
        "stall_after_ms": wa,
        "stall_after_at_ms": wa_at,
    }))
    return 0


# --------------------------------------------------------------------------------------------
# metrics

OK = 'stockade_gateway_rules_reloads_total{result="ok"}'
ERR = 'stockade_gateway_rules_reloads_total{result="error"}'
REVOKED = "stockade_gateway_flows_revoked_total"


# Never through a proxy from the environment: the endpoint is the namespace's own loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def scrape(url, timeout=30.0):
    body = OPENER.open(url, timeout=timeout).read().decode()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = v
    return {"ok": int(float(out.get(OK, "nan"))), "error": int(float(out.get(ERR, "nan"))),
            "revoked": int(float(out.get(REVOKED, "nan")))}


def metrics(a):
    print(json.dumps(scrape(a.url)))
    return 0


def watch(a):
    base = scrape(a.url)
    with open(a.ready + ".tmp", "w") as f:
        f.write(json.dumps(base) + "\n")
    os.rename(a.ready + ".tmp", a.ready)
    deadline = time.monotonic() + a.timeout
    scrapes, longest = 0, 0.0
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        try:
            now = scrape(a.url, timeout=max(1.0, deadline - time.monotonic()))
        except OSError as e:
            print(f"watch: scrape failed: {e}", file=sys.stderr)
            time.sleep(a.every)
            continue
        scrapes += 1
        longest = max(longest, time.monotonic() - t0)
        if now["ok"] > base["ok"] or now["error"] > base["error"]:
            print(json.dumps({"seen": round(time.time(), 6),
                              "result": "ok" if now["ok"] > base["ok"] else "error",
                              "before": base, "after": now, "scrapes": scrapes,
                              "longest_scrape_ms": round(longest * 1000)}))
            return 0
        time.sleep(max(0.0, a.every - (time.monotonic() - t0)))
    print(json.dumps({"seen": None, "result": "timeout", "before": base, "scrapes": scrapes,
                      "longest_scrape_ms": round(longest * 1000)}))
    return 1


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--bind", default="0.0.0.0")
    s.add_argument("--port", type=int, required=True)
    s = sub.add_parser("probe")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--every", type=float, default=0.01)
    s.add_argument("--timeout", type=float, default=60.0)
    s = sub.add_parser("client")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--conns", type=int, default=200)
    s.add_argument("--period", type=float, default=0.02)
    s.add_argument("--lost-after", type=float, default=2.0)
    s.add_argument("--ready", required=True)
    s.add_argument("--stop", required=True)
    s.add_argument("--mark", required=True)
    s.add_argument("--max-seconds", type=float, default=600.0)
    s = sub.add_parser("metrics")
    s.add_argument("--url", required=True)
    s = sub.add_parser("watch")
    s.add_argument("--url", required=True)
    s.add_argument("--ready", required=True)
    s.add_argument("--every", type=float, default=0.02)
    s.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args()
    if a.cmd == "server":
        return asyncio.run(server(a))
    if a.cmd == "probe":
        return asyncio.run(probe(a))
    if a.cmd == "client":
        return asyncio.run(client(a))
    if a.cmd == "metrics":
        return metrics(a)
    return watch(a)


if __name__ == "__main__":
    sys.exit(main())
