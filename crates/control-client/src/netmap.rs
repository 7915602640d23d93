//! The network map, assembled from the full and delta messages of the map stream (sans-IO).
//!
//! [`NetworkMap::apply`] folds one [`MapResponse`] in, in the order Go's client uses: a
//! non-empty `Peers` replaces the peer set and the peer deltas are ignored; otherwise
//! `PeersRemoved`, `PeersChanged`, `PeerSeenChange`, `OnlineChange`, `PeersChangedPatch`.
//! Then the self node, user profiles, DERP map, packet filters, DNS config, SSH policy,
//! domain and health. `None` (null or absent) always means "unchanged".

use std::collections::BTreeMap;
use std::time::SystemTime;
use tailcfg::{
    DerpMap, DnsConfig, FilterRule, MapResponse, Node, NodeId, PeerChange, Time, UserId,
    UserProfile,
};

/// The filter name a legacy `PacketFilter` stands for.
pub const BASE_FILTER: &str = "base";

/// Why a map message could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetmapError {
    /// The first message that is not a keep-alive must carry the self node.
    #[error("first map response has no self node")]
    NoSelfNode,
}

/// What a message changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// A keep-alive: only the control time may have changed.
    KeepAlive,
    /// The map changed (or may have).
    Changed,
}

/// The node's view of the tailnet.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct NetworkMap {
    /// This node, once the first full message has arrived.
    pub self_node: Option<Node>,
    /// Peers by node ID, normalised (`HomeDERP` set, `AllowedIPs` filled in).
    pub peers: BTreeMap<NodeId, Node>,
    /// The DERP map, once received.
    pub derp_map: Option<DerpMap>,
    /// The DNS configuration, once received.
    pub dns_config: Option<DnsConfig>,
    /// The tailnet name.
    pub domain: String,
    /// Named packet filters; the effective filter is their concatenation in name order.
    pub packet_filters: BTreeMap<String, Vec<FilterRule>>,
    /// Whether any packet filter has been received (none means deny everything).
    pub has_packet_filter: bool,
    /// User profiles by ID.
    pub user_profiles: BTreeMap<UserId, UserProfile>,
    /// The SSH policy, raw.
    pub ssh_policy: Option<serde_json::Value>,
    /// Health warnings from control.
    pub health: Vec<String>,
    /// The server's clock at its last message.
    pub control_time: Option<Time>,
    /// Stream handle for resumption.
    pub map_session_handle: String,
    /// Last sequence number seen.
    pub seq: i64,
}

impl NetworkMap {
    /// An empty map, waiting for the first full message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a message, using the system clock for `PeerSeenChange`.
    pub fn apply(&mut self, resp: MapResponse) -> Result<Applied, NetmapError> {
        self.apply_at(resp, SystemTime::now())
    }

    /// Applies a message; `now` is what "seen now" in `PeerSeenChange` means.
    pub fn apply_at(&mut self, resp: MapResponse, now: SystemTime) -> Result<Applied, NetmapError> {
        if let Some(t) = resp.control_time {
            self.control_time = Some(t);
        }
        if resp.keep_alive {
            return Ok(Applied::KeepAlive);
        }
        if self.self_node.is_none() && resp.node.is_none() {
            return Err(NetmapError::NoSelfNode);
        }
        if !resp.map_session_handle.is_empty() {
            self.map_session_handle = resp.map_session_handle;
        }
        if resp.seq != 0 {
            self.seq = resp.seq;
        }
        self.apply_peers(
            resp.peers,
            resp.peers_removed,
            resp.peers_changed,
            resp.peer_seen_change,
            resp.online_change,
            resp.peers_changed_patch,
            now,
        );
        if let Some(mut n) = resp.node {
            n.normalize();
            self.self_node = Some(n);
        }
        for p in resp.user_profiles {
            self.user_profiles.insert(p.id, p);
        }
        if let Some(dm) = resp.derp_map {
            match &mut self.derp_map {
                Some(old) => old.merge_update(dm),
                None => {
                    let mut fresh = DerpMap::default();
                    fresh.merge_update(dm);
                    self.derp_map = Some(fresh);
                }
            }
        }
        if let Some(pf) = resp.packet_filter {
            self.packet_filters.insert(BASE_FILTER.to_owned(), pf);
            self.has_packet_filter = true;
        }
        if let Some(named) = resp.packet_filters {
            self.has_packet_filter = true;
            if matches!(named.get("*"), Some(None)) {
                self.packet_filters.clear();
            }
            for (name, rules) in named {
                if name == "*" {
                    continue;
                }
                match rules {
                    Some(r) => {
                        self.packet_filters.insert(name, r);
                    }
                    None => {
                        self.packet_filters.remove(&name);
                    }
                }
            }
        }
        if let Some(dns) = resp.dns_config {
            self.dns_config = Some(dns);
        }
        if let Some(ssh) = resp.ssh_policy {
            self.ssh_policy = Some(ssh);
        }
        if !resp.domain.is_empty() {
            self.domain = resp.domain;
        }
        if let Some(h) = resp.health {
            self.health = h;
        }
        Ok(Applied::Changed)
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_peers(
        &mut self,
        full: Vec<Node>,
        removed: Vec<NodeId>,
        changed: Vec<Node>,
        seen: BTreeMap<NodeId, bool>,
        online: BTreeMap<NodeId, bool>,
        patches: Vec<PeerChange>,
        now: SystemTime,
    ) {
        if !full.is_empty() {
            self.peers.clear();
            for mut n in full {
                n.normalize();
                self.peers.insert(n.id, n);
            }
            return;
        }
        for id in removed {
            self.peers.remove(&id);
        }
        for mut n in changed {
            n.normalize();
            self.peers.insert(n.id, n);
        }
        for (id, seen) in seen {
            if let Some(p) = self.peers.get_mut(&id) {
                p.last_seen = seen.then(|| Time::from_system_time(now));
            }
        }
        for (id, on) in online {
            if let Some(p) = self.peers.get_mut(&id) {
                p.online = Some(on);
            }
        }
        for pc in patches {
            let Some(p) = self.peers.get_mut(&pc.node_id) else {
                continue;
            };
            if pc.derp_region != 0 {
                p.home_derp = pc.derp_region;
            }
            if pc.cap != 0 {
                p.cap = pc.cap;
            }
            if let Some(v) = pc.cap_map {
                p.cap_map = v;
            }
            if let Some(v) = pc.endpoints {
                p.endpoints = v;
            }
            if let Some(v) = pc.key {
                p.key = v;
            }
            if let Some(v) = pc.key_signature {
                p.key_signature = v;
            }
            if let Some(v) = pc.disco_key {
                p.disco_key = v;
            }
            if let Some(v) = pc.online {
                p.online = Some(v);
            }
            if let Some(v) = pc.last_seen {
                p.last_seen = Some(v);
            }
            if let Some(v) = pc.key_expiry {
                p.key_expiry = v;
            }
        }
    }

    /// The effective packet filter: every named list, in name order.
    pub fn packet_filter(&self) -> impl Iterator<Item = &FilterRule> {
        self.packet_filters.values().flatten()
    }

    /// The MagicDNS suffix: the self node's name without its first label and trailing dot.
    pub fn magic_dns_suffix(&self) -> Option<&str> {
        let name = self.self_node.as_ref()?.name.trim_end_matches('.');
        name.split_once('.').map(|(_, rest)| rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const NK1: &str = "nodekey:1111111111111111111111111111111111111111111111111111111111111111";
    const NK2: &str = "nodekey:2222222222222222222222222222222222222222222222222222222222222222";
    const NK9: &str = "nodekey:9999999999999999999999999999999999999999999999999999999999999999";
    const DK9: &str = "discokey:9999999999999999999999999999999999999999999999999999999999999999";
    const MK: &str = "mkey:0000000000000000000000000000000000000000000000000000000000000000";

    fn node_json(id: i64, key: &str, ip: &str) -> String {
        format!(
            r#"{{"ID":{id},"StableID":"s{id}","Name":"n{id}.tail.example.com.","User":1,"Key":"{key}",
            "KeyExpiry":"0001-01-01T00:00:00Z","Machine":"{MK}","DiscoKey":"{DK9}",
            "Addresses":["{ip}/32"],"AllowedIPs":null,"Endpoints":null,"DERP":"127.3.3.40:999",
            "Hostinfo":{{"Hostname":"n{id}"}},"Created":"2026-11-24T16:00:00Z","Cap":130,
            "Online":true,"MachineAuthorized":true,"CapMap":{{"admin":null,"ssh":[]}}}}"#
        )
    }

    fn msg(json: &str) -> MapResponse {
        serde_json::from_str(json).unwrap()
    }

    fn full() -> NetworkMap {
        let json = format!(
            r#"{{"Node":{},"Peers":[{},{}],
            "DERPMap":{{"Regions":{{"999":{{"RegionID":999,"RegionCode":"hs","RegionName":"Headscale",
              "Nodes":[{{"Name":"999a","RegionID":999,"HostName":"127.0.0.1","IPv4":"127.0.0.1","STUNPort":3478,"DERPPort":8080}}]}},
              "998":null}}}},
            "DNSConfig":{{"Resolvers":null,"Domains":["tail.example.com"],"Proxied":true}},
            "Domain":"tail.example.com",
            "PacketFilters":{{"base":[{{"SrcIPs":["*"],"DstPorts":[{{"IP":"*","Ports":{{"First":0,"Last":65535}}}}]}}]}},
            "UserProfiles":[{{"ID":1,"LoginName":"alice","DisplayName":"Alice"}}],
            "ControlTime":"2026-11-24T16:20:00Z"}}"#,
            node_json(9, NK9, "100.64.0.9"),
            node_json(1, NK1, "100.64.0.1"),
            node_json(2, NK2, "100.64.0.2")
        );
        let mut nm = NetworkMap::new();
        assert_eq!(nm.apply(msg(&json)).unwrap(), Applied::Changed);
        nm
    }

    #[test]
    fn full_map_is_normalised() {
        let nm = full();
        let me = nm.self_node.as_ref().unwrap();
        assert_eq!(me.home_derp, 999);
        assert_eq!(me.allowed_ips.as_ref().unwrap(), &me.addresses);
        assert_eq!(nm.peers.len(), 2);
        assert_eq!(nm.peers[&2].home_derp_region(), 999);
        let dm = nm.derp_map.as_ref().unwrap();
        assert_eq!(dm.regions.as_ref().unwrap().len(), 1, "null region dropped");
        assert_eq!(dm.region(999).unwrap().nodes[0].derp_port, 8080);
        assert_eq!(nm.packet_filter().count(), 1);
        assert_eq!(nm.magic_dns_suffix(), Some("tail.example.com"));
        assert_eq!(nm.user_profiles[&1].login_name, "alice");
    }

    #[test]
    fn first_message_must_have_self_node() {
        let mut nm = NetworkMap::new();
        assert_eq!(
            nm.apply(MapResponse::keep_alive()).unwrap(),
            Applied::KeepAlive
        );
        assert_eq!(
            nm.apply(msg(r#"{"Domain":"x"}"#)),
            Err(NetmapError::NoSelfNode)
        );
    }

    #[test]
    fn deltas_apply_in_go_order() {
        let mut nm = full();
        // Removed first, then changed: a peer removed and re-added in one message stays.
        let json = format!(
            r#"{{"PeersRemoved":[1,2],"PeersChanged":[{}],"OnlineChange":{{"2":false,"77":true}}}}"#,
            node_json(2, NK2, "100.64.0.22")
        );
        nm.apply(msg(&json)).unwrap();
        assert_eq!(nm.peers.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(nm.peers[&2].addresses[0].to_string(), "100.64.0.22/32");
        assert_eq!(
            nm.peers[&2].online,
            Some(false),
            "OnlineChange after PeersChanged"
        );
        assert!(!nm.peers.contains_key(&77), "unknown IDs ignored");

        let now = UNIX_EPOCH + Duration::from_secs(123);
        nm.apply_at(msg(r#"{"PeerSeenChange":{"2":true}}"#), now)
            .unwrap();
        assert_eq!(
            nm.peers[&2].last_seen.as_ref().unwrap().as_str(),
            "1970-01-01T00:02:03Z"
        );
        nm.apply(msg(r#"{"PeerSeenChange":{"2":false}}"#)).unwrap();
        assert_eq!(nm.peers[&2].last_seen, None);
    }

    #[test]
    fn patches_change_only_present_fields() {
        let mut nm = full();
        let json = format!(
            r#"{{"PeersChangedPatch":[
              {{"NodeID":1,"DERPRegion":5,"Endpoints":["1.2.3.4:41641","[2001:db8::1]:41641"],"Online":false}},
              {{"NodeID":2,"Key":"{NK9}","KeyExpiry":"2027-01-01T00:00:00Z","LastSeen":"2026-11-24T16:00:00Z"}},
              {{"NodeID":404,"DERPRegion":1}}]}}"#
        );
        nm.apply(msg(&json)).unwrap();
        let p1 = &nm.peers[&1];
        assert_eq!(
            (p1.home_derp, p1.endpoints.len(), p1.online),
            (5, 2, Some(false))
        );
        assert_eq!(p1.key.to_string(), NK1);
        let p2 = &nm.peers[&2];
        assert_eq!(p2.key.to_string(), NK9);
        assert_eq!(p2.home_derp, 999);
        assert_eq!(p2.key_expiry.as_str(), "2027-01-01T00:00:00Z");
        assert!(p2.last_seen.is_some());
    }

    #[test]
    fn full_peers_replace_and_preclude_deltas() {
        let mut nm = full();
        let json = format!(
            r#"{{"Peers":[{}],"PeersRemoved":[3],"OnlineChange":{{"3":false}}}}"#,
            node_json(3, NK2, "100.64.0.3")
        );
        nm.apply(msg(&json)).unwrap();
        assert_eq!(nm.peers.keys().copied().collect::<Vec<_>>(), vec![3]);
        assert_eq!(
            nm.peers[&3].online,
            Some(true),
            "deltas ignored with full Peers"
        );
        // An empty Peers list is "no full list", not "remove everyone".
        nm.apply(msg(r#"{"Peers":[]}"#)).unwrap();
        assert_eq!(nm.peers.len(), 1);
    }

    #[test]
    fn filters_named_and_legacy() {
        let mut nm = full();
        nm.apply(msg(
            r#"{"PacketFilters":{"extra":[{"SrcIPs":["100.64.0.1"]}]}}"#,
        ))
        .unwrap();
        assert_eq!(nm.packet_filter().count(), 2);
        let first = nm.packet_filter().next().unwrap();
        assert_eq!(
            first.src_ips,
            vec!["*"],
            "sorted by name: base before extra"
        );
        nm.apply(msg(r#"{"PacketFilters":{"base":null}}"#)).unwrap();
        assert_eq!(nm.packet_filters.keys().collect::<Vec<_>>(), vec!["extra"]);
        nm.apply(msg(r#"{"PacketFilters":{"*":null,"new":[]}}"#))
            .unwrap();
        assert_eq!(nm.packet_filters.keys().collect::<Vec<_>>(), vec!["new"]);
        assert_eq!(
            nm.packet_filter().count(),
            0,
            "an empty list denies everything"
        );
        nm.apply(msg(r#"{"PacketFilter":[{"SrcIPs":["*"]}]}"#))
            .unwrap();
        assert_eq!(nm.packet_filters.len(), 2);
        // Null PacketFilter means unchanged.
        nm.apply(msg(r#"{"PacketFilter":null,"PacketFilters":null}"#))
            .unwrap();
        assert_eq!(nm.packet_filters.len(), 2);
    }

    #[test]
    fn derp_map_updates_merge() {
        let mut nm = full();
        nm.apply(msg(
            r#"{"DERPMap":{"HomeParams":{"RegionScore":{"999":0.5}}}}"#,
        ))
        .unwrap();
        let dm = nm.derp_map.as_ref().unwrap();
        assert!(
            dm.region(999).is_some(),
            "absent Regions keeps the old ones"
        );
        assert_eq!(
            dm.home_params
                .as_ref()
                .unwrap()
                .region_score
                .as_ref()
                .unwrap()[&999],
            0.5
        );
        nm.apply(msg(
            r#"{"DERPMap":{"HomeParams":{},"Regions":{"1":{"RegionID":1,"Nodes":null}}}}"#,
        ))
        .unwrap();
        let dm = nm.derp_map.as_ref().unwrap();
        assert!(dm.region(999).is_none() && dm.region(1).is_some());
        assert!(
            dm.home_params.as_ref().unwrap().region_score.is_some(),
            "score kept"
        );
    }

    #[test]
    fn keep_alive_changes_nothing_but_time() {
        let mut nm = full();
        let before = nm.clone();
        let ka =
            msg(r#"{"KeepAlive":true,"Domain":"ignored","ControlTime":"2026-11-24T17:00:00Z"}"#);
        assert_eq!(nm.apply(ka).unwrap(), Applied::KeepAlive);
        assert_eq!(nm.domain, before.domain);
        assert_eq!(
            nm.control_time.as_ref().unwrap().as_str(),
            "2026-11-24T17:00:00Z"
        );
    }

    #[test]
    fn self_node_and_dns_nil_mean_unchanged() {
        let mut nm = full();
        nm.apply(msg(r#"{"Node":null,"DNSConfig":null,"Domain":""}"#))
            .unwrap();
        assert!(nm.self_node.is_some() && nm.dns_config.is_some());
        assert_eq!(nm.domain, "tail.example.com");
    }
}
