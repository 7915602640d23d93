//! The kernel's answers on osrouter's netlink sockets: rtnetlink acknowledgements (addresses,
//! routes, policy rules) and the answers to an nf_tables batch. A datagram there comes from the
//! kernel, but the readers take nothing on trust: they must refuse or read, never panic.
//!
//! Input: one datagram (the seeds are real ones). It is read by every reader, as one datagram
//! and cut in two, for a batch that began with sequence number 1 and sent messages 2 to 4.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osrouter::fuzzing::{BatchOutcome, BatchReplies, acks, route_reply};

const BEGIN: u32 = 1;
const SEQS: std::ops::RangeInclusive<u32> = 2..=4;

fn check_outcome(b: &BatchReplies) {
    if let BatchOutcome::Refused { seq, errno, .. } = b.outcome() {
        assert!(seq == BEGIN || SEQS.contains(&seq), "refusal for {seq}");
        assert!((1..4096).contains(&errno), "errno {errno}");
    }
}

fuzz_target!(|data: &[u8]| {
    let parsed = acks(data);
    if let Ok(list) = &parsed {
        for &(seq, errno) in list {
            assert!((0..4096).contains(&errno), "errno {errno}");
            // Both readers check lengths alike: what one lists, the other finds.
            assert_eq!(route_reply(data, seq), Ok(true), "seq {seq}");
        }
        for seq in [0, BEGIN, 2, 3, 4, u32::MAX] {
            if !list.iter().any(|&(s, _)| s == seq) {
                assert_eq!(route_reply(data, seq), Ok(false), "seq {seq}");
            }
        }
    } else {
        for seq in [0, BEGIN, 2, u32::MAX] {
            let _ = route_reply(data, seq);
        }
    }

    let mut b = BatchReplies::new(BEGIN, SEQS);
    assert_eq!(b.feed(data).is_ok(), parsed.is_ok());
    check_outcome(&b);
    if let Ok(list) = &parsed
        && !list.iter().any(|&(s, _)| s == BEGIN || SEQS.contains(&s))
    {
        assert_eq!(b.outcome(), BatchOutcome::Pending);
    }
    // The same again (a duplicate datagram) changes nothing once the batch is over.
    let before = b.outcome();
    let _ = b.feed(data);
    if before != BatchOutcome::Pending {
        assert_eq!(b.outcome(), before);
    }

    // Cut in two, as if the answers came in two datagrams.
    let mut split = BatchReplies::new(BEGIN, SEQS);
    let (head, tail) = data.split_at(data.len() / 2);
    let _ = split.feed(head);
    check_outcome(&split);
    let _ = split.feed(tail);
    check_outcome(&split);
});
