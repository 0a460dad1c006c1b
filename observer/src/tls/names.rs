//! Names for the numbers of TLS and its libraries: IANA cipher suites, groups and alerts
//! (the TLS parameters registry) and `GnuTLS` error codes (`gnutls/gnutls.h`). Unknown numbers
//! come out as hex or as the number.

/// `tls.version`: "1.3", "1.2", …
#[must_use]
pub fn version(v: u16) -> Option<&'static str> {
    Some(match v {
        0x0304 => "1.3",
        0x0303 => "1.2",
        0x0302 => "1.1",
        0x0301 => "1.0",
        0x0300 => "3.0",
        _ => return None,
    })
}

/// The protocol of `tls.version`: SSL 3.0 is "ssl", the rest "tls".
#[must_use]
pub fn version_protocol(v: u16) -> &'static str {
    if v == 0x0300 { "ssl" } else { "tls" }
}

const CIPHERS: &[(u16, &str)] = &[
    (0x1301, "TLS_AES_128_GCM_SHA256"),
    (0x1302, "TLS_AES_256_GCM_SHA384"),
    (0x1303, "TLS_CHACHA20_POLY1305_SHA256"),
    (0x1304, "TLS_AES_128_CCM_SHA256"),
    (0x1305, "TLS_AES_128_CCM_8_SHA256"),
    (0x009c, "TLS_RSA_WITH_AES_128_GCM_SHA256"),
    (0x009d, "TLS_RSA_WITH_AES_256_GCM_SHA384"),
    (0x009e, "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256"),
    (0x009f, "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384"),
    (0x002f, "TLS_RSA_WITH_AES_128_CBC_SHA"),
    (0x0035, "TLS_RSA_WITH_AES_256_CBC_SHA"),
    (0xc009, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"),
    (0xc00a, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"),
    (0xc013, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"),
    (0xc014, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"),
    (0xc023, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"),
    (0xc027, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256"),
    (0xc02b, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
    (0xc02c, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
    (0xc02f, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
    (0xc030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
    (0xcca8, "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
    (0xcca9, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
    (0xccaa, "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
];

/// `tls.cipher`: the IANA name, else "0xHHHH".
#[must_use]
pub fn cipher(id: u16) -> String {
    CIPHERS
        .iter()
        .find(|(n, _)| *n == id)
        .map_or_else(|| format!("0x{id:04X}"), |(_, name)| (*name).to_owned())
}

/// `tls.curve`: the key-exchange group.
#[must_use]
pub fn group(id: u16) -> String {
    match id {
        0x0017 => "secp256r1".to_owned(),
        0x0018 => "secp384r1".to_owned(),
        0x0019 => "secp521r1".to_owned(),
        0x001d => "x25519".to_owned(),
        0x001e => "x448".to_owned(),
        0x0100 => "ffdhe2048".to_owned(),
        0x0101 => "ffdhe3072".to_owned(),
        0x11ec => "X25519MLKEM768".to_owned(),
        other => format!("0x{other:04X}"),
    }
}

/// An alert's description (RFC 8446 §6), as the RFCs spell it.
#[must_use]
pub fn alert(description: u8) -> String {
    match description {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        22 => "record_overflow",
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        109 => "missing_extension",
        110 => "unsupported_extension",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        other => return format!("alert_{other}"),
    }
    .to_owned()
}

/// A `GnuTLS` error code as `gnutls_strerror_name` spells it.
#[must_use]
pub fn gnutls_error(code: i32) -> String {
    match code {
        -9 => "GNUTLS_E_UNEXPECTED_PACKET_LENGTH",
        -10 => "GNUTLS_E_INVALID_SESSION",
        -12 => "GNUTLS_E_FATAL_ALERT_RECEIVED",
        -15 => "GNUTLS_E_UNEXPECTED_PACKET",
        -16 => "GNUTLS_E_WARNING_ALERT_RECEIVED",
        -19 => "GNUTLS_E_UNEXPECTED_HANDSHAKE_PACKET",
        -21 => "GNUTLS_E_UNWANTED_ALGORITHM",
        -43 => "GNUTLS_E_NO_CERTIFICATE_FOUND",
        -53 => "GNUTLS_E_PUSH_ERROR",
        -54 => "GNUTLS_E_PULL_ERROR",
        -110 => "GNUTLS_E_PREMATURE_TERMINATION",
        -249 => "GNUTLS_E_NO_TEMPORARY_RSA_PARAMS",
        -324 => "GNUTLS_E_UNSUPPORTED_VERSION_PACKET",
        -348 => "GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR",
        -7 => "GNUTLS_E_UNKNOWN_CIPHER_SUITE",
        other => return format!("GNUTLS_E_{}", other.unsigned_abs()),
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(version(0x0304), Some("1.3"));
        assert_eq!(version(0x0a0a), None);
        assert_eq!(cipher(0x1302), "TLS_AES_256_GCM_SHA384");
        assert_eq!(cipher(0xc02f), "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
        assert_eq!(cipher(0x1234), "0x1234");
        assert_eq!(group(0x001d), "x25519");
        assert_eq!(alert(48), "unknown_ca");
        assert_eq!(gnutls_error(-12), "GNUTLS_E_FATAL_ALERT_RECEIVED");
    }
}
