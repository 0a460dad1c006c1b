//! TLS peers for the tests: a throwaway PKI, nginx, `gnutls-serv`, curl, `gnutls-cli` and the
//! Python `ssl` peer (`tests/peers/tls_peer.py`), all inside a test's namespace; and a small
//! JSON Schema check for `docs/schema/tls.json`.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{NetNs, observer::scratch, sh, wait_for};

/// A CA, a server certificate for `tls.test` signed by it, and an unrelated CA.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    #[must_use]
    pub fn new() -> Self {
        let dir = scratch("pki");
        fs::create_dir_all(&dir).expect("pki dir");
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:tls.test\n").expect("ext");
        for ca in ["ca", "other"] {
            sh(
                "openssl",
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &p(&format!("{ca}.key")),
                    "-out",
                    &p(&format!("{ca}.pem")),
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=observer test {ca}"),
                ],
            );
        }
        sh(
            "openssl",
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &p("server.key"),
                "-out",
                &p("server.csr"),
                "-subj",
                "/CN=tls.test",
            ],
        );
        sh(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &p("server.csr"),
                "-CA",
                &p("ca.pem"),
                "-CAkey",
                &p("ca.key"),
                "-CAcreateserial",
                "-out",
                &p("server.pem"),
                "-days",
                "2",
                "-extfile",
                &p("ext.cnf"),
            ],
        );
        Self { dir }
    }

    #[must_use]
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A server process, killed on drop.
pub struct Server {
    child: Child,
    /// The process that runs the handshakes (nginx: its worker).
    pub pid: u32,
    pub port: u16,
    dir: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(
                libc::pid_t::try_from(self.child.id()).unwrap_or(0),
                libc::SIGTERM,
            );
        }
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

fn in_ns(ns: &NetNs, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name, program]);
    c
}

/// nginx with one TLS server on `port` (the namespace is the test's own, so a fixed port
/// cannot collide): `protocols` as `ssl_protocols` says, HTTP/2 offered by ALPN, and `extra`
/// directives (ciphers).
#[must_use]
pub fn nginx(ns: &NetNs, pki: &Pki, port: u16, protocols: &str, extra: &str) -> Server {
    let dir = scratch("nginx");
    fs::create_dir_all(dir.join("tmp")).expect("nginx dir");
    let d = dir.to_string_lossy();
    let conf = format!(
        "daemon off; worker_processes 1; user root; error_log {d}/error.log; pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log off; client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp;
  fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  server {{
    listen 127.0.0.1:{port} ssl http2; server_name tls.test;
    ssl_certificate {cert}; ssl_certificate_key {key};
    ssl_protocols {protocols}; ssl_session_tickets off; {extra}
    location / {{ return 200 \"ok\\n\"; }}
  }}
}}
",
        cert = pki.path("server.pem"),
        key = pki.path("server.key"),
    );
    fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
    let child = in_ns(ns, "nginx")
        .args(["-p", &d, "-c", &format!("{d}/nginx.conf")])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn nginx");
    ns.wait_tcp_state(port, "listening");
    let master = child.id();
    let pid = wait_for(Duration::from_secs(10), "the nginx worker", || {
        fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
    });
    Server {
        child,
        pid,
        port,
        dir: Some(dir),
    }
}

/// `gnutls-serv --http` on `port`.
#[must_use]
pub fn gnutls_serv(ns: &NetNs, pki: &Pki, port: u16) -> Server {
    let child = in_ns(ns, "gnutls-serv")
        .args([
            "--http",
            "--x509certfile",
            &pki.path("server.pem"),
            "--x509keyfile",
            &pki.path("server.key"),
            "-p",
            &port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gnutls-serv");
    ns.wait_tcp_state(port, "listening");
    let pid = child.id();
    Server {
        child,
        pid,
        port,
        dir: None,
    }
}

fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/tls_peer.py")
}

/// The Python `ssl` server, with `args` (e.g. `--alpn`, `--max`).
#[must_use]
pub fn python_server(ns: &NetNs, pki: &Pki, args: &[&str]) -> Server {
    let mut child = in_ns(ns, "/usr/bin/python3")
        .arg("-u")
        .arg(peer_script())
        .args(["server", "--cert", &pki.path("server.pem"), "--key"])
        .arg(pki.path("server.key"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server hello");
    let hello: Value = serde_json::from_str(&line).expect("server json");
    Server {
        pid: u32::try_from(hello["pid"].as_u64().expect("pid")).expect("pid"),
        port: u16::try_from(hello["port"].as_u64().expect("port")).expect("port"),
        child,
        dir: None,
    }
}

/// A Python `ssl` client that waits for a line on stdin before it connects.
pub struct PythonClient {
    child: Child,
    stdin: Option<ChildStdin>,
    pub pid: u32,
}

impl PythonClient {
    #[must_use]
    pub fn spawn(ns: &NetNs, port: u16, ca: &str, env: &[(&str, &str)], args: &[&str]) -> Self {
        let mut child = in_ns(ns, "/usr/bin/python3")
            .arg("-u")
            .arg(peer_script())
            .args([
                "client",
                "--wait-stdin",
                "--port",
                &port.to_string(),
                "--ca",
                ca,
            ])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python client");
        let stdin = child.stdin.take();
        let pid = child.id();
        Self { child, stdin, pid }
    }

    /// Lets it connect; returns its report (and the wall-clock µs it took, for bounds).
    #[must_use]
    pub fn go(mut self) -> (Value, u64) {
        let start = Instant::now();
        if let Some(mut stdin) = self.stdin.take() {
            stdin.write_all(b"go\n").expect("client stdin");
        }
        let out = self.child.wait_with_output().expect("client output");
        let took = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .last()
            .unwrap_or_else(|| panic!("no client report"));
        (serde_json::from_str(line).expect("client json"), took)
    }
}

/// Runs a client program in `ns`; returns its output and its pid.
#[must_use]
pub fn run(ns: &NetNs, program: &str, args: &[&str]) -> (Output, u32) {
    let child = in_ns(ns, program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    // `ip netns exec` execs the program: the pid is the program's.
    let pid = child.id();
    (child.wait_with_output().expect("client output"), pid)
}

/// `curl` to `https://tls.test:PORT/` with the CA file `ca`; returns (exit code,
/// `time_appconnect` in µs, http version, pid).
#[must_use]
pub fn curl(ns: &NetNs, port: u16, ca: &str, args: &[&str]) -> (i32, u64, String, u32) {
    let resolve = format!("tls.test:{port}:127.0.0.1");
    let url = format!("https://tls.test:{port}/");
    let mut all = vec![
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{time_appconnect} %{http_version}",
        "--cacert",
        ca,
        "--resolve",
        &resolve,
        &url,
    ];
    all.extend_from_slice(args);
    let (out, pid) = run(ns, "curl", &all);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut parts = text.split_whitespace();
    let secs: f64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let version = parts.next().unwrap_or("").to_owned();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a non-negative duration of seconds in µs"
    )]
    let us = (secs * 1e6) as u64;
    (out.status.code().unwrap_or(-1), us, version, pid)
}

/// A copy of the system's libssl and libcrypto in a new directory: new files (inodes) the
/// observer has not attached to.
#[must_use]
pub fn copied_openssl() -> PathBuf {
    let dir = scratch("libs");
    fs::create_dir_all(&dir).expect("libs dir");
    for lib in ["libssl.so.3", "libcrypto.so.3"] {
        fs::copy(
            Path::new("/usr/lib/x86_64-linux-gnu").join(lib),
            dir.join(lib),
        )
        .expect(lib);
    }
    dir
}

/// Checks `value` against the subset of JSON Schema that `docs/schema/tls.json` uses: `type`,
/// `properties`, `required`, `additionalProperties: false`, `enum`, `items`, `minimum`,
/// `pattern` (anchored prefixes only: `^prefix.*` or `^(a|b)rest.*`).
pub fn validate(value: &Value, schema: &Value, path: &str) {
    if let Some(t) = schema["type"].as_str() {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_u64() || value.is_i64(),
            _ => true,
        };
        assert!(ok, "{path}: {value} is not {t}");
    }
    if let Some(options) = schema["enum"].as_array() {
        assert!(
            options.contains(value),
            "{path}: {value} not in {options:?}"
        );
    }
    if let (Some(min), Some(v)) = (schema["minimum"].as_u64(), value.as_u64()) {
        assert!(v >= min, "{path}: {v} < {min}");
    }
    if let (Some(pattern), Some(s)) = (schema["pattern"].as_str(), value.as_str()) {
        let pattern = pattern.trim_start_matches('^').trim_end_matches(".*");
        // "(a|b)rest" or a literal prefix.
        let prefixes: Vec<String> = match pattern.strip_prefix('(').and_then(|p| p.split_once(')'))
        {
            Some((alternatives, rest)) => alternatives
                .split('|')
                .map(|a| format!("{a}{rest}"))
                .collect(),
            None => vec![pattern.to_owned()],
        };
        assert!(
            prefixes.iter().any(|p| s.starts_with(p.as_str())),
            "{path}: {s} does not match {pattern}"
        );
    }
    if let Some(items) = schema.get("items") {
        for (i, item) in value.as_array().into_iter().flatten().enumerate() {
            validate(item, items, &format!("{path}[{i}]"));
        }
    }
    let Some(obj) = value.as_object() else {
        return;
    };
    for key in schema["required"].as_array().into_iter().flatten() {
        let key = key.as_str().unwrap_or_default();
        assert!(obj.contains_key(key), "{path}: missing {key} in {value}");
    }
    let props = &schema["properties"];
    for (key, v) in obj {
        match props.get(key) {
            Some(s) => validate(v, s, &format!("{path}.{key}")),
            None => assert!(
                schema["additionalProperties"] != Value::Bool(false),
                "{path}: unexpected field {key}"
            ),
        }
    }
}

/// `docs/schema/tls.json`.
#[must_use]
pub fn schema() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schema/tls.json");
    serde_json::from_str(&fs::read_to_string(&path).expect("docs/schema/tls.json"))
        .expect("schema json")
}

/// `tests/peers/static_tls_client.c` compiled now, with OpenSSL linked in statically
/// (`libssl.a`, `libcrypto.a`), into a new directory: an executable the observer has never
/// seen, which maps no libssl. Needs `gcc` and `libssl-dev`.
#[must_use]
pub fn static_openssl_client() -> PathBuf {
    let dir = scratch("static");
    fs::create_dir_all(&dir).expect("static client dir");
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/static_tls_client.c");
    // A short name: it is the process's comm (15 bytes).
    let exe = dir.join("tls-static");
    let out = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&exe)
        .arg(&source)
        .args(["-lssl", "-lcrypto", "-lpthread", "-ldl"])
        .output()
        .expect("gcc (install gcc and libssl-dev)");
    assert!(
        out.status.success(),
        "compiling the static TLS client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// The static OpenSSL client (`static_openssl_client`), waiting for a line on stdin.
pub struct StaticClient {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
    pub pid: u32,
    /// `OpenSSL_version()`: the version linked into it, e.g. "OpenSSL 3.0.19 27 Jan 2026".
    pub openssl: String,
}

impl StaticClient {
    /// Starts `exe` in `ns` against 127.0.0.1:`port`, offering only `ciphersuites` (TLS 1.3)
    /// and the ALPN protocol `alpn`, with SNI `tls.test`.
    #[must_use]
    pub fn spawn(
        ns: &NetNs,
        exe: &Path,
        port: u16,
        ca: &str,
        ciphersuites: &str,
        alpn: &str,
    ) -> Self {
        let mut child = in_ns(ns, &exe.to_string_lossy())
            .args([&port.to_string(), "tls.test", ca, ciphersuites, alpn])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the static client");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("static client hello");
        let hello: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        Self {
            pid: u32::try_from(hello["pid"].as_u64().expect("pid")).expect("pid"),
            openssl: hello["openssl"].as_str().expect("openssl").to_owned(),
            child,
            stdin,
            stdout,
        }
    }

    /// Lets it connect; returns its report (`handshake_ns`: its own measure of `SSL_connect`).
    /// It closes the connection, and stays alive until `exit`.
    #[must_use]
    pub fn go(&mut self) -> Value {
        if let Some(stdin) = &mut self.stdin {
            stdin.write_all(b"go\n").expect("client stdin");
        }
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("static client report");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// Lets it exit, and checks it succeeded.
    pub fn exit(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("static client exit");
        assert!(status.success(), "static client: {status}");
    }
}
