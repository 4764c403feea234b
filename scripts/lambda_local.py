"""A Lambda Runtime API on 127.0.0.1 that runs a `provided.al2023` function binary (`bootstrap`)
locally, as Lambda would: the function polls /runtime/invocation/next, each invoke hands it one
event and returns its response or error. Used by scripts/demo and scripts/bench.

    python scripts/lambda_local.py BINARY EVENT.json [EVENT.json...]

prints one line per event: {"ok": true|false, "body": ..., "seconds": ...}. The function gets this
process's environment (KILN_QUEUE, KILN_BUCKET, AWS_*) plus the Lambda variables it needs.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BASE = "/2018-06-01/runtime"


class _QuietServer(ThreadingHTTPServer):
    """The runtime API server. The function's long poll is cut when the function (or the demo)
    stops: a reset connection is the end of a request, not an error worth a traceback."""

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class LocalLambda:
    def __init__(self, binary: str, env: dict | None = None, log=None):
        self.events: queue.Queue = queue.Queue()
        self.results: dict[str, queue.Queue] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _reply(self, code: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path != f"{BASE}/invocation/next":
                    return self._reply(404, b"{}")
                request_id, event = outer.events.get()
                deadline = int(time.time() * 1000) + 300_000
                self._reply(200, json.dumps(event).encode(), {
                    "Lambda-Runtime-Aws-Request-Id": request_id,
                    "Lambda-Runtime-Deadline-Ms": str(deadline),
                    "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:us-east-1:123456789012:function:kiln-trigger",
                    "Lambda-Runtime-Trace-Id": "Root=1-00000000-000000000000000000000000",
                })

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rest = self.path[len(f"{BASE}/invocation/"):] if self.path.startswith(f"{BASE}/invocation/") else ""
                for suffix, ok in (("/response", True), ("/error", False)):
                    if rest.endswith(suffix):
                        with outer.lock:
                            q = outer.results.get(rest[: -len(suffix)])
                        if q is not None:
                            q.put((ok, json.loads(body or b"null")))
                self._reply(202, b'{"status":"OK"}')

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.update({
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self.server.server_address[1]}",
            "AWS_LAMBDA_FUNCTION_NAME": "kiln-trigger",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_STREAM_NAME": "local",
            "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/kiln-trigger",
        })
        self.started = time.monotonic()
        self.proc = subprocess.Popen([binary], env=full_env, stdout=subprocess.DEVNULL,
                                     stderr=log or subprocess.DEVNULL)

    def invoke(self, event, timeout: float = 120.0):
        """(ok, body, seconds) for one event."""
        request_id = str(uuid.uuid4())
        q: queue.Queue = queue.Queue()
        with self.lock:
            self.results[request_id] = q
        t0 = time.monotonic()
        self.events.put((request_id, event))
        ok, body = q.get(timeout=timeout)
        return ok, body, time.monotonic() - t0

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.server.shutdown()


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    fn = LocalLambda(sys.argv[1], log=sys.stderr)
    try:
        for path in sys.argv[2:]:
            with open(path, encoding="utf-8") as f:
                ok, body, secs = fn.invoke(json.load(f))
            print(json.dumps({"ok": ok, "body": body, "seconds": round(secs, 4)}), flush=True)
    finally:
        fn.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
