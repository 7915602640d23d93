//! The wire types against JSON as headscale and Tailscale send it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tailcfg::key::{MachinePrivate, NodePrivate};
use tailcfg::*;

/// The first full MapResponse headscale 0.29.3 sent to tailrouter's control client in the
/// interop test (decompressed, pretty-printed).
const HEADSCALE_FIRST_MAP: &str = include_str!("fixtures/headscale-0.29.3-first-map.json");

#[test]
fn headscale_first_map_decodes() {
    let m: MapResponse = serde_json::from_str(HEADSCALE_FIRST_MAP).unwrap();
    let node = m.node.as_ref().unwrap();
    assert_eq!(node.id, 1);
    assert_eq!(node.name, "tailrouter-test.trt.test.");
    assert_eq!(node.home_derp, 999);
    assert_eq!(node.addresses.len(), 2);
    let cgnat: IpPrefix = "100.64.0.0/10".parse().unwrap();
    assert!(cgnat.contains(node.addresses[0].addr()));
    assert_eq!(
        node.hostinfo
            .as_ref()
            .unwrap()
            .net_info
            .as_ref()
            .unwrap()
            .preferred_derp,
        999
    );
    assert!(
        node.cap_map
            .contains_key("https://tailscale.com/cap/is-admin")
    );
    assert_eq!(node.online, Some(true));
    let dm = m.derp_map.as_ref().unwrap();
    let r = dm.region(999).unwrap();
    assert_eq!(
        (r.region_code.as_str(), r.nodes[0].ipv4.as_str()),
        ("trt", "127.0.0.1")
    );
    let dns = m.dns_config.as_ref().unwrap();
    assert!(dns.proxied);
    assert_eq!(dns.domains, vec!["trt.test"]);
    assert_eq!(dns.routes["100.100.in-addr.arpa"], Some(vec![]));
    let pf = m.packet_filters.as_ref().unwrap();
    let base = pf["base"].as_ref().unwrap();
    assert_eq!(base[0].src_ips, vec!["*"]);
    assert_eq!(base[0].dst_ports[0].ports, PortRange::new(0, 65535));
    assert!(m.packet_filter.is_none());
    assert!(m.peers.is_empty());
    assert_eq!(m.user_profiles[0].login_name, "tailrouter");
    assert!(m.control_time.as_ref().unwrap().unix_seconds().is_some());

    // Writing it back and reading again loses nothing we model.
    let again: MapResponse = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
    let m2: MapResponse = serde_json::from_str(HEADSCALE_FIRST_MAP).unwrap();
    assert_eq!(again, m2);
}

#[test]
fn nulls_missing_and_unknown_fields() {
    // Go writes nil slices and maps as null; every field may be missing; new fields appear.
    let m: MapResponse = serde_json::from_str(
        r#"{"Peers":null,"PeersChanged":null,"PeersRemoved":null,"PeersChangedPatch":null,
            "OnlineChange":null,"PeerSeenChange":null,"UserProfiles":null,"DNSConfig":null,
            "PacketFilter":null,"PacketFilters":null,"DERPMap":null,"Node":null,
            "SomethingNew":{"x":[1,2,3]},"Health":null}"#,
    )
    .unwrap();
    assert_eq!(m, MapResponse::default());
    let n: Node = serde_json::from_str(
        r#"{"ID":7,"Key":"nodekey:0000000000000000000000000000000000000000000000000000000000000000",
            "Addresses":null,"Endpoints":null,"Tags":null,"CapMap":null,"PrimaryRoutes":null,
            "KeySignature":null,"Hostinfo":{"RoutableIPs":null,"Services":null,"sshHostKeys":null},
            "DERP":"127.3.3.40:12","Online":null,"LastSeen":null,"AllowedIPs":null}"#,
    )
    .unwrap();
    assert_eq!(n.id, 7);
    assert_eq!(n.home_derp_region(), 12);
    assert_eq!(n.allowed_ips, None);
    assert_eq!(n.online, None);
    assert!(n.key_expiry.is_zero());
}

#[test]
fn integer_keyed_maps_use_string_keys() {
    let m: MapResponse = serde_json::from_str(
        r#"{"OnlineChange":{"5":true,"6":false},"PeerSeenChange":{"5":true},
            "DERPMap":{"HomeParams":{"RegionScore":{"1":0.5}},"Regions":{"1":{"RegionID":1,"Nodes":[]},"2":null},"omitDefaultRegions":true}}"#,
    )
    .unwrap();
    assert!(m.online_change[&5]);
    assert!(!m.online_change[&6]);
    let dm = m.derp_map.unwrap();
    assert!(dm.omit_default_regions);
    assert_eq!(dm.regions.as_ref().unwrap().len(), 2);
    assert_eq!(dm.region(2), None);
    let j = serde_json::to_string(&dm).unwrap();
    assert!(
        j.contains(r#""Regions":{"1":"#) && j.contains(r#""omitDefaultRegions":true"#),
        "{j}"
    );
    assert!(serde_json::from_str::<MapResponse>(r#"{"OnlineChange":{"x":true}}"#).is_err());
}

#[test]
fn register_messages() {
    let node = NodePrivate::generate();
    let mut req = RegisterRequest::default();
    req.version = 130;
    req.node_key = node.public();
    req.auth = Some(RegisterAuth::with_auth_key(
        "hskey-auth-abc-def--TLsig-priv",
    ));
    let mut hi = Hostinfo::default();
    hi.hostname = "r1".into();
    hi.ssh_host_keys = vec!["ssh-ed25519 AAAA".into()];
    let mut ni = NetInfo::default();
    ni.preferred_derp = 999;
    hi.net_info = Some(ni);
    req.hostinfo = Some(hi);
    let j: serde_json::Value = serde_json::to_value(&req).unwrap();
    assert_eq!(j["Version"], 130);
    assert_eq!(j["NodeKey"], node.public().to_string());
    assert!(
        j["OldNodeKey"]
            .as_str()
            .unwrap()
            .starts_with("nodekey:0000"),
        "always written"
    );
    assert_eq!(
        j["Auth"]["AuthKey"], "hskey-auth-abc-def",
        "wrapped key unwrapped"
    );
    assert_eq!(j["Hostinfo"]["sshHostKeys"][0], "ssh-ed25519 AAAA");
    assert_eq!(j["Hostinfo"]["NetInfo"]["PreferredDERP"], 999);
    assert!(
        j.get("Expiry").is_none() && j.get("Followup").is_none(),
        "{j}"
    );
    assert!(j["Hostinfo"].get("OS").is_none(), "zero fields omitted");
    assert!(
        !format!("{:?}", req.auth).contains("hskey"),
        "auth key redacted in Debug"
    );

    // headscale's answers: a pre-auth success (NodeKeySignature null) and an interactive one.
    let ok: RegisterResponse = serde_json::from_str(
        r#"{"User":{"ID":1,"DisplayName":"alice","ProfilePicURL":"","Created":"0001-01-01T00:00:00Z"},
            "Login":{"ID":1,"LoginName":"alice","DisplayName":"alice","ProfilePicURL":""},
            "NodeKeyExpired":false,"MachineAuthorized":true,"AuthURL":"","NodeKeySignature":null,"Error":""}"#,
    )
    .unwrap();
    assert!(ok.machine_authorized && ok.auth_url.is_empty() && ok.error.is_empty());
    assert_eq!(ok.user.display_name, "alice");
    let pending: RegisterResponse = serde_json::from_str(
        r#"{"AuthURL":"http://127.0.0.1:8080/register/aBcD1234","MachineAuthorized":false}"#,
    )
    .unwrap();
    assert_eq!(pending.auth_url, "http://127.0.0.1:8080/register/aBcD1234");
}

#[test]
fn key_response_and_early_noise() {
    let server = MachinePrivate::generate().public();
    let body = format!(
        r#"{{"legacyPublicKey":"mkey:0000000000000000000000000000000000000000000000000000000000000000","publicKey":"{server}"}}"#
    );
    let r: OverTlsPublicKeyResponse = serde_json::from_str(&body).unwrap();
    assert!(r.legacy_public_key.is_zero());
    assert_eq!(r.public_key, server);
    let e: EarlyNoise = serde_json::from_str(
        r#"{"nodeKeyChallenge":"chalpub:aa00000000000000000000000000000000000000000000000000000000000000"}"#,
    )
    .unwrap();
    assert!(!e.node_key_challenge.is_zero());
}

#[test]
fn map_request_and_patches() {
    let mut req = MapRequest::default();
    req.version = 130;
    req.stream = true;
    req.keep_alive = true;
    req.compress = "zstd".into();
    req.endpoints = vec![
        "192.0.2.1:41641".parse().unwrap(),
        "[2001:db8::1]:41641".parse().unwrap(),
    ];
    req.endpoint_types = vec![EndpointType::Local as i32, EndpointType::Stun as i32];
    let j: serde_json::Value = serde_json::to_value(&req).unwrap();
    assert_eq!(j["Stream"], true);
    assert_eq!(j["Compress"], "zstd");
    assert_eq!(j["Endpoints"][1], "[2001:db8::1]:41641");
    assert_eq!(j["EndpointTypes"], serde_json::json!([1, 2]));
    assert!(j.get("OmitPeers").is_none());

    let p: PeerChange = serde_json::from_str(
        r#"{"NodeID":3,"DERPRegion":2,"Endpoints":["10.0.0.1:1"],"Online":true,"LastSeen":"2026-11-24T16:00:00Z","KeySignature":null}"#,
    )
    .unwrap();
    assert_eq!((p.node_id, p.derp_region, p.online), (3, 2, Some(true)));
    assert!(p.key.is_none() && p.cap_map.is_none());
}

#[test]
fn filter_rules_and_dns() {
    let rules: Vec<FilterRule> = serde_json::from_str(
        r#"[{"SrcIPs":["100.64.0.0/10","100.64.0.1-100.64.0.9","cap:foo"],"DstPorts":[{"IP":"10.0.0.0/8","Ports":{"First":22,"Last":22}}],"IPProto":[6]},
            {"SrcIPs":["*"],"CapGrant":[{"Dsts":["100.64.0.1/32"],"CapMap":{"tailscale.com/cap/x":[{"a":1}]}}]}]"#,
    )
    .unwrap();
    assert_eq!(rules[0].ip_proto, vec![6]);
    assert_eq!(rules[0].dst_ports[0].ports, PortRange::new(22, 22));
    assert_eq!(rules[1].cap_grant[0].dsts[0].to_string(), "100.64.0.1/32");
    let dns: DnsConfig = serde_json::from_str(
        r#"{"Resolvers":[{"Addr":"1.1.1.1"},{"Addr":"https://dns.example/dns-query","BootstrapResolution":["192.0.2.53"]}],
            "Routes":{"corp.example.":[{"Addr":"10.0.0.53"}],"ts.net.":null},"FallbackResolvers":null,
            "Domains":["tail.example"],"Proxied":true,"ExtraRecords":[{"Name":"x.tail.example.","Value":"100.64.0.5"}]}"#,
    )
    .unwrap();
    assert_eq!(dns.resolvers[1].bootstrap_resolution.len(), 1);
    assert_eq!(dns.routes["ts.net."], None);
    assert_eq!(dns.extra_records[0].value, "100.64.0.5");
}
