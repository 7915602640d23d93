//! Packets from peers and from the TUN through the packet filter: the summary parser, then
//! inbound and outbound checks against an allow-all rule set and against deny-by-default.
//! The input is a series of packets separated by 0xFF 0xFF, alternating direction.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tailcfg::{FilterRule, IpPrefix};
use tstun_wrap::filter::{Filter, FlowConfig, Rules, parse};

fn allow_all() -> &'static (Vec<FilterRule>, Vec<IpPrefix>) {
    static R: OnceLock<(Vec<FilterRule>, Vec<IpPrefix>)> = OnceLock::new();
    R.get_or_init(|| {
        let rules: Vec<FilterRule> = serde_json::from_str(
            r#"[{"SrcIPs":["*"],"DstPorts":[{"IP":"*","Ports":{"First":0,"Last":65535}}]}]"#,
        )
        .expect("rule JSON");
        let local = vec!["100.64.0.1/32".parse().expect("prefix"), "fd7a:115c:a1e0::1/128".parse().expect("prefix")];
        (rules, local)
    })
}

fuzz_target!(|data: &[u8]| {
    let (rules, local) = allow_all();
    let (compiled, _) = Rules::compile(rules.iter(), local);
    let mut open = Filter::new(compiled, FlowConfig::default());
    let mut closed = Filter::allow_none();
    let mut now = Instant::now();
    let mut rest = data;
    let mut inbound = true;
    loop {
        let (pkt, next) = match rest.windows(2).position(|w| w == [0xff, 0xff]) {
            Some(i) => (&rest[..i], Some(&rest[i + 2..])),
            None => (rest, None),
        };
        let _ = parse(pkt);
        if inbound {
            let _ = open.check_inbound(pkt, now);
            let v = closed.check_inbound(pkt, now);
            let _ = v;
        } else {
            let _ = open.record_outbound(pkt, now);
            let _ = closed.record_outbound(pkt, now);
        }
        inbound = !inbound;
        now += Duration::from_secs(7);
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
});
