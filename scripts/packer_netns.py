#!/usr/bin/env python3
"""A network namespace in which Packer's amazon-chroot builder finds "its" EC2 instance.

Packer 1.6.6's AWS SDK asks 169.254.169.254 for the instance identity and ignores
AWS_EC2_METADATA_SERVICE_ENDPOINT. This makes a network namespace (`ip netns add`, a unique name)
whose loopback carries 169.254.169.254/32 and forwards, from inside it:

- 169.254.169.254:80 to one emulator host's IMDS (http://127.0.0.1:PORT on the machine's loopback),
- 127.0.0.1:PORT (the emulator's own address and port) to the emulator,

so `custom_endpoint_ec2 = "http://127.0.0.1:PORT"` works unchanged inside. Nothing is added to the
machine's own interfaces: the listening sockets are made while this thread is in the namespace
(setns), and a socket stays in the namespace it was made in; the thread then returns to the
machine's namespace, where each accepted connection is forwarded to the real address.

Only the network namespace is entered (`nsenter --net=...`, not `ip netns exec`, which also makes a
mount namespace): Packer mounts and chroots in the machine's real mount namespace, as on EC2.

Each forwarder can count what passes through it (EC2 query actions by `Action=`, IMDS requests by
method and path) without changing a byte.

    scripts/packer_netns.py run --endpoint http://127.0.0.1:PORT --imds http://127.0.0.1:IPORT \\
        [--calls FILE] -- packer build template.json

Library use (scripts/bench_packer.py): `with Namespace() as ns: ns.forward(...); ns.command(argv)`.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import http.client
import http.server
import json
import os
import secrets
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse

CLONE_NEWNET = 0x40000000
IMDS_ADDRESS = "169.254.169.254"
_LIBC = ctypes.CDLL(None, use_errno=True)
_SETNS_LOCK = threading.Lock()


def _setns(fd: int) -> None:
    if _LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")


def host_port(url: str) -> tuple[str, int]:
    u = urllib.parse.urlsplit(url)
    return u.hostname or "127.0.0.1", u.port or (443 if u.scheme == "https" else 80)


class Calls:
    """What a forwarder saw: request counts by label (`ec2 DescribeImages`, `imds GET /latest/...`)
    and their order."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.counts: collections.Counter = collections.Counter()
        self.order: list[tuple[float, str]] = []
        self.path: str | None = None

    def add(self, label: str) -> None:
        with self.lock:
            self.counts[label] += 1
            self.order.append((time.time(), label))
            if self.path:
                tmp = self.path + ".tmp"
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(self.snapshot(), f, indent=1)
                os.replace(tmp, self.path)

    def snapshot(self) -> dict:
        with self.lock:
            return {"counts": dict(self.counts), "order": [label for _, label in self.order],
                    "times": [t for t, _ in self.order]}

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.order.clear()


def _label(kind: str, method: str, target: str, body: bytes) -> str:
    path = target.split("?")[0]
    if kind == "imds":
        return f"imds {method} {path}"
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace")) if body else {}
    action = (form.get("Action") or query.get("Action") or [None])[0]
    return f"ec2 {action}" if action else f"http {method} {path}"


HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
              "proxy-authorization", "te", "trailers", "transfer-encoding", "upgrade"}


class HttpProxy:
    """An HTTP/1.1 proxy (keep-alive) on `listener`: each request goes to `imds` when its path is
    under /latest/ (and `imds` is given), otherwise to `upstream`; both connected from the
    machine's namespace. Every request is counted in `calls` (EC2 by its Action)."""

    def __init__(self, listener: socket.socket, upstream: tuple[str, int],
                 imds: tuple[str, int] | None, calls: Calls | None):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, fmt, *args):
                pass

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _proxy(self) -> None:
                body = self._body()
                to_imds = imds is not None and self.path.startswith("/latest/")
                target = imds if to_imds else upstream
                if calls is not None:
                    calls.add(_label("imds" if to_imds else "ec2", self.command, self.path, body))
                conns = self.__dict__.setdefault("_conns", {})
                for attempt in (0, 1):
                    conn = conns.get(target)
                    if conn is None:
                        conn = conns[target] = http.client.HTTPConnection(*target, timeout=300)
                    try:
                        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                        for k, v in self.headers.items():
                            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                                conn.putheader(k, v)
                        if body or self.command in ("POST", "PUT", "PATCH"):
                            conn.putheader("Content-Length", str(len(body)))
                        conn.endheaders(body or None)
                        resp = conn.getresponse()
                        data = resp.read()
                        break
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        conns.pop(target, None)
                        if attempt:
                            self.send_error(502, "upstream unreachable")
                            return
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def finish(self):
                super().finish()
                for conn in self.__dict__.get("_conns", {}).values():
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _proxy

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(listener.getsockname(), Handler, bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = listener
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.listener = listener

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _RequestTap:
    """Reads a copy of one connection's client-to-server bytes as HTTP/1.1 requests (keep-alive,
    Content-Length bodies) and records each; gives up quietly on anything else (chunked bodies)."""

    def __init__(self, kind: str, calls: Calls) -> None:
        self.kind, self.calls = kind, calls
        self.buf = b""
        self.head: bytes | None = None
        self.need = 0
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self.buf += data
        while True:
            if self.head is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > 1 << 16:
                        self.broken = True
                    return
                self.head, self.buf = self.buf[:end], self.buf[end + 4 :]
                lines = self.head.split(b"\r\n")
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    headers[k.strip().lower()] = v.strip()
                if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                    self._record(lines[0], b"")
                    self.broken = True
                    return
                self.need = int(headers.get(b"content-length", b"0") or 0)
            if len(self.buf) < self.need:
                return
            body, self.buf = self.buf[: self.need], self.buf[self.need :]
            self._record(self.head.split(b"\r\n")[0], body)
            self.head, self.need = None, 0

    def _record(self, request_line: bytes, body: bytes) -> None:
        parts = request_line.decode("latin-1").split(" ")
        method, target = (parts + ["", ""])[:2]
        self.calls.add(_label(self.kind, method, target, body))


def _pump(src: socket.socket, dst: socket.socket, tap: _RequestTap | None) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if tap is not None:
                try:
                    tap.feed(data)
                except Exception:  # counting never breaks forwarding
                    tap.broken = True
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


class Forwarder:
    """Accepts on `listener` (already bound, in whichever namespace) and forwards each connection's
    bytes to `target` (connected from the machine's namespace), counting its requests."""

    def __init__(self, listener: socket.socket, target: tuple[str, int], kind: str | None, calls: Calls | None):
        self.listener, self.target, self.kind, self.calls = listener, target, kind, calls
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tap = _RequestTap(self.kind, self.calls) if self.kind and self.calls else None
        back = threading.Thread(target=_pump, args=(upstream, client, None), daemon=True)
        back.start()
        _pump(client, upstream, tap)
        back.join()
        client.close()
        upstream.close()

    def close(self) -> None:
        self.stopped = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()


def listen_host(address: str = "127.0.0.1", port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    s.listen(128)
    return s


class Namespace:
    """A network namespace of our own: loopback up, 169.254.169.254/32 on it; removed on close."""

    def __init__(self, prefix: str = "kiln-packer") -> None:
        self.name = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.path = f"/run/netns/{self.name}"
        self.forwarders: list[Forwarder] = []
        self.made = False

    def __enter__(self) -> "Namespace":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        _ip("netns", "add", self.name)
        self.made = True
        _ip("-n", self.name, "link", "set", "lo", "up")
        _ip("-n", self.name, "addr", "add", f"{IMDS_ADDRESS}/32", "dev", "lo")

    def listen(self, address: str, port: int) -> socket.socket:
        """A listening socket made inside the namespace (this thread returns to its own after)."""
        with _SETNS_LOCK:
            home = os.open(f"/proc/thread-self/ns/net", os.O_RDONLY)
            target = os.open(self.path, os.O_RDONLY)
            try:
                _setns(target)
                try:
                    return listen_host(address, port)
                finally:
                    _setns(home)
            finally:
                os.close(target)
                os.close(home)

    def forward(self, inside: tuple[str, int], outside: tuple[str, int], kind: str | None = None,
                calls: Calls | None = None) -> Forwarder:
        f = Forwarder(self.listen(*inside), outside, kind, calls)
        self.forwarders.append(f)
        return f

    def proxy(self, inside: tuple[str, int], upstream: tuple[str, int], imds: tuple[str, int] | None,
              calls: Calls | None = None) -> HttpProxy:
        p = HttpProxy(self.listen(*inside), upstream, imds, calls)
        self.forwarders.append(p)
        return p

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run in this network namespace only (the machine's mount namespace stays)."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def close(self) -> None:
        for f in self.forwarders:
            f.close()
        self.forwarders.clear()
        if self.made:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
            self.made = False


def main() -> int:
    p = argparse.ArgumentParser(description="run a command (Packer) in a network namespace with the "
                                "emulator's endpoint and an emulated host's IMDS at 169.254.169.254")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--endpoint", required=True, help="the emulator, http://127.0.0.1:PORT")
    r.add_argument("--imds", required=True, help="the emulator host's IMDS, http://127.0.0.1:PORT")
    r.add_argument("--calls", help="write the EC2 and IMDS requests seen to this JSON file")
    r.add_argument("argv", nargs=argparse.REMAINDER)
    a = p.parse_args()
    argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
    if not argv:
        p.error("no command")
    if os.geteuid() != 0:
        sys.exit("packer_netns.py: needs root (ip netns, setns)")
    calls = Calls()
    calls.path = a.calls
    ns = Namespace()
    child = None

    def stop(signum, frame):
        if child is not None and child.poll() is None:
            child.send_signal(signum)
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, stop)
    try:
        ns.open()
        ep = host_port(a.endpoint)
        # Packer 1.6.6 sends its IMDS requests to custom_endpoint_ec2 too (the endpoint is set on
        # its whole AWS session): requests under /latest/ on the endpoint go to the host's IMDS.
        ns.proxy(ep, ep, host_port(a.imds), calls)
        ns.forward((IMDS_ADDRESS, 80), host_port(a.imds), "imds", calls)
        child = subprocess.Popen(ns.command(argv))
        return child.wait()
    finally:
        ns.close()


if __name__ == "__main__":
    sys.exit(main())
