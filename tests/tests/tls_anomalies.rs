//! `tls_handshake_failures` against the real kernel (docs/anomalies.md): curl failing its
//! handshakes with nginx (a CA it does not trust), in the test's own namespace. Both ends
//! fire: the clients' failures towards the server, and the server's failures with its
//! clients; both resolve after a quiet window, and the recording replays to the same alerts.

use std::time::Duration;

use observer_tests::{
    NetNs,
    anomaly::{ANOMALY, Recording, check_common, wait_alerts},
    field, parse_ts, privileged,
    tls::{self, Pki},
};
use serde_json::{Value, json};

#[test]
fn tls_handshake_failures_fire_for_the_server_and_its_clients_and_resolve() {
    if !privileged("tls_handshake_failures_fire_for_the_server_and_its_clients_and_resolve") {
        return;
    }
    let ns = NetNs::new("tlsf");
    let pki = Pki::new();
    let (obs, recording) = Recording::start_with(
        &ns,
        // A roomy ring: the hooks see the whole host, and other tests may run beside this one.
        &["--tls", "--ring-mib", "16"],
        &[
            "--anomalies",
            "--tls-handshake-failures",
            "3",
            "--tls-handshake-failures-window",
            "3",
        ],
    );
    let nginx = tls::nginx(&ns, &pki, 8443, "TLSv1.3", "");
    let mut curls = Vec::new();
    for _ in 0..3 {
        let (code, _, _, pid) = tls::curl(&ns, nginx.port, &pki.path("other.pem"), &[]);
        assert_eq!(code, 60, "curl: peer certificate cannot be authenticated");
        curls.push(pid);
    }
    let alerts = wait_alerts(&obs, 4, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1500));
    let stopped = obs.stop();
    stopped.assert_clean();
    assert_eq!(
        stopped.dataset(ANOMALY),
        alerts,
        "each fired and resolved once"
    );
    let records = stopped.dataset("observer.tls");
    assert_eq!(records.len(), 6, "{records:#?}");
    let of_role = |role: &str| -> Vec<&Value> {
        records
            .iter()
            .filter(|r| field(r, "tls.role") == role)
            .collect()
    };
    let (clients, servers) = (of_role("client"), of_role("server"));
    assert_eq!((clients.len(), servers.len()), (3, 3), "{records:#?}");

    let scoped = |scope: &str| -> Vec<&Value> {
        alerts
            .iter()
            .filter(|a| field(a, "anomaly.scope") == scope)
            .collect()
    };
    for (scope, failed, pid, name, error) in [
        (
            "remote",
            &clients,
            curls[2],
            "curl",
            "alert sent: unknown_ca",
        ),
        (
            "server",
            &servers,
            nginx.pid,
            "nginx",
            "alert received: unknown_ca",
        ),
    ] {
        let pair = scoped(scope);
        assert_eq!(pair.len(), 2, "{scope}: fired and resolved: {alerts:#?}");
        let (a, r) = (pair[0], pair[1]);
        check_common(a, "tls_handshake_failures", "firing");
        assert_eq!(field(a, "destination.ip"), "127.0.0.1", "{a}");
        assert_eq!(field(a, "destination.port"), 8443, "{a}");
        assert_eq!(field(a, "process.pid"), pid, "{a}");
        assert_eq!(field(a, "process.name"), name, "{a}");
        assert_eq!(field(a, "anomaly.observed"), 3, "{a}");
        assert_eq!(field(a, "anomaly.threshold"), 3, "{a}");
        assert_eq!(field(a, "anomaly.window_s"), 3, "{a}");
        assert_eq!(field(a, "anomaly.errors"), &json!({ error: 3 }), "{a}");
        assert_eq!(field(a, "anomaly.server_name"), "tls.test", "{a}");
        assert_eq!(field(a, "@timestamp"), field(failed[2], "event.end"), "{a}");
        let uids: Vec<&Value> = failed.iter().rev().map(|r| field(r, "conn.uid")).collect();
        assert_eq!(field(a, "conn.uids"), &json!(uids), "newest first: {a}");

        check_common(r, "tls_handshake_failures", "resolved");
        assert_eq!(field(r, "destination.port"), 8443, "{r}");
        assert_eq!(field(r, "anomaly.observed"), 0, "{r}");
        assert_eq!(field(r, "anomaly.total"), 3, "{r}");
        let last = parse_ts(field(failed[2], "event.end").as_str().expect("end"));
        let resolved = parse_ts(field(r, "@timestamp").as_str().expect("ts"));
        assert_eq!(
            resolved - last,
            3_000_000,
            "a whole window after the last: {r}"
        );
    }
    recording.assert_replays(&alerts);
}
