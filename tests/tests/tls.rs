//! TLS handshakes seen through the library uprobes and the wire: real curl, nginx, Python
//! `ssl`, `gnutls-cli` and `gnutls-serv`, each test in its own namespace, with exact values as
//! configured. Every `observer.tls` record, and every connection record's `tls` object, is
//! checked against `docs/schema/tls.json`.

use std::time::Duration;

use observer_tests::{
    NetNs, Observer, field,
    observer::Stopped,
    privileged,
    tls::{self, Pki, PythonClient, StaticClient},
    wait_for,
};
use serde_json::Value;

/// The `observer.tls` records, schema-checked, and the connection records' `tls` objects too.
fn tls_records(stopped: &Stopped) -> Vec<Value> {
    stopped.assert_clean();
    let schema = tls::schema();
    let records = stopped.dataset("observer.tls");
    for r in &records {
        tls::validate(r, &schema, "observer.tls");
    }
    for c in stopped.dataset("observer.connection") {
        if let Some(t) = c.get("tls") {
            tls::validate(t, &schema["properties"]["tls"], "observer.connection.tls");
        }
    }
    records
}

/// The one record of `role` whose process is `pid`.
fn one<'a>(records: &'a [Value], role: &str, pid: u32) -> &'a Value {
    let found: Vec<&Value> = records
        .iter()
        .filter(|r| field(r, "tls.role") == role && field(r, "process.pid") == pid)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {role} record of pid {pid} in {records:#?}"
    );
    found[0]
}

/// The handshake took some time, and no more than the client measured for connect + handshake.
fn assert_duration(r: &Value, at_most_us: u64) {
    let us = field(r, "tls.handshake_duration_us")
        .as_u64()
        .unwrap_or_else(|| panic!("no duration in {r}"));
    assert!(
        us > 0 && us <= at_most_us,
        "duration {us} µs not in (0, {at_most_us}] in {r}"
    );
    let ns = field(r, "event.duration").as_u64().expect("event.duration");
    assert_eq!(ns / 1000, us, "{r}");
}

/// The connection record with the same uid carries the same `tls` object.
fn assert_joined(stopped: &Stopped, r: &Value) {
    let uid = field(r, "conn.uid");
    assert!(uid.is_string(), "no conn.uid in {r}");
    let conns: Vec<Value> = stopped
        .dataset("observer.connection")
        .into_iter()
        .filter(|c| field(c, "conn.uid") == uid)
        .collect();
    assert_eq!(conns.len(), 1, "one connection record for {uid}");
    assert_eq!(
        conns[0]["tls"], r["tls"],
        "tls fields on the connection record"
    );
    assert_eq!(field(&conns[0], "conn.cookie"), field(r, "conn.cookie"));
}

fn assert_openssl(r: &Value) {
    let lib = field(r, "tls.library").as_str().unwrap_or_default();
    assert!(lib.starts_with("openssl/3."), "{r}");
}

#[test]
fn curl_to_nginx_tls13_and_tls12_both_ends() {
    if !privileged("curl_to_nginx_tls13_and_tls12_both_ends") {
        return;
    }
    let ns = NetNs::new("tls-nginx");
    let pki = Pki::new();
    let obs = Observer::start(&ns, &["--tls"]);
    let v13 = tls::nginx(
        &ns,
        &pki,
        8443,
        "TLSv1.3",
        "ssl_conf_command Ciphersuites TLS_CHACHA20_POLY1305_SHA256;",
    );
    let v12 = tls::nginx(
        &ns,
        &pki,
        8444,
        "TLSv1.2",
        "ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256;",
    );
    let ca = pki.path("ca.pem");
    let (code13, took13, http13, curl13) = tls::curl(&ns, v13.port, &ca, &["--http2"]);
    assert_eq!((code13, http13.as_str()), (0, "2"), "curl over TLS 1.3");
    let (code12, took12, http12, curl12) = tls::curl(&ns, v12.port, &ca, &["--http1.1"]);
    assert_eq!((code12, http12.as_str()), (0, "1.1"), "curl over TLS 1.2");
    let _ = obs.wait_records("observer.connection", 4);
    let stopped = obs.stop();
    let records = tls_records(&stopped);
    assert_eq!(
        records.len(),
        4,
        "{records:#?}\nobserver stderr:\n{}",
        stopped.stderr
    );
    for (server, client, took, version, cipher, offered, chosen) in [
        (
            &v13,
            curl13,
            took13,
            "1.3",
            "TLS_CHACHA20_POLY1305_SHA256",
            ["h2", "http/1.1"].as_slice(),
            Some("h2"),
        ),
        (
            &v12,
            curl12,
            took12,
            "1.2",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            ["http/1.1"].as_slice(),
            Some("http/1.1"),
        ),
    ] {
        let c = one(&records, "client", client);
        let s = one(&records, "server", server.pid);
        assert_eq!(field(c, "process.name"), "curl");
        assert_eq!(field(s, "process.name"), "nginx");
        for r in [c, s] {
            assert_eq!(field(r, "event.outcome"), "success", "{r}");
            assert_eq!(field(r, "tls.established"), true);
            assert_eq!(field(r, "tls.version"), version);
            assert_eq!(field(r, "tls.version_protocol"), "tls");
            assert_eq!(field(r, "tls.cipher"), cipher);
            assert_eq!(field(r, "tls.client.server_name"), "tls.test");
            assert_eq!(
                field(r, "tls.client.alpn_offered"),
                &serde_json::json!(offered)
            );
            assert_eq!(field(r, "tls.next_protocol").as_str(), chosen, "{r}");
            assert_eq!(field(r, "tls.resumed"), false);
            assert_eq!(field(r, "tls.source"), "uprobe+wire");
            assert_eq!(field(r, "destination.port"), server.port);
            assert_openssl(r);
            assert_joined(&stopped, r);
        }
        // curl's time_appconnect runs from its start to the end of the handshake.
        assert_duration(c, took);
        assert_eq!(field(c, "source.port"), field(s, "source.port"));
    }
    let curve = field(one(&records, "client", curl13), "tls.curve");
    assert_eq!(curve, "x25519");
}

#[test]
fn python_ssl_client_and_server() {
    if !privileged("python_ssl_client_and_server") {
        return;
    }
    let ns = NetNs::new("tls-py");
    let pki = Pki::new();
    let obs = Observer::start(&ns, &["--tls"]);
    let server = tls::python_server(&ns, &pki, &["--alpn", "x-obs", "--max", "1.2"]);
    let client = PythonClient::spawn(
        &ns,
        server.port,
        &pki.path("ca.pem"),
        &[],
        &["--alpn", "x-obs,x-other"],
    );
    let client_pid = client.pid;
    let (report, took) = client.go();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["version"], "TLSv1.2");
    assert_eq!(report["alpn"], "x-obs");
    let _ = obs.wait_records("observer.connection", 2);
    let stopped = obs.stop();
    let records = tls_records(&stopped);
    assert_eq!(
        records.len(),
        2,
        "{records:#?}\nobserver stderr:\n{}",
        stopped.stderr
    );
    let c = one(&records, "client", client_pid);
    let s = one(&records, "server", server.pid);
    for r in [c, s] {
        assert_eq!(field(r, "process.name"), "python3");
        assert_eq!(field(r, "tls.established"), true);
        assert_eq!(field(r, "tls.version"), "1.2");
        assert_eq!(
            field(r, "tls.cipher"),
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
        );
        assert_eq!(field(r, "tls.client.server_name"), "tls.test");
        assert_eq!(field(r, "tls.next_protocol"), "x-obs");
        assert_openssl(r);
        assert_joined(&stopped, r);
    }
    assert_duration(c, took);
}

#[test]
fn gnutls_cli_to_openssl_and_curl_to_gnutls_serv() {
    if !privileged("gnutls_cli_to_openssl_and_curl_to_gnutls_serv") {
        return;
    }
    let ns = NetNs::new("tls-gnu");
    let pki = Pki::new();
    let obs = Observer::start(&ns, &["--tls"]);
    let py = tls::python_server(&ns, &pki, &[]);
    let port = py.port.to_string();
    let (out, cli_pid) = tls::run(
        &ns,
        "gnutls-cli",
        &[
            "--x509cafile",
            &pki.path("ca.pem"),
            "-p",
            &port,
            "--sni-hostname",
            "tls.test",
            "--verify-hostname",
            "tls.test",
            "--logfile",
            "/dev/null",
            "127.0.0.1",
        ],
    );
    // With stdin closed it sends nothing; the server answers the empty line.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "reply ", "{out:?}");
    let gnutls = tls::gnutls_serv(&ns, &pki, 8445);
    let (code, took, _, curl_pid) =
        tls::curl(&ns, gnutls.port, &pki.path("ca.pem"), &["--http1.1"]);
    assert_eq!(code, 0, "curl to gnutls-serv");
    let _ = obs.wait_records("observer.tls", 4);
    let stopped = obs.stop();
    let records = tls_records(&stopped);
    let cli = one(&records, "client", cli_pid);
    assert_eq!(field(cli, "process.name"), "gnutls-cli");
    let serv = one(&records, "server", gnutls.pid);
    assert_eq!(field(serv, "process.name"), "gnutls-serv");
    for r in [cli, serv] {
        assert!(
            field(r, "tls.library")
                .as_str()
                .is_some_and(|l| l.starts_with("gnutls/3.")),
            "{r}"
        );
    }
    let curl = one(&records, "client", curl_pid);
    assert_duration(curl, took);
    for r in [cli, one(&records, "server", py.pid), serv, curl] {
        assert_eq!(field(r, "tls.established"), true, "{r}");
        assert_eq!(field(r, "tls.version"), "1.3");
        assert_eq!(field(r, "tls.cipher"), "TLS_AES_256_GCM_SHA384");
        assert_eq!(field(r, "tls.client.server_name"), "tls.test");
        assert_eq!(field(r, "tls.source"), "uprobe+wire");
        assert_joined(&stopped, r);
    }
}

#[test]
fn failed_handshakes_wrong_ca_and_version_mismatch() {
    if !privileged("failed_handshakes_wrong_ca_and_version_mismatch") {
        return;
    }
    let ns = NetNs::new("tls-fail");
    let pki = Pki::new();
    let obs = Observer::start(&ns, &["--tls"]);
    let nginx = tls::nginx(&ns, &pki, 8443, "TLSv1.3", "");
    let (code, _, _, wrong_ca) = tls::curl(&ns, nginx.port, &pki.path("other.pem"), &[]);
    assert_eq!(code, 60, "curl: peer certificate cannot be authenticated");
    let (code, _, _, too_old) = tls::curl(
        &ns,
        nginx.port,
        &pki.path("ca.pem"),
        &["--tlsv1.2", "--tls-max", "1.2"],
    );
    assert_eq!(code, 35, "curl: TLS handshake failed");
    let _ = obs.wait_records("observer.tls", 4);
    let stopped = obs.stop();
    let records = tls_records(&stopped);
    assert_eq!(
        records.len(),
        4,
        "{records:#?}\nobserver stderr:\n{}",
        stopped.stderr
    );
    let server: Vec<&Value> = records
        .iter()
        .filter(|r| field(r, "process.pid") == nginx.pid)
        .collect();
    assert_eq!(server.len(), 2, "{records:#?}");
    // Each failure shows as the alert one end sent and the other received.
    let expected = [
        (one(&records, "client", wrong_ca), "alert sent: unknown_ca"),
        (server[0], "alert received: unknown_ca"),
        (
            one(&records, "client", too_old),
            "alert received: protocol_version",
        ),
        (server[1], "alert sent: protocol_version"),
    ];
    for (r, error) in expected {
        assert_eq!(field(r, "event.outcome"), "failure", "{r}");
        assert_eq!(field(r, "tls.established"), false);
        assert_eq!(field(r, "tls.error"), error, "{r}");
        assert_eq!(field(r, "tls.client.server_name"), "tls.test");
        assert_joined(&stopped, r);
    }
    assert_eq!(field(server[0], "tls.version"), "1.3");
    assert_eq!(
        field(server[1], "tls.version").as_str(),
        None,
        "no ServerHello"
    );
}

/// A server that reads the `ClientHello` and answers with a RST (`SO_LINGER` 0).
const RST_SERVER: &str = "
import socket, struct
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(4)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
c.recv(4096)
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
c.close()
";

#[test]
fn reset_mid_handshake() {
    use std::io::BufRead as _;
    if !privileged("reset_mid_handshake") {
        return;
    }
    let ns = NetNs::new("tls-rst");
    let pki = Pki::new();
    let obs = Observer::start(&ns, &["--tls"]);
    let mut server = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "/usr/bin/python3",
            "-c",
            RST_SERVER,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("rst server");
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("port");
    let port: u16 = line.trim().parse().expect("port");
    let (code, _, _, curl) = tls::curl(&ns, port, &pki.path("ca.pem"), &[]);
    assert_eq!(code, 35, "curl: TLS handshake failed");
    let _ = server.wait();
    let _ = obs.wait_records("observer.connection", 2);
    let stopped = obs.stop();
    let records = tls_records(&stopped);
    let c = one(&records, "client", curl);
    assert_eq!(field(c, "tls.established"), false);
    assert_eq!(
        field(c, "tls.error"),
        "handshake abandoned: the connection ended before it completed"
    );
    assert_eq!(field(c, "tls.client.server_name"), "tls.test");
    assert_eq!(field(c, "tls.version").as_str(), None, "no ServerHello");
    assert_joined(&stopped, c);
    let conn = stopped
        .dataset("observer.connection")
        .into_iter()
        .find(|r| field(r, "conn.uid") == field(c, "conn.uid"))
        .expect("the connection");
    assert_eq!(field(&conn, "conn.error"), "ECONNRESET");
    // The server end had no TLS library: its record comes from the wire alone, at close.
    let s = records
        .iter()
        .find(|r| field(r, "tls.role") == "server")
        .expect("the server's wire-only record");
    assert_eq!(field(s, "tls.source"), "wire");
    assert_eq!(field(s, "tls.established"), false);
    assert_eq!(field(s, "tls.client.server_name"), "tls.test");
}

#[test]
fn client_started_later_from_a_new_library_path() {
    if !privileged("client_started_later_from_a_new_library_path") {
        return;
    }
    let ns = NetNs::new("tls-late");
    let pki = Pki::new();
    let libs = tls::copied_openssl();
    let obs = Observer::start(&ns, &["--tls"]);
    let server = tls::python_server(&ns, &pki, &[]);
    let dir = libs.to_string_lossy().into_owned();
    let client = PythonClient::spawn(
        &ns,
        server.port,
        &pki.path("ca.pem"),
        &[("LD_LIBRARY_PATH", &dir)],
        &[],
    );
    // Python maps libssl when it imports ssl, after exec; the observer finds it in the
    // process's maps (on its exec event, or the periodic rescan) and attaches.
    wait_for(
        Duration::from_secs(15),
        "uprobes on the copied libssl",
        || {
            let err = std::fs::read_to_string(obs.stderr_path()).unwrap_or_default();
            err.lines()
                .any(|l| {
                    l.contains("TLS uprobes attached") && l.contains(&format!("{dir}/libssl.so.3"))
                })
                .then_some(())
        },
    );
    let client_pid = client.pid;
    let (report, _) = client.go();
    assert_eq!(report["ok"], true, "{report}");
    let _ = obs.wait_records("observer.tls", 2);
    let stopped = obs.stop();
    let records = tls_records(&stopped);
    let c = one(&records, "client", client_pid);
    assert_eq!(
        field(c, "tls.source"),
        "uprobe+wire",
        "the new library's uprobe fired"
    );
    assert_eq!(field(c, "tls.established"), true);
    assert_openssl(c);
    let _ = std::fs::remove_dir_all(&libs);
}

#[test]
fn static_openssl_client_started_later() {
    if !privileged("static_openssl_client_started_later") {
        return;
    }
    let ns = NetNs::new("tls-static");
    let pki = Pki::new();
    // Compiled now into a new directory: a file no process has run before.
    let exe = tls::static_openssl_client();
    let obs = Observer::start(&ns, &["--tls"]);
    let nginx = tls::nginx(&ns, &pki, 8443, "TLSv1.3", "");
    let mut client = StaticClient::spawn(
        &ns,
        &exe,
        nginx.port,
        &pki.path("ca.pem"),
        "TLS_AES_128_GCM_SHA256",
        "http/1.1",
    );
    // "OpenSSL 3.0.19 27 Jan 2026": the library name the observer reads from the executable.
    let library = format!(
        "openssl/{}",
        client.openssl.split_whitespace().nth(1).expect("version")
    );
    assert!(library.starts_with("openssl/3."), "{}", client.openssl);
    // OpenSSL is in the executable: the process maps no shared library at all.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", client.pid)).expect("maps");
    assert!(
        !maps.contains(".so"),
        "a shared library in the static client:\n{maps}"
    );
    // On its exec event the observer finds SSL_do_handshake in the executable and attaches
    // there (the file, seen through /proc/PID/root).
    let attached = format!("{} ({library})", exe.display());
    wait_for(
        Duration::from_secs(15),
        "uprobes on the static executable",
        || {
            let err = std::fs::read_to_string(obs.stderr_path()).unwrap_or_default();
            err.lines()
                .any(|l| l.contains("TLS uprobes attached") && l.contains(&attached))
                .then_some(())
        },
    );
    let client_pid = client.pid;
    let report = client.go();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["version"], "TLSv1.3");
    assert_eq!(report["cipher"], "TLS_AES_128_GCM_SHA256");
    assert_eq!(report["alpn"], "http/1.1");
    assert_eq!(report["status"], "HTTP/1.1 200 OK");
    let took_us = report["handshake_ns"].as_u64().expect("handshake_ns") / 1000;
    let _ = obs.wait_records("observer.tls", 2);
    let _ = obs.wait_records("observer.connection", 2);
    // The client exits only once its connection's record is out, so that the record's
    // process.executable is read from a live process: with the exit racing the socket's close,
    // one run in ~25 under load named no executable or another one (not TLS's concern).
    client.exit();
    let stopped = obs.stop();
    let records = tls_records(&stopped);
    assert_eq!(
        records.len(),
        2,
        "{records:#?}\nobserver stderr:\n{}",
        stopped.stderr
    );
    let c = one(&records, "client", client_pid);
    let s = one(&records, "server", nginx.pid);
    assert_eq!(field(c, "process.name"), "tls-static");
    assert_eq!(field(s, "process.name"), "nginx");
    // Only the uprobes on the executable can have seen the client's handshake and its ALPN
    // answer (encrypted on the wire under TLS 1.3).
    assert_eq!(field(c, "tls.library"), library.as_str());
    assert_openssl(s);
    for r in [c, s] {
        assert_eq!(field(r, "event.outcome"), "success", "{r}");
        assert_eq!(field(r, "tls.established"), true);
        assert_eq!(field(r, "tls.version"), "1.3");
        assert_eq!(field(r, "tls.version_protocol"), "tls");
        assert_eq!(field(r, "tls.cipher"), "TLS_AES_128_GCM_SHA256");
        assert_eq!(field(r, "tls.curve"), "x25519");
        assert_eq!(field(r, "tls.client.server_name"), "tls.test");
        assert_eq!(
            field(r, "tls.client.alpn_offered"),
            &serde_json::json!(["http/1.1"])
        );
        assert_eq!(field(r, "tls.next_protocol"), "http/1.1", "{r}");
        assert_eq!(field(r, "tls.resumed"), false);
        assert_eq!(field(r, "tls.source"), "uprobe+wire");
        assert_eq!(field(r, "destination.port"), nginx.port);
        assert_joined(&stopped, r);
    }
    assert_eq!(field(c, "source.port"), field(s, "source.port"));
    // Within the client's own measure of its SSL_connect call.
    assert_duration(c, took_us);
    let conn = stopped
        .dataset("observer.connection")
        .into_iter()
        .find(|r| field(r, "conn.uid") == field(c, "conn.uid"))
        .expect("the client's connection");
    assert_eq!(field(&conn, "process.pid"), client_pid);
    assert_eq!(field(&conn, "process.name"), "tls-static");
    assert_eq!(
        field(&conn, "process.executable"),
        exe.to_string_lossy().as_ref(),
        "{conn}"
    );
    let _ = std::fs::remove_dir_all(exe.parent().expect("dir"));
}

#[test]
fn no_payload_in_output_or_maps() {
    const MARKER: &str = "OBSERVER-PRIVACY-MARKER-7f3a";
    if !privileged("no_payload_in_output_or_maps") {
        return;
    }
    let ns = NetNs::new("tls-priv");
    let pki = Pki::new();
    let obs = Observer::start(&ns, &["--tls"]);
    let server = tls::python_server(&ns, &pki, &[]);
    let client = PythonClient::spawn(
        &ns,
        server.port,
        &pki.path("ca.pem"),
        &[],
        &["--send", MARKER],
    );
    let (report, _) = client.go();
    assert_eq!(report["reply"], format!("reply {MARKER}"), "{report}");
    // A plaintext connection whose payload looks like a TLS handshake record and carries the
    // marker: the wire capture copies it to userspace, which must not print it.
    let plain = tls::python_server(&ns, &pki, &[]);
    let fake = format!("\\x16\\x03\\x01\\x00\\x30{MARKER}");
    let script = format!(
        "import socket; s=socket.create_connection(('127.0.0.1',{})); s.sendall(b'{fake}'); s.close()",
        plain.port
    );
    let (out, _) = tls::run(&ns, "/usr/bin/python3", &["-c", &script]);
    assert!(out.status.success(), "{out:?}");
    let _ = obs.wait_records("observer.tls", 2);
    // Every TLS map of every loaded observer (values printed as hex bytes).
    let mut maps = String::new();
    for map in ["TLS_SESSIONS", "TLS_WIRE", "TLS_ACTIVE", "TLS_ALPN_ARGS"] {
        maps += &observer_tests::sh("bpftool", &["map", "dump", "name", map]);
    }
    let hex = MARKER
        .bytes()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(!maps.contains(&hex), "marker bytes in a TLS map");
    let stopped = obs.stop();
    let records = tls_records(&stopped);
    assert!(!records.is_empty());
    let all: String = stopped.lines.iter().map(Value::to_string).collect();
    assert!(
        !all.contains(MARKER) && !stopped.stderr.contains(MARKER),
        "marker in the output"
    );
    assert!(!all.contains("PRIVACY"), "part of the marker in the output");
}

#[test]
fn without_tls_flag_nothing_is_attached_or_reported() {
    if !privileged("without_tls_flag_nothing_is_attached_or_reported") {
        return;
    }
    let ns = NetNs::new("tls-off");
    let pki = Pki::new();
    let obs = Observer::start(&ns, &[]);
    let server = tls::python_server(&ns, &pki, &[]);
    let client = PythonClient::spawn(&ns, server.port, &pki.path("ca.pem"), &[], &[]);
    let (report, _) = client.go();
    assert_eq!(report["ok"], true, "{report}");
    let _ = obs.wait_records("observer.connection", 2);
    let stopped = obs.stop();
    stopped.assert_clean();
    assert!(stopped.dataset("observer.tls").is_empty());
    for c in stopped.dataset("observer.connection") {
        assert!(c.get("tls").is_none(), "{c}");
    }
    let started = stopped
        .dataset("observer.agent")
        .into_iter()
        .find(|a| field(a, "event.action") == "started")
        .expect("started record");
    let hooks = field(&started, "observer.hooks").to_string();
    assert!(
        !hooks.contains("uprobe") && !hooks.contains("cgroup_skb"),
        "{hooks}"
    );
}
