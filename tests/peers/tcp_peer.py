#!/usr/bin/python3
"""A scripted TCP endpoint for observer's integration tests.

The test drives it over stdin, one command per line, and reads one JSON reply per command
from stdout, so every socket call happens exactly when the test says, in a real process with
its own pid and comm.

Commands:
  name COMM                  set this process's comm (prctl PR_SET_NAME)
  listen FAMILY ADDR         bind port 0 and listen; reply {"port": P}
  freeport FAMILY ADDR       a port nobody listens on; reply {"port": P}
  accept                     accept one connection (it becomes the current socket)
  connect FAMILY ADDR PORT   connect (the new socket becomes current); reply {"local_port": P}
                             or {"error": "ECONNREFUSED"}
  send N                     send N bytes
  recv N                     receive exactly N bytes
  wait_eof                   read until the peer's FIN
  shutdown_wr                shutdown(SHUT_WR)
  linger0                    SO_LINGER {on, 0}: close() will send a RST
  close                      close the current socket
  close_listener             close the listening socket
  exit
"""
import ctypes
import errno
import json
import os
import socket
import struct
import sys

FAMILIES = {"4": socket.AF_INET, "6": socket.AF_INET6}


def reply(**fields):
    fields.setdefault("ok", True)
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def set_comm(name):
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_NAME = 15
    if libc.prctl(PR_SET_NAME, name.encode(), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")


def main():
    listener = None
    conn = None
    reply(pid=os.getpid())
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd, args = words[0], words[1:]
        try:
            if cmd == "name":
                set_comm(args[0])
                reply()
            elif cmd == "listen":
                listener = socket.socket(FAMILIES[args[0]], socket.SOCK_STREAM)
                listener.bind((args[1], 0))
                listener.listen(16)
                reply(port=listener.getsockname()[1])
            elif cmd == "freeport":
                s = socket.socket(FAMILIES[args[0]], socket.SOCK_STREAM)
                s.bind((args[1], 0))
                port = s.getsockname()[1]
                s.close()
                reply(port=port)
            elif cmd == "accept":
                conn, peer = listener.accept()
                reply(peer_port=peer[1], local_port=conn.getsockname()[1])
            elif cmd == "connect":
                conn = socket.socket(FAMILIES[args[0]], socket.SOCK_STREAM)
                try:
                    conn.connect((args[1], int(args[2])))
                except OSError as e:
                    reply(ok=False, error=errno.errorcode.get(e.errno, str(e.errno)))
                    continue
                reply(local_port=conn.getsockname()[1])
            elif cmd == "send":
                conn.sendall(b"x" * int(args[0]))
                reply()
            elif cmd == "recv":
                want, got = int(args[0]), 0
                while got < want:
                    chunk = conn.recv(want - got)
                    if not chunk:
                        break
                    got += len(chunk)
                reply(got=got)
            elif cmd == "wait_eof":
                extra = 0
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    extra += len(chunk)
                reply(extra=extra)
            elif cmd == "shutdown_wr":
                conn.shutdown(socket.SHUT_WR)
                reply()
            elif cmd == "retrans":
                # struct tcp_info's tcpi_total_retrans (offset 100): the kernel's own count.
                info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
                reply(total_retrans=struct.unpack_from("I", info, 100)[0])
            elif cmd == "linger0":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                reply()
            elif cmd == "close":
                conn.close()
                conn = None
                reply()
            elif cmd == "close_listener":
                listener.close()
                listener = None
                reply()
            elif cmd == "exit":
                reply()
                return
            else:
                reply(ok=False, error="unknown command " + cmd)
        except OSError as e:
            reply(ok=False, error=errno.errorcode.get(e.errno, str(e)))


if __name__ == "__main__":
    main()
