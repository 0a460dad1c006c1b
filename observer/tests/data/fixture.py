import socket, struct, time, os
def pair(fam, addr, up, down):
    l = socket.socket(fam); l.bind((addr, 0)); l.listen(); p = l.getsockname()[1]
    c = socket.create_connection((addr, p)); s, _ = l.accept()
    c.sendall(b'u' * up); got = 0
    while got < up: got += len(s.recv(65536))
    s.sendall(b'd' * down); got = 0
    while got < down: got += len(c.recv(65536))
    return l, c, s
# client closes first, server waits for the ACK to land
l, c, s = pair(socket.AF_INET, '127.0.0.1', 100, 2000)
c.close(); assert s.recv(10) == b''; time.sleep(0.3); s.close(); l.close()
# server closes first
l, c, s = pair(socket.AF_INET, '127.0.0.1', 7, 70000)
s.close(); assert c.recv(10) == b''; c.close(); l.close()
# refused
f = socket.socket(); f.bind(('127.0.0.1', 0)); port = f.getsockname()[1]; f.close()
try:
    socket.create_connection(('127.0.0.1', port))
except ConnectionRefusedError:
    pass
# linger-0 reset over IPv6
l, c, s = pair(socket.AF_INET6, '::1', 300, 40)
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); c.close()
try:
    s.recv(1)
except ConnectionResetError:
    pass
s.close(); l.close()
time.sleep(0.5)
