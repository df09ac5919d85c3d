//! Differential tests: sigmesh's STUN reader and writer against webrtc-rs's `stun` crate.
//! `stun` encodes, sigmesh decodes (and the other way round); both must agree on every field.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use sigmesh_core::turn::stun::{self as sm, Class, Message};
use stun::attributes::{
    ATTR_DATA, ATTR_LIFETIME, ATTR_REALM, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS,
};
use stun::integrity::MessageIntegrity;
use stun::message::{self as wm, Getter, Setter};
use stun::xoraddr::XorMappedAddress;

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::from(ip), p)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::from(ip), p)),
    ]
}

const METHODS: [(wm::Method, u16); 10] = [
    (wm::METHOD_BINDING, 0x001),
    (wm::METHOD_ALLOCATE, 0x003),
    (wm::METHOD_REFRESH, 0x004),
    (wm::METHOD_SEND, 0x006),
    (wm::METHOD_DATA, 0x007),
    (wm::METHOD_CREATE_PERMISSION, 0x008),
    (wm::METHOD_CHANNEL_BIND, 0x009),
    (wm::METHOD_CONNECT, 0x00A),
    (wm::METHOD_CONNECTION_BIND, 0x00B),
    (wm::METHOD_CONNECTION_ATTEMPT, 0x00C),
];

fn class_of(c: u8) -> (wm::MessageClass, Class) {
    match c % 4 {
        0 => (wm::CLASS_REQUEST, Class::Request),
        1 => (wm::CLASS_INDICATION, Class::Indication),
        2 => (wm::CLASS_SUCCESS_RESPONSE, Class::Success),
        _ => (wm::CLASS_ERROR_RESPONSE, Class::Error),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// webrtc-rs encodes a TURN message; sigmesh reads the same method, class, txid, peers,
    /// lifetime, data and username, and checks the same MESSAGE-INTEGRITY.
    #[test]
    fn sigmesh_reads_what_stun_writes(
        mi in 0usize..10, c in any::<u8>(), txid in any::<[u8; 12]>(),
        peers in proptest::collection::vec(addr(), 0..4), lifetime in any::<u32>(),
        data in proptest::collection::vec(any::<u8>(), 0..64),
        user in "[0-9]{1,10}:[a-z]{1,8}", realm in "[a-z.]{1,12}", password in "[A-Za-z0-9+/=]{1,28}",
    ) {
        let (wc, sc) = class_of(c);
        let (wmethod, method) = METHODS[mi];
        let mut m = wm::Message::new();
        m.set_type(wm::MessageType::new(wmethod, wc));
        m.transaction_id = stun::agent::TransactionId(txid);
        m.write_header();
        for p in &peers {
            XorMappedAddress { ip: p.ip(), port: p.port() }.add_to_as(&mut m, ATTR_XOR_PEER_ADDRESS).unwrap();
        }
        m.add(ATTR_LIFETIME, &lifetime.to_be_bytes());
        m.add(ATTR_DATA, &data);
        m.add(ATTR_USERNAME, user.as_bytes());
        m.add(ATTR_REALM, realm.as_bytes());
        MessageIntegrity::new_long_term_integrity(user.clone(), realm.clone(), password.clone()).add_to(&mut m).unwrap();
        stun::fingerprint::FINGERPRINT.add_to(&mut m).unwrap();

        let r = Message::parse(&m.raw).unwrap();
        prop_assert_eq!((r.method, r.class, r.txid), (method, sc, txid));
        prop_assert_eq!(r.peer_addresses().unwrap(), peers);
        prop_assert_eq!(r.lifetime(), Some(lifetime));
        prop_assert_eq!(r.data_len(), data.len());
        prop_assert_eq!(r.username(), Some(user.clone()));
        prop_assert!(r.verify_integrity(&sm::long_term_key(&user, &realm, &password)));
        prop_assert!(!r.verify_integrity(&sm::long_term_key(&user, &realm, "other")));
    }

    /// sigmesh writes an error response; webrtc-rs decodes it, and its own MESSAGE-INTEGRITY and
    /// FINGERPRINT checks pass.
    #[test]
    fn stun_reads_what_sigmesh_writes(
        mi in 0usize..10, txid in any::<[u8; 12]>(), code in 300u16..700,
        user in "[0-9]{1,10}:[a-z]{1,8}", realm in "[a-z.]{1,12}", password in "[A-Za-z0-9+/=]{1,28}",
        peer in addr(),
    ) {
        let (wmethod, method) = METHODS[mi];
        let req = sm::Builder::new(method, Class::Request, &txid)
            .attribute(sm::attr::XOR_PEER_ADDRESS, &sm::encode_xor_address(peer, &txid))
            .finish();
        let req = Message::parse(&req).unwrap();
        let key = sm::long_term_key(&user, &realm, &password);
        let bytes = sm::error_response(&req, code, "Forbidden", Some(&key));

        let mut m = wm::Message::new();
        m.unmarshal_binary(&bytes).unwrap();
        prop_assert_eq!(m.typ, wm::MessageType::new(wmethod, wm::CLASS_ERROR_RESPONSE));
        prop_assert_eq!(m.transaction_id.0, txid);
        let mut ec = stun::error_code::ErrorCodeAttribute::default();
        ec.get_from(&m).unwrap();
        prop_assert_eq!(ec.code.0, code);
        stun::fingerprint::FINGERPRINT.check(&m).unwrap();
        MessageIntegrity::new_long_term_integrity(user, realm, password).check(&mut m).unwrap();

        // And a XOR address sigmesh encodes decodes the same in webrtc-rs.
        let mut pm = wm::Message::new();
        pm.transaction_id = stun::agent::TransactionId(txid);
        pm.write_header();
        pm.add(ATTR_XOR_PEER_ADDRESS, &sm::encode_xor_address(peer, &txid));
        let mut x = XorMappedAddress::default();
        x.get_from_as(&pm, ATTR_XOR_PEER_ADDRESS).unwrap();
        prop_assert_eq!(SocketAddr::new(x.ip, x.port), peer);
    }
}
