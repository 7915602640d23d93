//! The DERP map (`tailcfg.DERPMap`): relay regions and their servers.

use crate::de::{is_default, null_default};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// DERP regions and how to pick a home among them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct DerpMap {
    /// Scores that weight the choice of home region; `None` means unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub home_params: Option<DerpHomeParams>,
    /// Region ID to region. `None` (null or absent) in an update means keep the previous
    /// regions; a `None` value is a bad entry some servers have sent, dropped on merge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regions: Option<BTreeMap<i32, Option<DerpRegion>>>,
    /// Do not merge Tailscale's default regions in.
    #[serde(rename = "omitDefaultRegions", skip_serializing_if = "is_default")]
    pub omit_default_regions: bool,
}

impl DerpMap {
    /// The region with this ID, if present.
    pub fn region(&self, id: i32) -> Option<&DerpRegion> {
        self.regions.as_ref()?.get(&id)?.as_ref()
    }

    /// Merges an update into this map as Go's client does: absent `Regions` (with
    /// `omitDefaultRegions`) or `HomeParams` (or its `RegionScore`) keep the previous value;
    /// null region entries are dropped.
    pub fn merge_update(&mut self, update: DerpMap) {
        if let Some(regions) = update.regions {
            self.regions = Some(regions.into_iter().filter(|(_, r)| r.is_some()).collect());
            self.omit_default_regions = update.omit_default_regions;
        }
        match (update.home_params, &mut self.home_params) {
            (Some(new), Some(old)) => {
                if new.region_score.is_some() {
                    old.region_score = new.region_score;
                }
            }
            (Some(new), old @ None) => *old = Some(new),
            (None, _) => {}
        }
    }
}

/// Parameters for choosing the home region.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct DerpHomeParams {
    /// Region ID to a multiplier of its measured latency; `None` means unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region_score: Option<BTreeMap<i32, f64>>,
}

/// One DERP region: a set of equivalent servers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct DerpRegion {
    /// Region ID; 900-999 are for user-run servers (headscale's embedded one is 999).
    #[serde(rename = "RegionID")]
    pub region_id: i32,
    /// Short code, e.g. `nyc`.
    pub region_code: String,
    /// Display name.
    pub region_name: String,
    /// Latitude, for display.
    #[serde(skip_serializing_if = "is_default")]
    pub latitude: f64,
    /// Longitude, for display.
    #[serde(skip_serializing_if = "is_default")]
    pub longitude: f64,
    /// Deprecated: avoid as home.
    #[serde(skip_serializing_if = "is_default")]
    pub avoid: bool,
    /// Never probe or pick as home; still usable to reach peers homed here.
    #[serde(skip_serializing_if = "is_default")]
    pub no_measure_no_home: bool,
    /// Servers in order of preference.
    #[serde(deserialize_with = "null_default")]
    pub nodes: Vec<DerpNode>,
}

/// One DERP (and/or STUN) server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct DerpNode {
    /// Server name, e.g. `1b`.
    pub name: String,
    /// Region it belongs to.
    #[serde(rename = "RegionID")]
    pub region_id: i32,
    /// DNS name, TLS SNI and certificate name.
    pub host_name: String,
    /// Expected certificate name; `sha256-raw:<hex>` pins by hash.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cert_name: String,
    /// Fixed IPv4 address, or `none` to disable IPv4.
    #[serde(rename = "IPv4", skip_serializing_if = "String::is_empty")]
    pub ipv4: String,
    /// Fixed IPv6 address, or `none` to disable IPv6.
    #[serde(rename = "IPv6", skip_serializing_if = "String::is_empty")]
    pub ipv6: String,
    /// STUN port: 0 means 3478, -1 disables STUN.
    #[serde(rename = "STUNPort", skip_serializing_if = "is_default")]
    pub stun_port: i32,
    /// STUN only, not a DERP server.
    #[serde(rename = "STUNOnly", skip_serializing_if = "is_default")]
    pub stun_only: bool,
    /// DERP port: 0 means 443.
    #[serde(rename = "DERPPort", skip_serializing_if = "is_default")]
    pub derp_port: i32,
    /// Skip TLS verification (tests only).
    #[serde(skip_serializing_if = "is_default")]
    pub insecure_for_tests: bool,
    /// STUN address override (tests only).
    #[serde(rename = "STUNTestIP", skip_serializing_if = "String::is_empty")]
    pub stun_test_ip: String,
    /// Answers `/generate_204` on port 80.
    #[serde(skip_serializing_if = "is_default")]
    pub can_port80: bool,
}

impl DerpNode {
    /// The STUN port with its default applied; `None` when STUN is disabled.
    pub fn effective_stun_port(&self) -> Option<u16> {
        match self.stun_port {
            0 => Some(3478),
            p => u16::try_from(p).ok(),
        }
    }

    /// The DERP port with its default (443) applied; `None` if out of range.
    pub fn effective_derp_port(&self) -> Option<u16> {
        match self.derp_port {
            0 => Some(443),
            p => u16::try_from(p).ok(),
        }
    }
}
