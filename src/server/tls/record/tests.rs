//! The record layer against a mirror of itself (the peer's side built from
//! the same keys), so that every record a client could send can be made:
//! data of every size, tampering, replays, alerts of each level, key
//! updates well and badly formed, renegotiation, padding, the
//! confidentiality limit. Interoperation with a real client (rustls) is in
//! `tls::tests`.

use super::*;

const CASES: [(Version, Cipher); 6] = [
    (Version::Tls13, Cipher::Aes128Gcm),
    (Version::Tls13, Cipher::Aes256Gcm),
    (Version::Tls13, Cipher::Chacha20Poly1305),
    (Version::Tls12, Cipher::Aes128Gcm),
    (Version::Tls12, Cipher::Aes256Gcm),
    (Version::Tls12, Cipher::Chacha20Poly1305),
];

fn records(version: Version, cipher: Cipher, tx: Direction, rx: Direction) -> Records {
    Records {
        version,
        cipher,
        tx,
        rx,
        limit: u64::MAX,
        key_updates_left: KEY_UPDATES_ALLOWED,
        warnings_left: WARNINGS_ALLOWED,
        renegotiation_refused: false,
        cache_slot: next_cache_slot(),
    }
}

/// A direction from a fixed byte pattern (TLS 1.3: as a traffic secret).
fn direction(version: Version, cipher: Cipher, seed: u8) -> Direction {
    let bytes: Vec<u8> = (0..48u8).map(|i| i.wrapping_mul(31) ^ seed).collect();
    match version {
        Version::Tls13 => {
            let len = if cipher == Cipher::Aes256Gcm { 48 } else { 32 };
            let secret = Secret::new(&bytes[..len]).unwrap();
            Direction::from_secret(cipher, secret, 0).unwrap()
        }
        Version::Tls12 => {
            Direction::from_parts(&bytes[..cipher.key_len()], &bytes[32..44], 0).unwrap()
        }
    }
}

/// The server's record layer and the client's mirror of it.
fn pair(version: Version, cipher: Cipher) -> (Records, Records) {
    let server = records(
        version,
        cipher,
        direction(version, cipher, 1),
        direction(version, cipher, 2),
    );
    let client = records(
        version,
        cipher,
        direction(version, cipher, 2),
        direction(version, cipher, 1),
    );
    (server, client)
}

/// Opens every record in `wire`, in order.
fn open_all(to: &mut Records, wire: &mut [u8]) -> Result<(Vec<u8>, Vec<u8>, bool), Fatal> {
    let mut keys = to.keys();
    let mut data = Vec::new();
    let mut replies = Vec::new();
    let mut closed = false;
    let mut at = 0;
    while at < wire.len() {
        let len = record_len(&wire[at..])?.expect("a whole record");
        match keys.open(&mut wire[at..at + len], &mut replies)? {
            Input::Data(plain) => data.extend_from_slice(plain),
            Input::Nothing => {}
            Input::Closed => closed = true,
        }
        at += len;
    }
    Ok((data, replies, closed))
}

fn seal(from: &mut Records, typ: u8, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    from.keys().seal_record(typ, plain, &mut out).unwrap();
    out
}

fn alert_of(result: Result<(Vec<u8>, Vec<u8>, bool), Fatal>) -> Option<u8> {
    match result {
        Ok(_) => panic!("accepted"),
        Err(fatal) => fatal.alert,
    }
}

#[test]
fn data_of_every_size_goes_both_ways() {
    for (version, cipher) in CASES {
        let (mut server, mut client) = pair(version, cipher);
        for len in [0, 1, 100, MAX_FRAGMENT_LEN, MAX_FRAGMENT_LEN + 1, 40_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut wire = Vec::new();
            client.keys().seal_data(&plain, &mut wire).unwrap();
            if len == 0 {
                // Nothing to seal, nothing sent.
                assert!(wire.is_empty());
            }
            let (data, replies, closed) = open_all(&mut server, &mut wire).unwrap();
            assert_eq!(data, plain, "{version:?} {cipher:?} {len}");
            assert!(replies.is_empty() && !closed);
            let mut wire = Vec::new();
            server.keys().seal_data(&plain, &mut wire).unwrap();
            assert_eq!(open_all(&mut client, &mut wire).unwrap().0, plain);
        }
        // An empty data record is allowed (and delivers nothing).
        let mut wire = seal(&mut client, APPLICATION_DATA, b"");
        assert_eq!(open_all(&mut server, &mut wire).unwrap().0, b"");
    }
}

#[test]
fn a_changed_byte_a_replay_or_a_short_record_fails_authentication() {
    for (version, cipher) in CASES {
        let (mut server, mut client) = pair(version, cipher);
        let wire = seal(&mut client, APPLICATION_DATA, b"hello");
        for at in HEADER_LEN..wire.len() {
            let mut bad = wire.clone();
            bad[at] ^= 1;
            let mut fresh = pair(version, cipher).0;
            assert_eq!(
                alert_of(open_all(&mut fresh, &mut bad)),
                Some(BAD_RECORD_MAC)
            );
        }
        assert!(open_all(&mut server, &mut wire.clone()).is_ok());
        // The same record again: the sequence number has moved on.
        let replayed = alert_of(open_all(&mut server, &mut wire.clone()));
        assert_eq!(replayed, Some(BAD_RECORD_MAC), "{version:?} {cipher:?}");
        let mut short = vec![APPLICATION_DATA, 3, 3, 0, 3, 1, 2, 3];
        let mut fresh = pair(version, cipher).0;
        assert_eq!(
            alert_of(open_all(&mut fresh, &mut short)),
            Some(BAD_RECORD_MAC)
        );
    }
}

#[test]
fn record_lengths_are_checked_before_the_record_is_whole() {
    assert!(record_len(&[23, 3, 3]).unwrap().is_none());
    assert!(record_len(&[23, 3, 3, 0, 2, 0]).unwrap().is_none());
    assert_eq!(record_len(&[23, 3, 3, 0, 1, 0]).unwrap(), Some(6));
    let too_long = (MAX_RECORD_LEN - HEADER_LEN + 1) as u16;
    let [hi, lo] = too_long.to_be_bytes();
    let err = record_len(&[23, 3, 3, hi, lo]).unwrap_err();
    assert_eq!(err.alert, Some(RECORD_OVERFLOW));
    // TLS 1.3 allows less expansion than TLS 1.2.
    let (mut server, _) = pair(Version::Tls13, Cipher::Aes128Gcm);
    let len = MAX_FRAGMENT_LEN + MAX_EXPANSION_TLS13 + 1;
    let mut wire = vec![0; HEADER_LEN + len];
    wire[..HEADER_LEN].copy_from_slice(&header(APPLICATION_DATA, len).unwrap());
    assert_eq!(
        alert_of(open_all(&mut server, &mut wire)),
        Some(RECORD_OVERFLOW)
    );
}

#[test]
fn tls13_padding_is_removed_and_a_record_without_a_type_refused() {
    for cipher in [Cipher::Aes128Gcm, Cipher::Chacha20Poly1305] {
        let (mut server, mut client) = pair(Version::Tls13, cipher);
        // The inner plaintext "abc", type 23, then three zeros of padding.
        let mut wire = seal(&mut client, 0, b"abc\x17\0\0");
        assert_eq!(open_all(&mut server, &mut wire).unwrap().0, b"abc");
        let mut wire = seal(&mut client, 0, b"\0\0");
        let alert = alert_of(open_all(&mut server, &mut wire));
        assert_eq!(alert, Some(UNEXPECTED_MESSAGE));
    }
}

#[test]
fn records_the_protocol_does_not_allow_here_are_refused() {
    // TLS 1.3: everything after the handshake is protected application data.
    let (mut server, _) = pair(Version::Tls13, Cipher::Aes128Gcm);
    let mut plain_alert = vec![ALERT, 3, 3, 0, 2, 1, 0];
    let alert = alert_of(open_all(&mut server, &mut plain_alert));
    assert_eq!(alert, Some(UNEXPECTED_MESSAGE));
    // TLS 1.2: no change_cipher_spec after the handshake, no unknown types.
    for typ in [CHANGE_CIPHER_SPEC, 24, 99] {
        let (mut server, mut client) = pair(Version::Tls12, Cipher::Aes128Gcm);
        let mut wire = seal(&mut client, typ, &[1]);
        let alert = alert_of(open_all(&mut server, &mut wire));
        assert_eq!(alert, Some(UNEXPECTED_MESSAGE), "type {typ}");
    }
    // TLS 1.3: an inner type that is not data, alert or handshake.
    let (mut server, mut client) = pair(Version::Tls13, Cipher::Aes128Gcm);
    let mut wire = seal(&mut client, CHANGE_CIPHER_SPEC, &[1]);
    assert_eq!(
        alert_of(open_all(&mut server, &mut wire)),
        Some(UNEXPECTED_MESSAGE)
    );
}

#[test]
fn alerts_close_end_or_are_counted() {
    for (version, cipher) in CASES {
        let (mut server, mut client) = pair(version, cipher);
        let mut wire = seal(&mut client, ALERT, &[WARNING, CLOSE_NOTIFY]);
        assert!(open_all(&mut server, &mut wire).unwrap().2, "close_notify");
        // A fatal alert ends the connection without one back.
        let mut wire = seal(&mut client, ALERT, &[FATAL, 40]);
        assert_eq!(alert_of(open_all(&mut server, &mut wire)), None);
        for bad in [&[WARNING][..], &[WARNING, 0, 0]] {
            let (mut server, mut client) = pair(version, cipher);
            let mut wire = seal(&mut client, ALERT, bad);
            assert_eq!(
                alert_of(open_all(&mut server, &mut wire)),
                Some(DECODE_ERROR)
            );
        }
        let (mut server, mut client) = pair(version, cipher);
        let mut wire = seal(&mut client, ALERT, &[3, 40]);
        let alert = alert_of(open_all(&mut server, &mut wire));
        assert_eq!(alert, Some(ILLEGAL_PARAMETER));
    }
    // TLS 1.3 allows only user_canceled as a warning.
    let (mut server, mut client) = pair(Version::Tls13, Cipher::Aes128Gcm);
    let mut wire = seal(&mut client, ALERT, &[WARNING, USER_CANCELED]);
    assert!(open_all(&mut server, &mut wire).is_ok());
    let mut wire = seal(&mut client, ALERT, &[WARNING, 42]);
    assert_eq!(
        alert_of(open_all(&mut server, &mut wire)),
        Some(DECODE_ERROR)
    );
    // TLS 1.2: four warnings between data records, not five.
    let (mut server, mut client) = pair(Version::Tls12, Cipher::Aes128Gcm);
    for round in 0..3 {
        for _ in 0..WARNINGS_ALLOWED {
            let mut wire = seal(&mut client, ALERT, &[WARNING, 42]);
            assert!(open_all(&mut server, &mut wire).is_ok(), "round {round}");
        }
        let mut wire = seal(&mut client, APPLICATION_DATA, b"x");
        assert!(open_all(&mut server, &mut wire).is_ok());
    }
    for _ in 0..WARNINGS_ALLOWED {
        let mut wire = seal(&mut client, ALERT, &[WARNING, 42]);
        assert!(open_all(&mut server, &mut wire).is_ok());
    }
    let mut wire = seal(&mut client, ALERT, &[WARNING, 42]);
    assert_eq!(
        alert_of(open_all(&mut server, &mut wire)),
        Some(UNEXPECTED_MESSAGE)
    );
}

/// The client sends a key update (asking for ours or not) and switches;
/// the server follows, answers when asked, and both sides keep talking.
#[test]
fn key_updates_are_followed_and_answered() {
    for cipher in [
        Cipher::Aes128Gcm,
        Cipher::Aes256Gcm,
        Cipher::Chacha20Poly1305,
    ] {
        let (mut server, mut client) = pair(Version::Tls13, cipher);
        for request in [0u8, 1, 1, 0] {
            let mut wire = seal(&mut client, HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, request]);
            client.tx.update(cipher).unwrap();
            client.keys().seal_data(b"after", &mut wire).unwrap();
            let (data, mut replies, _) = open_all(&mut server, &mut wire).unwrap();
            assert_eq!(data, b"after");
            // The answer, under the server's old key, only when asked.
            assert_eq!(replies.is_empty(), request == 0, "{cipher:?}");
            server.keys().seal_data(b"reply", &mut replies).unwrap();
            let (data, more, _) = open_all(&mut client, &mut replies).unwrap();
            assert_eq!(data, b"reply");
            assert!(more.is_empty(), "the server's update asks for none back");
        }
    }
}

#[test]
fn malformed_or_unexpected_handshake_messages_are_refused() {
    let cases: [(&[u8], u8); 6] = [
        (&[KEY_UPDATE, 0, 0, 1, 2], ILLEGAL_PARAMETER),
        (&[KEY_UPDATE, 0, 0, 2, 0, 0], UNEXPECTED_MESSAGE),
        (&[KEY_UPDATE, 0, 0, 1], UNEXPECTED_MESSAGE),
        // Data after the update in the same record: it would span keys.
        (
            &[KEY_UPDATE, 0, 0, 1, 0, KEY_UPDATE, 0, 0, 1, 0],
            UNEXPECTED_MESSAGE,
        ),
        (&[4, 0, 0, 1, 0], UNEXPECTED_MESSAGE),
        (&[CLIENT_HELLO, 0, 0, 1, 0], UNEXPECTED_MESSAGE),
    ];
    for (message, expected) in cases {
        let (mut server, mut client) = pair(Version::Tls13, Cipher::Aes128Gcm);
        let mut wire = seal(&mut client, HANDSHAKE, message);
        let alert = alert_of(open_all(&mut server, &mut wire));
        assert_eq!(alert, Some(expected), "{message:?}");
    }
}

#[test]
fn key_updates_without_data_between_are_limited() {
    let cipher = Cipher::Aes128Gcm;
    let (mut server, mut client) = pair(Version::Tls13, cipher);
    let mut update = |server: &mut Records| {
        let mut wire = seal(&mut client, HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0]);
        client.tx.update(cipher).unwrap();
        open_all(server, &mut wire)
    };
    for _ in 0..KEY_UPDATES_ALLOWED {
        assert!(update(&mut server).is_ok());
    }
    assert_eq!(alert_of(update(&mut server)), Some(UNEXPECTED_MESSAGE));
}

#[test]
fn tls12_renegotiation_is_refused_once_then_fatal() {
    let (mut server, mut client) = pair(Version::Tls12, Cipher::Aes256Gcm);
    let hello = [CLIENT_HELLO, 0, 0, 2, 3, 3];
    let mut wire = seal(&mut client, HANDSHAKE, &hello);
    let (_, mut replies, _) = open_all(&mut server, &mut wire).unwrap();
    // A no_renegotiation warning, which the client may ignore.
    let len = record_len(&replies).unwrap().unwrap();
    assert_eq!(len, replies.len());
    let mut ignored = Vec::new();
    let opened = client.keys().open(&mut replies, &mut ignored).ok();
    assert_eq!(opened, Some(Input::Nothing));
    let mut wire = seal(&mut client, HANDSHAKE, &hello);
    assert_eq!(
        alert_of(open_all(&mut server, &mut wire)),
        Some(UNEXPECTED_MESSAGE)
    );
}

/// Near the suite's limit TLS 1.3 moves to a fresh key on its own; TLS 1.2
/// cannot, and ends the connection instead of going over.
#[test]
fn the_confidentiality_limit_updates_keys_or_ends_the_connection() {
    let (mut server, mut client) = pair(Version::Tls13, Cipher::Aes128Gcm);
    server.limit = 4;
    let mut wire = Vec::new();
    for i in 0..20u8 {
        server.keys().seal_data(&[i], &mut wire).unwrap();
    }
    let (data, replies, _) = open_all(&mut client, &mut wire).unwrap();
    assert_eq!(data, (0..20).collect::<Vec<u8>>());
    assert!(replies.is_empty());
    assert!(server.tx.seq < 4);
    let (mut server, _) = pair(Version::Tls12, Cipher::Aes128Gcm);
    server.limit = 4;
    let mut wire = Vec::new();
    let mut keys = server.keys();
    for i in 0..3u8 {
        keys.seal_data(&[i], &mut wire).unwrap();
    }
    assert!(keys.seal_data(b"over", &mut wire).is_err());
}

#[test]
fn a_fatal_alert_of_ours_reaches_the_peer() {
    for (version, cipher) in CASES {
        let (mut server, mut client) = pair(version, cipher);
        let mut wire = Vec::new();
        server.keys().seal_alert(BAD_RECORD_MAC, &mut wire).unwrap();
        assert_eq!(alert_of(open_all(&mut client, &mut wire)), None);
        let mut wire = Vec::new();
        server.keys().seal_alert(CLOSE_NOTIFY, &mut wire).unwrap();
        assert!(open_all(&mut client, &mut wire).unwrap().2);
    }
}

/// The keys of a traffic secret, checked the way a connection is taken
/// over: a secret rustls moved on from is caught up with, one that does
/// not lead to rustls's keys is refused.
#[test]
fn captured_secrets_must_lead_to_rustlss_keys() {
    let cipher = Cipher::Aes256Gcm;
    let secret = Secret::new(&[7; 48]).unwrap();
    let mut updated = Direction::from_secret(cipher, secret.clone(), 0).unwrap();
    updated.update(cipher).unwrap();
    updated.update(cipher).unwrap();
    let key = updated.key[..32].to_vec();
    let iv = updated.iv.to_vec();
    let caught = catch_up(cipher, secret.clone(), 9, &key, &iv).unwrap();
    assert_eq!(
        (caught.key, caught.iv, caught.seq),
        (updated.key, updated.iv, 9)
    );
    let other = Secret::new(&[8; 48]).unwrap();
    assert!(catch_up(cipher, other, 9, &key, &iv).is_none());
}

proptest::proptest! {
    /// Whatever bytes arrive as a record, opening it answers without a
    /// panic, and a record that is not exactly what the peer sealed never
    /// yields data.
    #[test]
    fn any_record_is_answered_and_only_sealed_ones_open(
        case in 0..CASES.len(),
        typ in proptest::prelude::any::<u8>(),
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        flips in proptest::collection::vec((0usize..400, 1u8..=255), 1..4),
    ) {
        let (version, cipher) = CASES[case];
        let (mut server, mut client) = pair(version, cipher);
        // Random bytes under a valid header.
        let mut record = header(typ, body.len()).unwrap().to_vec();
        record.extend_from_slice(&body);
        let mut replies = Vec::new();
        let opened = server.keys().open(&mut record, &mut replies);
        proptest::prop_assert!(!matches!(opened, Ok(Input::Data(_))));
        // A sealed record with bytes changed after its header.
        let (mut server, _) = pair(version, cipher);
        let mut sealed = seal(&mut client, APPLICATION_DATA, &body);
        let original = sealed.clone();
        let len = sealed.len();
        for (at, flip) in flips {
            sealed[HEADER_LEN + at % (len - HEADER_LEN)] ^= flip;
        }
        // Two flips of one byte may cancel out.
        proptest::prop_assume!(sealed != original);
        let opened = server.keys().open(&mut sealed, &mut replies);
        proptest::prop_assert!(opened.is_err());
    }
}
