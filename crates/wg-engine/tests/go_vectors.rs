//! Bytes made by Tailscale's own Go code (tailscale.com v1.98.5: `disco`, `derp`,
//! `types/key`), checked against ours. They were printed by a ten-line Go program calling
//! `disco.Ping/Pong/CallMeMaybe.AppendMarshal`, `DiscoPrivate.Shared(..).Seal`,
//! `json.Marshal(derp.ClientInfo{..})` and `NodePrivate.SealTo`, with private keys of 32
//! equal bytes (0x11, 0x22 for disco; 0x33 client and 0x44 server for DERP). Go's boxes use
//! random nonces, so these prove that we open what Go seals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tailcfg::key::{DiscoPrivate, NodePrivate, NodePublic};
use wg_engine::derp::{ClientInfo, ServerInfo};
use wg_engine::disco::{self, CallMeMaybe, Message, Ping, Pong};
use wg_engine::nacl::SharedKey;

const DISCO_PING_PACKET: &str = "5453f09f92ac7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f131becce7a00f57f26df42d88d0d6c5176c2c5c994b973ea3786140b9e3ee0925827d079043d16238cc1ceba4fc9c7a187b6916f0900e547fb7f4b5d12d4f7ba6708d4b02492746c4c6db10a771d98f2bc57063d0a5c92a06244";
const DISCO_PONG: &str = "020009000000000000000000000020010db8000000000000000000000001a2a9";
const DISCO_CALL_ME_MAYBE: &str =
    "030000000000000000000000ffffc0a80102a2a920010db80000000000000000000000020001";
const CLIENT_INFO_JSON: &str = r#"{"version":2,"CanAckPings":true}"#;
const CLIENT_INFO_BOX: &str = "9abf656f300f4d5d0ad03cfcaae1f7cc754b80658316c42c84f7e7638f9b15d98a93f76bae3db2b4f740f2190cdd5eeeed093492b0a4f3fa787061a57419ac517e2e4ee16f3e62d4";
const SERVER_INFO_BOX: &str = "317836d16a2e63f1dbce77235945b29f753ce3b185def43f3a748a53993d871f189c6a06e2aa90519483f917b7928c65c925cc1a2a";

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn open_go_disco_ping() {
    let sender = DiscoPrivate::from_bytes([0x11; 32]);
    let mut receiver = disco::Keys::new(DiscoPrivate::from_bytes([0x22; 32]));
    receiver.shared(&sender.public());
    let (from, msg) = receiver.open(&h(DISCO_PING_PACKET)).unwrap();
    assert_eq!(from, sender.public());
    assert_eq!(
        msg,
        Message::Ping(Ping {
            tx_id: [1; 12],
            node_key: Some(NodePublic::from_bytes([0xaa; 32])),
            padding: 3,
        })
    );
    assert_eq!(
        disco::classify(&h(DISCO_PING_PACKET)),
        disco::PacketKind::Disco { geneve: false }
    );
}

#[test]
fn disco_plaintexts_match_go() {
    let mut tx_id = [0; 12];
    tx_id[0] = 9;
    let pong = Message::Pong(Pong {
        tx_id,
        src: "[2001:db8::1]:41641".parse().unwrap(),
    });
    let mut b = Vec::new();
    pong.emit(&mut b);
    assert_eq!(hex::encode(&b), DISCO_PONG);
    assert_eq!(Message::parse(&h(DISCO_PONG)).unwrap(), pong);

    let cmm = Message::CallMeMaybe(CallMeMaybe {
        endpoints: vec![
            "192.168.1.2:41641".parse().unwrap(),
            "[2001:db8::2]:1".parse().unwrap(),
        ],
    });
    let mut b = Vec::new();
    cmm.emit(&mut b);
    assert_eq!(hex::encode(&b), DISCO_CALL_ME_MAYBE);
    assert_eq!(Message::parse(&h(DISCO_CALL_ME_MAYBE)).unwrap(), cmm);
}

#[test]
fn derp_client_and_server_info_match_go() {
    let client = NodePrivate::from_bytes([0x33; 32]);
    let server = NodePrivate::from_bytes([0x44; 32]);
    let ours = serde_json::to_string(&ClientInfo {
        version: 2,
        can_ack_pings: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(ours, CLIENT_INFO_JSON);

    // What the server does with Go's ClientInfo box, and what the client does with Go's
    // ServerInfo box.
    let at_server = SharedKey::node(&server, &client.public());
    assert_eq!(
        at_server.open(&h(CLIENT_INFO_BOX)).unwrap(),
        CLIENT_INFO_JSON.as_bytes()
    );
    let at_client = SharedKey::node(&client, &server.public());
    let si: ServerInfo =
        serde_json::from_slice(&at_client.open(&h(SERVER_INFO_BOX)).unwrap()).unwrap();
    assert_eq!(si.version, 2);
}
