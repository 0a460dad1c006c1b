#!/usr/bin/env python3
"""A TLS peer for observer's tests, on Python's ssl module (OpenSSL).

server: binds 127.0.0.1:0, prints {"port": N}, then for each connection: handshake, read one
        line, answer "reply <line>", close. Runs until killed.
client: optionally waits for a line on stdin, connects, handshakes, sends --send and a newline,
        reads the reply, and prints {"ok": true, "version", "cipher", "alpn", "pid", "reply"}
        or {"ok": false, "error": "..."}.
"""
import argparse
import json
import os
import socket
import ssl
import sys

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def context(args, server):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    if server:
        ctx.load_cert_chain(args.cert, args.key)
    else:
        ctx.load_verify_locations(args.ca)
    if args.min:
        ctx.minimum_version = VERSIONS[args.min]
    if args.max:
        ctx.maximum_version = VERSIONS[args.max]
    if args.alpn:
        ctx.set_alpn_protocols(args.alpn.split(","))
    return ctx


def serve(args):
    ctx = context(args, True)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print(json.dumps({"port": listener.getsockname()[1], "pid": os.getpid()}), flush=True)
    while True:
        conn, _ = listener.accept()
        try:
            tls = ctx.wrap_socket(conn, server_side=True)
            line = tls.makefile("rb").readline()
            tls.sendall(b"reply " + line)
            tls.close()
        except Exception:  # a failed handshake must not end the server
            conn.close()


def connect(args):
    if args.wait_stdin:
        sys.stdin.readline()
    ctx = context(args, False)
    sock = socket.create_connection(("127.0.0.1", args.port))
    try:
        tls = ctx.wrap_socket(sock, server_hostname=args.sni)
    except (ssl.SSLError, OSError) as e:
        print(json.dumps({"ok": False, "error": str(e), "pid": os.getpid()}), flush=True)
        return
    tls.sendall(args.send.encode() + b"\n")
    reply = tls.makefile("rb").readline().decode().strip()
    print(json.dumps({
        "ok": True,
        "version": tls.version(),
        "cipher": tls.cipher()[0],
        "alpn": tls.selected_alpn_protocol(),
        "pid": os.getpid(),
        "reply": reply,
    }), flush=True)
    tls.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["server", "client"])
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--ca")
    p.add_argument("--port", type=int)
    p.add_argument("--sni", default="tls.test")
    p.add_argument("--min")
    p.add_argument("--max")
    p.add_argument("--alpn")
    p.add_argument("--send", default="hello")
    p.add_argument("--wait-stdin", action="store_true")
    args = p.parse_args()
    serve(args) if args.mode == "server" else connect(args)


if __name__ == "__main__":
    main()
