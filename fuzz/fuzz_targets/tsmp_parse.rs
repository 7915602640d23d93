//! TSMP packets from peers (IP protocol 99): the parser, the ping answer, and re-encoding of
//! every message it recognises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tstun_wrap::tsmp::{Message, Packet, answer, encode, parse};

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);
    if let Some(reply) = answer(data) {
        // Only a ping request is answered, with a pong back to its sender.
        let Some(Packet {
            src,
            dst,
            message: Message::PingRequest { data: ping },
        }) = parsed
        else {
            panic!("answered something that is not a ping request: {parsed:?}");
        };
        let pong = parse(&reply);
        assert_eq!(
            pong,
            Some(Packet {
                src: dst,
                dst: src,
                message: Message::Pong {
                    data: ping,
                    peerapi_port: 0
                }
            })
        );
    }
    if let Some(p) = parsed {
        // Every recognised message builds again, and parses back to itself.
        match p.message {
            Message::Malformed(_) | Message::Unknown(_) => {}
            m => {
                let again = encode(p.src, p.dst, &m).map(|b| parse(&b));
                assert_eq!(again, Ok(Some(p)));
            }
        }
    }
});
