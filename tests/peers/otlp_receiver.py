#!/usr/bin/env python3
"""An OTLP/HTTP logs receiver for the tests: it decodes each POST with the official
OpenTelemetry protobuf definitions (the `opentelemetry-proto` package, which `cargo xtask
bootstrap --tests` installs into target/peers-python; put that on PYTHONPATH) and writes every
log record as one JSON line to --out:

  {"request": N, "answered": STATUS, "client": PORT, "method", "path", "content_type",
   "resource": {key: value}, "scope": {"name", "version", "attributes"},
   "time_unix_nano", "observed_time_unix_nano", "severity_number", "severity_text",
   "event_name", "body": value, "attributes": [[key, value], ...],
   "dropped_attributes_count", "flags"}

where each value keeps its protobuf kind: {"string_value": "x"}, {"int_value": 1},
{"double_value": 0.5}, {"bool_value": true}, {"array_value": [value, ...]},
{"kvlist_value": [[key, value], ...]}, {"bytes_value": "<hex>"}, or {} when unset.

It prints {"port": P} on stdout once bound (127.0.0.1, port 0). It answers 200 with an empty
ExportLogsServiceResponse, or --fail-status (503) to the first --fail-first requests, whose
records are still written with that status. With --listen-on-stdin it binds but does not
listen (connections are refused) until a line comes on stdin. A body that does not decode is
written as {"request": N, "error": "..."} and answered 400.
"""

import argparse
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
except ImportError as e:
    sys.exit(
        f"otlp_receiver: cannot import opentelemetry-proto ({e}): run `cargo xtask bootstrap "
        "--tests` and put target/peers-python on PYTHONPATH"
    )


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return {}
    if kind == "array_value":
        return {kind: [value(x) for x in v.array_value.values]}
    if kind == "kvlist_value":
        return {kind: pairs(v.kvlist_value.values)}
    if kind == "bytes_value":
        return {kind: v.bytes_value.hex()}
    return {kind: getattr(v, kind)}


def pairs(kvs):
    return [[kv.key, value(kv.value)] for kv in kvs]


class State:
    def __init__(self, out, fail_first, fail_status):
        self.out = out
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.requests = 0
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        state = self.server.state
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with state.lock:
            n = state.requests
            state.requests += 1
            status = state.fail_status if n < state.fail_first else 200
            lines = []
            try:
                req = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
            except Exception as e:  # noqa: BLE001 - any decode failure is the answer
                lines.append({"request": n, "error": f"{type(e).__name__}: {e}"})
                status = 400
                req = logs_service_pb2.ExportLogsServiceRequest()
            common = {
                "request": n,
                "answered": status,
                "client": self.client_address[1],
                "method": self.command,
                "path": self.path,
                "content_type": self.headers.get("Content-Type"),
            }
            for rl in req.resource_logs:
                resource = dict(pairs(rl.resource.attributes))
                for sl in rl.scope_logs:
                    scope = {
                        "name": sl.scope.name,
                        "version": sl.scope.version,
                        "attributes": pairs(sl.scope.attributes),
                    }
                    for r in sl.log_records:
                        lines.append(
                            dict(
                                common,
                                resource=resource,
                                scope=scope,
                                time_unix_nano=r.time_unix_nano,
                                observed_time_unix_nano=r.observed_time_unix_nano,
                                severity_number=r.severity_number,
                                severity_text=r.severity_text,
                                event_name=r.event_name,
                                body=value(r.body) if r.HasField("body") else None,
                                attributes=pairs(r.attributes),
                                dropped_attributes_count=r.dropped_attributes_count,
                                flags=r.flags,
                            )
                        )
            state.out.write("".join(json.dumps(line) + "\n" for line in lines))
            state.out.flush()
        answer = (
            logs_service_pb2.ExportLogsServiceResponse().SerializeToString()
            if status == 200
            else b"refused by the test receiver\n"
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf" if status == 200 else "text/plain")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--fail-status", type=int, default=503)
    p.add_argument("--listen-on-stdin", action="store_true")
    args = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.daemon_threads = True
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.server_bind()
    server.state = State(open(args.out, "a", encoding="utf-8"), args.fail_first, args.fail_status)
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    if args.listen_on_stdin:
        sys.stdin.readline()
    server.server_activate()
    print(json.dumps({"listening": True}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
