use super::*;

fn u16be(v: usize) -> [u8; 2] {
    u16::try_from(v).expect("fits").to_be_bytes()
}

fn ext(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut out = kind.to_be_bytes().to_vec();
    out.extend(u16be(body.len()));
    out.extend(body);
    out
}

fn vec16(body: &[u8]) -> Vec<u8> {
    let mut out = u16be(body.len()).to_vec();
    out.extend(body);
    out
}

fn record(content: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![content, 3, 1];
    out.extend(u16be(body.len()));
    out.extend(body);
    out
}

fn handshake_msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("fits").to_be_bytes();
    let mut out = vec![kind, len[1], len[2], len[3]];
    out.extend(body);
    out
}

fn sni(name: &str) -> Vec<u8> {
    let mut entry = vec![0];
    entry.extend(vec16(name.as_bytes()));
    ext(0, &vec16(&entry))
}

fn alpn(protocols: &[&str]) -> Vec<u8> {
    let mut list = Vec::new();
    for p in protocols {
        list.push(u8::try_from(p.len()).expect("fits"));
        list.extend(p.as_bytes());
    }
    ext(16, &vec16(&list))
}

fn client_hello_bytes(session_id: &[u8], exts: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([7; 32]);
    body.push(u8::try_from(session_id.len()).expect("fits"));
    body.extend(session_id);
    body.extend(vec16(&[0x13, 0x01, 0x13, 0x02, 0xc0, 0x2f]));
    body.extend([1, 0]);
    body.extend(vec16(&exts.concat()));
    record(22, &handshake_msg(1, &body))
}

fn server_hello_bytes(
    random: [u8; 32],
    session_id: &[u8],
    cipher: u16,
    exts: &[Vec<u8>],
) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend(random);
    body.push(u8::try_from(session_id.len()).expect("fits"));
    body.extend(session_id);
    body.extend(cipher.to_be_bytes());
    body.push(0);
    body.extend(vec16(&exts.concat()));
    record(22, &handshake_msg(2, &body))
}

#[test]
fn client_hello_gives_sni_alpn_and_versions() {
    let bytes = client_hello_bytes(
        &[9; 32],
        &[
            ext(0xff01, &[0]),
            sni("tls.test"),
            alpn(&["h2", "http/1.1"]),
            // GREASE first, then 1.3 and 1.2.
            ext(43, &[6, 0x3a, 0x3a, 3, 4, 3, 3]),
        ],
    );
    assert_eq!(
        parse_segment(&bytes),
        vec![Message::ClientHello(ClientHello {
            server_name: Some("tls.test".to_owned()),
            alpn: vec!["h2".to_owned(), "http/1.1".to_owned()],
            session_id: vec![9; 32],
            max_version: 0x0304,
            offers_psk: false,
        })]
    );
}

#[test]
fn truncated_client_hello_keeps_what_was_complete() {
    let mut exts = vec![sni("a.example"), alpn(&["h2"])];
    exts.push(ext(21, &[0; 600]));
    let bytes = client_hello_bytes(&[], &exts);
    let Message::ClientHello(ch) = &parse_segment(&bytes[..200])[0] else {
        panic!("not a ClientHello");
    };
    assert_eq!(ch.server_name.as_deref(), Some("a.example"));
    assert_eq!(ch.alpn, vec!["h2".to_owned()]);
    assert_eq!(ch.max_version, 0x0303);
}

#[test]
fn tls13_server_hello_then_encrypted_records_stop() {
    let mut bytes = server_hello_bytes(
        [1; 32],
        &[5; 32],
        0x1302,
        &[ext(43, &[3, 4]), ext(51, &[0, 0x1d, 0, 2, 9, 9])],
    );
    bytes.extend(record(20, &[1]));
    // Application data (or TLS 1.3's encrypted handshake): never parsed.
    bytes.extend(record(23, &[22, 3, 3, 0, 1, 0]));
    assert_eq!(
        parse_segment(&bytes),
        vec![Message::ServerHello(ServerHello {
            version: 0x0304,
            cipher: 0x1302,
            group: Some(0x1d),
            session_id: vec![5; 32],
            psk: false,
            alpn: None,
            retry: false,
        })]
    );
}

#[test]
fn tls12_server_hello_gives_alpn_and_hello_retry_is_marked() {
    let bytes = server_hello_bytes([2; 32], &[], 0xc02f, &[alpn(&["http/1.1"])]);
    let Message::ServerHello(sh) = &parse_segment(&bytes)[0] else {
        panic!("not a ServerHello");
    };
    assert_eq!((sh.version, sh.cipher), (0x0303, 0xc02f));
    assert_eq!(sh.alpn.as_deref(), Some("http/1.1"));
    assert!(!sh.retry);
    let hrr = server_hello_bytes(HRR_RANDOM, &[], 0x1301, &[ext(43, &[3, 4])]);
    let Message::ServerHello(sh) = &parse_segment(&hrr)[0] else {
        panic!("not a ServerHello");
    };
    assert!(sh.retry);
}

#[test]
fn alerts_and_garbage() {
    assert_eq!(
        parse_segment(&record(21, &[2, 70])),
        vec![Message::Alert(Alert {
            level: 2,
            description: 70
        })]
    );
    assert_eq!(parse_segment(b"GET / HTTP/1.1\r\n"), vec![]);
    assert_eq!(parse_segment(&[22, 3]), vec![]);
    assert_eq!(parse_segment(&[]), vec![]);
    // A handshake record whose message is not a hello (TLS 1.2's encrypted Finished).
    assert_eq!(parse_segment(&record(22, &[0x9f, 1, 2, 3, 4, 5])), vec![]);
}
