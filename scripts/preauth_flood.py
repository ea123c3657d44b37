#!/usr/bin/env python3
"""Measures what unauthenticated connections cost a running gateway (docs/security.md).

Opens N connections to the gateway on loopback that never authenticate, holds them, and prints
the gateway's resident memory (VmRSS of --pid) before and while they are held:
  mqtt: each sends a CONNECT fixed header declaring a ~256 KB packet (10 f0 fe 0f) and nothing more
  http: each sends headers with Content-Length: 1048576, no Authorization, and one body byte
Usage: scripts/preauth_flood.py --pid PID --mqtt 127.0.0.1:1883 --http 127.0.0.1:8080 [-n 2000]
Loopback only; it stops by itself after --hold seconds.
"""
import argparse, resource, socket, time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def flood(addr, payload, n):
    host, port = addr.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("loopback addresses only")
    conns, refused = [], 0
    for _ in range(n):
        s = socket.socket()
        try:
            s.connect((host, int(port)))
            s.sendall(payload)
            conns.append(s)
        except OSError:
            refused += 1
            s.close()
    return conns, refused


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--mqtt")
    ap.add_argument("--http")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--hold", type=float, default=3.0)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, a.n + 256)), hard))
    cases = []
    if a.mqtt:
        cases.append(("mqtt", a.mqtt, bytes([0x10, 0xF0, 0xFE, 0x0F])))
    if a.http:
        cases.append(("http", a.http, b"POST /v1/events/apps/x HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{"))
    for name, addr, payload in cases:
        before = rss_kib(a.pid)
        conns, refused = flood(addr, payload, a.n)
        time.sleep(a.hold)  # hold them: the gateway has had time to read what each sent
        during = rss_kib(a.pid)
        waiting = answered = closed = 0
        for s in conns:
            s.setblocking(False)
            try:
                if s.recv(1):
                    answered += 1  # e.g. the HTTP 401
                else:
                    closed += 1
            except BlockingIOError:
                waiting += 1  # held open by the gateway, nothing answered yet
            except OSError:
                closed += 1
            s.close()
        print(f"{name}: {a.n} unauthenticated connections held {a.hold:.0f}s ({refused} refused at connect, "
              f"{answered} answered, {closed} closed by the gateway, {waiting} still waiting): "
              f"RSS {before/1024:.1f} MiB -> {during/1024:.1f} MiB (+{(during-before)/1024:.1f} MiB)")
        time.sleep(1)


if __name__ == "__main__":
    main()
