#!/usr/bin/python3
"""A pre-fork HTTP server for observer's attribution tests.

The parent binds 127.0.0.1 (port 0), listens, and forks CHILDREN children; the parent never
accepts. Each child accepts PER_CHILD connections, one at a time, then stops accepting (so
that 2 × PER_CHILD sequential connections are served by every child), and waits to be killed.

Usage: prefork_http.py CHILDREN PER_CHILD BODY_BYTES

Lines on stdout, one JSON object each (each line is written with one write(), below
PIPE_BUF, so lines of different processes never interleave):
  {"listening": PORT, "pid": PARENT_PID}                once the parent listens
  {"child": PID}                                        each child, once forked
  {"accepted": PEER_PORT, "pid": CHILD_PID}             a child accepted a connection, before
                                                        it touches the socket again
  {"closed": PEER_PORT, "pid": CHILD_PID, "request": N} the child closed it; N request bytes

Per connection the child reads the request (up to its blank line), answers HTTP/1.1 200 with
a keep-alive response of BODY_BYTES bytes, waits for the client's FIN and closes: the client
closes first. A connection reset before the request arrives is just closed.

Every process dies with its parent (PR_SET_PDEATHSIG), and the parent with its stdin (the
test closing it or dying).
"""
import ctypes
import json
import os
import signal
import socket
import sys

PR_SET_PDEATHSIG = 1


def say(**fields):
    os.write(1, (json.dumps(fields) + "\n").encode())


def die_with_parent():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")


def serve(conn, peer_port, body):
    request = b""
    try:
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(65536)
            if not chunk:
                break
            request += chunk
        if b"\r\n\r\n" in request:
            head = (
                "HTTP/1.1 200 OK\r\n"
                "Content-Type: application/octet-stream\r\n"
                f"Content-Length: {len(body)}\r\n"
                "\r\n"
            ).encode()
            conn.sendall(head + body)
            # Keep-alive: the client closes first; its FIN ends the wait.
            while conn.recv(65536):
                pass
    except ConnectionResetError:
        pass
    conn.close()
    say(closed=peer_port, pid=os.getpid(), request=len(request))


def child(listener, per_child, body):
    die_with_parent()
    say(child=os.getpid())
    for _ in range(per_child):
        conn, peer = listener.accept()
        say(accepted=peer[1], pid=os.getpid())
        serve(conn, peer[1], body)
    listener.close()
    while True:
        signal.pause()


def main():
    children, per_child, body_bytes = (int(a) for a in sys.argv[1:4])
    body = b"b" * body_bytes
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    say(listening=listener.getsockname()[1], pid=os.getpid())
    for _ in range(children):
        if os.fork() == 0:
            try:
                child(listener, per_child, body)
            finally:
                os._exit(1)
    # The parent never accepts; it lives until the test closes its stdin. The children die
    # with it.
    sys.stdin.read()


if __name__ == "__main__":
    main()
