"""The traffic of top.rec (see README.md): processes with their own names, each holding its
sockets open until killed, so that the recorder's last listing still sees them.

  db       listens; serves app's connection: 5000 bytes up, 20000 down, kept open
  tls-srv  listens (TLS, Python ssl/OpenSSL); tls-cli's connection kept open after the handshake
  tls-cli  connects with SNI tls.test, TLS 1.3
  leaky    listens; app connects, sends 1000 bytes and closes; leaky never closes: CLOSE_WAIT
  app      the client of db and leaky, then four connects to a closed port (refused); its
           end of the leak waits in FIN_WAIT2, orphaned
  stalled  listens with a backlog of 1 and never accepts: crowd's two connections fill its
           accept queue (the kernel queues backlog + 1), so every later SYN overflows it
  crowd    connects twice to stalled and waits
  web      listens on 192.0.2.1 (record.sh's veth); accepts churn's connections and closes them
  churn    a connection to web every 0.5 s, aborted at once (RST: no TIME_WAIT left behind)
  spoofer  raw SYNs from 198.51.100.0/24, which record.sh routes into a veth where nothing
           answers: 3 to web (its SYN-ACKs are lost: 3 half-open requests for the rest of the
           recording), then 10 a second to stalled (each one dropped: a listen overflow)
"""
import ctypes, os, signal, socket, ssl, struct, subprocess, sys, tempfile, time

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


def listener(say, backlog=8, addr="127.0.0.1"):
    """Listens in the server's own process (it owns the listener), and tells its port."""
    l = socket.socket()
    l.bind((addr, 0))
    l.listen(backlog)
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


def stalled(say):
    listener(say, backlog=1)  # never accepts


WEB = "192.0.2.1"


def web(say):
    l = listener(say, addr=WEB)
    while True:
        s, _ = l.accept()
        try:
            s.recv(1)  # until churn's RST
        except ConnectionResetError:
            pass
        s.close()


db_r = spawn("db", db)
leaky_r = spawn("leaky", leaky)
tls_r = spawn("tls-srv", tls_srv)
stalled_r = spawn("stalled", stalled)
web_r = spawn("web", web)
db_port, leaky_port, tls_port, stalled_port, web_port = (
    int(r.readline()) for r in (db_r, leaky_r, tls_r, stalled_r, web_r))


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


def crowd(say):
    for _ in range(2):
        held.append(socket.create_connection(("127.0.0.1", stalled_port)))
    say("crowd ready")


def churn(say):
    say("churn ready")
    start = time.monotonic()
    for k in range(1_000_000):
        time.sleep(max(0, start + k * 0.5 - time.monotonic()))
        c = socket.create_connection((WEB, web_port))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()


def checksum(b):
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def syn(raw, src, dst, sport, dport):
    """A bare SYN, IP header included."""
    src, dst = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, sport << 16, 0, 5 << 4, 0x02, 64240, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", checksum(src + dst + struct.pack("!BBH", 0, 6, 20) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, src, dst)
    raw.sendto(ip + tcp, (socket.inet_ntoa(dst), 0))


def spoofer(say):
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for i in range(3):
        syn(raw, f"198.51.100.{i + 1}", WEB, 40000 + i, web_port)
    say("spoofer ready")
    start = time.monotonic()
    for k in range(1_000_000):
        time.sleep(max(0, start + k * 0.1 - time.monotonic()))
        syn(raw, "198.51.100.9", "127.0.0.1", 41000 + k % 20000, stalled_port)


app_r = spawn("app", app)
cli_r = spawn("tls-cli", tls_cli)
crowd_r = spawn("crowd", crowd)
print(crowd_r.readline().strip(), flush=True)  # stalled's queue is full before any SYN comes
spoofer_r = spawn("spoofer", spoofer)
churn_r = spawn("churn", churn)
for r in (db_r, leaky_r, tls_r, app_r, cli_r, spoofer_r, churn_r):
    print(r.readline().strip(), flush=True)
print("all ready", flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
try:
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 30)
finally:
    for pid in children:
        os.kill(pid, signal.SIGKILL)
