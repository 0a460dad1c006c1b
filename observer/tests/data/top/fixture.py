"""The traffic of top.rec (see README.md): processes with their own names, each holding its
sockets open until killed, so that the recorder's last listing still sees them.

  db       listens; serves app's connection: 5000 bytes up, 20000 down, kept open
  tls-srv  listens (TLS, Python ssl/OpenSSL); tls-cli's connection kept open after the handshake
  tls-cli  connects with SNI tls.test, TLS 1.3
  leaky    listens; app connects, sends 1000 bytes and closes; leaky never closes: CLOSE_WAIT
  app      the client of db and leaky, then four connects to a closed port (refused); its
           end of the leak waits in FIN_WAIT2, orphaned
"""
import ctypes, os, signal, socket, ssl, subprocess, sys, tempfile, time

libc = ctypes.CDLL(None)
children = []


def named(name):
    libc.prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME


def spawn(name, body):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        named(name)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the parent
        body(lambda msg: os.write(w, (str(msg) + "\n").encode()))
        signal.pause()
        os._exit(0)
    os.close(w)
    children.append(pid)
    return os.fdopen(r)


def listener(say):
    """Listens in the server's own process (it owns the listener), and tells its port."""
    l = socket.socket()
    l.bind(("127.0.0.1", 0))
    l.listen(8)
    say(l.getsockname()[1])
    held.append(l)
    return l


held = []
certs = tempfile.mkdtemp()
crt, key = f"{certs}/tls.pem", f"{certs}/tls.key"
subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-days", "2", "-subj", "/CN=tls.test", "-addext",
                "subjectAltName=DNS:tls.test", "-keyout", key, "-out", crt],
               check=True, capture_output=True)


def db(say):
    s, _ = listener(say).accept()
    got = 0
    while got < 5000:
        got += len(s.recv(65536))
    s.sendall(b"d" * 20000)
    held.append(s)
    say("db ready")


def leaky(say):
    s, _ = listener(say).accept()
    got = 0
    while got < 1000:
        got += len(s.recv(65536))
    assert s.recv(10) == b""
    held.append(s)  # never closed: CLOSE_WAIT
    say("leaky ready")


def tls_srv(say):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    s, _ = listener(say).accept()
    t = ctx.wrap_socket(s, server_side=True)
    held.append(t)
    say("tls-srv ready")


db_r = spawn("db", db)
leaky_r = spawn("leaky", leaky)
tls_r = spawn("tls-srv", tls_srv)
db_port, leaky_port, tls_port = (int(r.readline()) for r in (db_r, leaky_r, tls_r))


def app(say):
    c = socket.create_connection(("127.0.0.1", db_port))
    c.sendall(b"u" * 5000)
    got = 0
    while got < 20000:
        got += len(c.recv(65536))
    held.append(c)
    c = socket.create_connection(("127.0.0.1", leaky_port))
    c.sendall(b"x" * 1000)
    time.sleep(0.2)
    c.close()
    f = socket.socket()
    f.bind(("127.0.0.1", 0))
    closed = f.getsockname()[1]
    f.close()
    for _ in range(4):
        try:
            socket.create_connection(("127.0.0.1", closed))
        except ConnectionRefusedError:
            pass
    say("app ready")


def tls_cli(say):
    ctx = ssl.create_default_context(cafile=crt)
    t = ctx.wrap_socket(socket.create_connection(("127.0.0.1", tls_port)), server_hostname="tls.test")
    assert t.version() == "TLSv1.3"
    held.append(t)
    say("tls-cli ready")


app_r = spawn("app", app)
cli_r = spawn("tls-cli", tls_cli)
for r in (db_r, leaky_r, tls_r, app_r, cli_r):
    print(r.readline().strip(), flush=True)
print("all ready", flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
try:
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 30)
finally:
    for pid in children:
        os.kill(pid, signal.SIGKILL)
