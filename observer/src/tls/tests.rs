use observer_common::{EventHeader, TLS_CAPTURE_LEN, kind};

use super::*;

fn hello(cookie: u64, direction: u8, ts: u64, bytes: &[u8]) -> TlsHello {
    let mut data = [0; TLS_CAPTURE_LEN];
    data[..bytes.len()].copy_from_slice(bytes);
    TlsHello {
        header: EventHeader {
            kind: kind::TLS_HELLO,
            len: 0,
            _pad: 0,
            ts_ns: ts,
            pid_tgid: 10 << 32 | 0xb,
        },
        cookie,
        birth_ns: 5,
        tuple: Endpoints {
            local_port: 40000,
            remote_port: 443,
            family: 2,
            ..Endpoints::default()
        },
        netns: 99,
        flags: conn_flag::TUPLE_VALID | conn_flag::ROLE_CLIENT,
        direction,
        index: 0,
        seg_len: u32::try_from(bytes.len()).expect("fits"),
        captured: u32::try_from(bytes.len()).expect("fits"),
        data,
    }
}

fn handshake(cookie: u64, outcome: u8, ret: i32, library: u8) -> TlsHandshake {
    TlsHandshake {
        header: EventHeader {
            kind: kind::TLS_HANDSHAKE,
            len: 0,
            _pad: 0,
            ts_ns: 3_500_000,
            pid_tgid: 10 << 32 | 0xc,
        },
        session: 0xdead,
        cookie,
        start_ns: 1_000_000,
        calls: 2,
        ret,
        library,
        outcome,
        lib_file: 0,
        _pad: [0; 5],
        comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
    }
}

fn alpn(protocol: &[u8]) -> TlsAlpn {
    let mut out = TlsAlpn {
        header: EventHeader {
            kind: kind::TLS_ALPN,
            len: 0,
            _pad: 0,
            ts_ns: 3_600_000,
            pid_tgid: 10 << 32 | 0xc,
        },
        session: 0xdead,
        len: u32::try_from(protocol.len()).expect("fits"),
        _pad: 0,
        protocol: [0; observer_common::TLS_ALPN_LEN],
    };
    out.protocol[..protocol.len()].copy_from_slice(protocol);
    out
}

#[test]
fn held_records_go_out_when_due_without_alpn() {
    let mut t = TlsTable::default();
    let (ch, sh) = hellos();
    t.hello(&hello(7, tls_dir::EGRESS, 1_100_000, &ch));
    t.hello(&hello(7, tls_dir::INGRESS, 2_000_000, &sh));
    assert_eq!(
        t.handshake(&handshake(7, tls_outcome::ESTABLISHED, 1, tls_lib::OPENSSL)),
        None
    );
    let due = t.due(3_500_000 + ALPN_WAIT_NS);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].facts.next_protocol, None);
    // A late report still reaches the connection record.
    assert_eq!(t.alpn(&alpn(b"http/1.1")), None);
    let (facts, _) = t.closed(7).expect("tls socket");
    assert_eq!(facts.next_protocol.as_deref(), Some("http/1.1"));
}

/// A TLS 1.3 `ClientHello` for "x.test" offering h2, and the `ServerHello` choosing
/// `TLS_AES_256_GCM_SHA384` with x25519.
fn hellos() -> (Vec<u8>, Vec<u8>) {
    let ch: Vec<u8> = [
        &[22, 3, 1, 0, 61, 1, 0, 0, 57, 3, 3][..],
        &[0; 32],
        &[0, 0, 2, 0x13, 0x02, 1, 0, 0, 24],
        &[0, 0, 0, 11, 0, 9, 0, 0, 6],
        b"x.test",
        &[0, 16, 0, 5, 0, 3, 2],
        b"h2",
        // supported_versions would follow; legacy says 1.2
    ]
    .concat();
    let mut ch = ch;
    // Fix the declared lengths to what was written.
    let body = ch.len() - 5;
    ch[3..5].copy_from_slice(&u16::try_from(body).expect("fits").to_be_bytes());
    ch[6..9].copy_from_slice(&u32::try_from(body - 4).expect("fits").to_be_bytes()[1..]);
    let sh: Vec<u8> = [
        &[22, 3, 3, 0, 58, 2, 0, 0, 54, 3, 3][..],
        &[1; 32],
        &[
            0, 0x13, 0x02, 0, 0, 14, 0, 43, 0, 2, 3, 4, 0, 51, 0, 4, 0, 0x1d, 0, 0,
        ],
    ]
    .concat();
    (ch, sh)
}

#[test]
fn handshake_joins_the_wire_facts_of_its_socket() {
    let mut t = TlsTable {
        libraries: vec!["openssl/3.0.19".to_owned()],
        ..TlsTable::default()
    };
    let (ch, sh) = hellos();
    t.hello(&hello(7, tls_dir::EGRESS, 1_100_000, &ch));
    t.hello(&hello(7, tls_dir::INGRESS, 2_000_000, &sh));
    // TLS 1.3 with ALPN offered: the record waits for the library's ALPN report.
    assert_eq!(
        t.handshake(&handshake(7, tls_outcome::ESTABLISHED, 1, tls_lib::OPENSSL)),
        None
    );
    assert_eq!(t.due(3_500_000 + ALPN_WAIT_NS - 1), vec![]);
    let r = t.alpn(&alpn(b"h2")).expect("the held record");
    assert_eq!(t.due(u64::MAX), vec![]);
    assert_eq!(r.facts.next_protocol.as_deref(), Some("h2"));
    assert_eq!(r.cookie_birth, Some((7, 5)));
    assert_eq!(r.process.map(|p| (p.pid, p.tid)), Some((10, 12)));
    assert_eq!(r.process.as_ref().map(TlsProcess::name), Some("curl"));
    let f = &r.facts;
    assert!(f.established);
    assert_eq!(f.version, Some(0x0304));
    assert_eq!(f.cipher, Some(0x1302));
    assert_eq!(f.curve, Some(0x1d));
    assert_eq!(f.server_name.as_deref(), Some("x.test"));
    assert_eq!(f.alpn_offered, vec!["h2".to_owned()]);
    assert_eq!(f.resumed, Some(false));
    assert_eq!(f.handshake_duration_us, Some(2500));
    assert_eq!(f.library.as_deref(), Some("openssl/3.0.19"));
    assert_eq!(f.role, Some(TlsRole::Client));
    assert_eq!(f.error, None);
    assert_eq!(f.source, "uprobe+wire");
    // At close: the facts for the connection record, and no second observer.tls record.
    let (facts, wire_only) = t.closed(7).expect("tls socket");
    assert_eq!(&facts, f);
    assert_eq!(wire_only, None);
    assert_eq!(t.closed(7), None);
}

#[test]
fn failures_name_their_reason() {
    let mut t = TlsTable::default();
    let (ch, _) = hellos();
    t.hello(&hello(8, tls_dir::EGRESS, 1_100_000, &ch));
    // The client rejected the certificate: it sent an alert, then its call failed.
    t.hello(&hello(
        8,
        tls_dir::EGRESS,
        1_150_000,
        &[21, 3, 3, 0, 2, 2, 48],
    ));
    let r = t
        .handshake(&handshake(8, tls_outcome::FAILED, -1, tls_lib::OPENSSL))
        .expect("failures are not held");
    assert!(!r.facts.established);
    assert_eq!(r.facts.error.as_deref(), Some("alert sent: unknown_ca"));
    assert_eq!(r.facts.library.as_deref(), Some("openssl"));
    // GnuTLS says why in its return value.
    t.hello(&hello(10, tls_dir::EGRESS, 1_100_000, &ch));
    let r = t
        .handshake(&handshake(10, tls_outcome::FAILED, -110, tls_lib::GNUTLS))
        .expect("failures are not held");
    assert_eq!(
        r.facts.error.as_deref(),
        Some("GNUTLS_E_PREMATURE_TERMINATION")
    );
    assert_eq!(r.facts.library.as_deref(), Some("gnutls"));
    // Abandoned, with an alert on the wire: the alert is the reason.
    t.hello(&hello(9, tls_dir::EGRESS, 1_100_000, &ch));
    t.hello(&hello(
        9,
        tls_dir::INGRESS,
        1_200_000,
        &[21, 3, 3, 0, 2, 2, 70],
    ));
    let r = t
        .handshake(&handshake(9, tls_outcome::ABANDONED, 0, tls_lib::OPENSSL))
        .expect("failures are not held");
    assert_eq!(
        r.facts.error.as_deref(),
        Some("alert received: protocol_version")
    );
}

#[test]
fn wire_only_sockets_get_a_record_at_close() {
    let mut t = TlsTable::default();
    let (ch, sh) = hellos();
    t.hello(&hello(3, tls_dir::INGRESS, 1_000, &ch));
    t.hello(&hello(3, tls_dir::EGRESS, 2_000, &sh));
    let (facts, record) = t.closed(3).expect("tls socket");
    assert_eq!(facts.role, Some(TlsRole::Server));
    assert!(facts.established);
    assert_eq!(facts.source, "wire");
    assert_eq!(facts.server_name.as_deref(), Some("x.test"));
    let record = record.expect("wire-only record");
    assert_eq!((record.start_ns, record.end_ns), (1_000, 2_000));
    // Plain-text sockets leave nothing.
    t.hello(&hello(4, tls_dir::EGRESS, 1, b"\x16GET"));
    assert_eq!(t.closed(4), None);
}
