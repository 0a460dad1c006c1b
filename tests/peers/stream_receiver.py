"""A consumer of observer's network outputs: listens on tcp:HOST:PORT or unix:PATH, accepts
one connection and appends all it reads to FILE until the stream ends.

With --hold it reads nothing until a line arrives on stdin, so that the sender's window and
buffers fill. Says `listening`, `accepted` and `eof BYTES` on stdout as they happen.
"""

import socket
import sys


def main():
    args = [a for a in sys.argv[1:] if a != "--hold"]
    hold = "--hold" in sys.argv[1:]
    where, out = args
    kind, addr = where.split(":", 1)
    if kind == "tcp":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        host, port = addr.rsplit(":", 1)
        listener.bind((host, int(port)))
    else:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(addr)
    listener.listen(1)
    print("listening", flush=True)
    conn, _ = listener.accept()
    print("accepted", flush=True)
    if hold:
        sys.stdin.readline()
    total = 0
    with open(out, "ab") as f:
        while True:
            data = conn.recv(1 << 16)
            if not data:
                break
            f.write(data)
            total += len(data)
    print(f"eof {total}", flush=True)


main()
