//! Unit tests of `turn::stun`.
use super::*;

#[test]
fn type_roundtrip() {
    for m in [
        method::ALLOCATE,
        method::CREATE_PERMISSION,
        method::CHANNEL_BIND,
        method::CONNECT,
        0xFFF,
    ] {
        for c in [
            Class::Request,
            Class::Indication,
            Class::Success,
            Class::Error,
        ] {
            assert_eq!(split_type(join_type(m, c)), (m, c));
        }
    }
    // Known wire values.
    assert_eq!(join_type(method::ALLOCATE, Class::Request), 0x0003);
    assert_eq!(join_type(method::ALLOCATE, Class::Success), 0x0103);
    assert_eq!(join_type(method::CREATE_PERMISSION, Class::Error), 0x0118);
    assert_eq!(join_type(method::SEND, Class::Indication), 0x0016);
    assert_eq!(join_type(method::DATA, Class::Indication), 0x0017);
}

#[test]
fn crc_known_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn xor_address_roundtrip() {
    let txid = [7u8; 12];
    for a in [
        "10.0.0.1:3478",
        "[::ffff:10.0.0.1]:1",
        "[2001:db8::1]:65535",
        "0.0.0.0:0",
    ] {
        let a: SocketAddr = a.parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(xor_address(&encode_xor_address(a, &txid), &txid), Ok(a));
    }
    assert_eq!(xor_address(&[0, 1, 0], &txid), Err(Error::Address));
    assert_eq!(
        xor_address(&[0, 3, 0, 0, 0, 0, 0, 0], &txid),
        Err(Error::Address)
    );
}

#[test]
fn rfc5769_request_vector() {
    // RFC 5769 §2.1: sample request, short-term password "VOkJxbRl1RmTxUk/WvJxBt".
    let hex = "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74\
               002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020\
               000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf";
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0))
        .collect();
    let m = Message::parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((m.method, m.class), (method::BINDING, Class::Request));
    assert_eq!(m.username().as_deref(), Some("evtj:h6vY"));
    assert!(m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
    assert!(!m.verify_integrity(b"wrong"));
}

#[test]
fn error_response_reads_back() {
    let req = Builder::new(method::CREATE_PERMISSION, Class::Request, &[1; 12])
        .attribute(
            attr::XOR_PEER_ADDRESS,
            &encode_xor_address(([10, 0, 0, 1], 0).into(), &[1; 12]),
        )
        .finish();
    let req = Message::parse(&req).unwrap_or_else(|e| panic!("{e}"));
    let key = long_term_key("u", "r", "p");
    let resp = error_response(&req, 403, "Forbidden", Some(&key));
    let m = Message::parse(&resp).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (m.method, m.class, m.txid),
        (method::CREATE_PERMISSION, Class::Error, [1; 12])
    );
    assert_eq!(m.error_code(), Some(403));
    assert!(m.verify_integrity(&key));
}

#[test]
fn channel_data() {
    let cd = ChannelData::parse(&[0x40, 0x01, 0, 3, 1, 2, 3, 0]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((cd.channel, cd.data), (0x4001, &[1u8, 2, 3][..]));
    assert_eq!(
        ChannelData::parse(&[0x40, 0x01, 0, 9, 1]),
        Err(Error::Length)
    );
}
