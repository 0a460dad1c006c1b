#!/usr/bin/env python3
"""Many loopback connections for the `observer top` load tests, driven over stdin/stdout.

Usage: hold_and_churn.py HOLD. It listens on 127.0.0.1 (port 0), opens HOLD connections to
itself and keeps both ends open, then prints `held PORT`. Each stdin line `churn N RATE` then
makes N short connections, one after another and at most RATE a second (connect, 1 byte each
way, the client closes first, then the server), and prints `churned N`. End of stdin closes everything and exits; until
then every socket, the listener included, stays open, so the only connections that close are
the churned ones.
"""

import resource
import socket
import sys
import threading
import time

hold = int(sys.argv[1])
files = 2 * hold + 256
resource.setrlimit(resource.RLIMIT_NOFILE, (files, max(files, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
port = listener.getsockname()[1]

held = []


def accept(n):
    for _ in range(n):
        held.append(listener.accept()[0])


acceptor = threading.Thread(target=accept, args=(hold,))
acceptor.start()
for _ in range(hold):
    held.append(socket.create_connection(("127.0.0.1", port)))
acceptor.join()
print("held", port, flush=True)


def serve(n):
    for _ in range(n):
        conn, _ = listener.accept()
        conn.recv(1)
        conn.sendall(b"y")
        conn.recv(1)  # the client's FIN
        conn.close()


for line in sys.stdin:
    n, rate = (int(word) for word in line.split()[1:3])
    server = threading.Thread(target=serve, args=(n,))
    server.start()
    start = time.monotonic()
    for i in range(n):
        ahead = start + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall(b"x")
        c.recv(1)
        c.close()
    server.join()
    print("churned", n, flush=True)
