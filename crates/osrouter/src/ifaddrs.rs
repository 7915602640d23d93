//! The host's interface addresses, through `getifaddrs(3)`: an exit node keeps the networks
//! they belong to out of what its peers may reach, and `--exit-node-allow-lan-access` keeps
//! them out of the tunnel.

#![allow(unsafe_code)]

use tailcfg::IpPrefix;

/// The host's interface addresses with their prefix lengths (`192.168.88.1/24`), loopback
/// and the device `skip` left out, from `getifaddrs(3)`. Empty if that fails.
pub fn interface_prefixes(skip: &str) -> Vec<IpPrefix> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_flags & (libc::IFF_LOOPBACK as libc::c_uint) != 0 || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() == skip.as_bytes() {
            continue;
        }
        // SAFETY: the address and netmask point at sockaddrs of the family they state.
        if let Some(p) = unsafe { prefix_of(ifa.ifa_addr, ifa.ifa_netmask) } {
            out.push(p);
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// The prefix of an interface address and its netmask (both sockaddrs of one family).
///
/// # Safety
/// Each pointer is null or points at a valid sockaddr of the family in its header.
unsafe fn prefix_of(addr: *const libc::sockaddr, mask: *const libc::sockaddr) -> Option<IpPrefix> {
    if addr.is_null() || mask.is_null() {
        return None;
    }
    // SAFETY: per the contract, the family field is readable and tells the real type.
    match i32::from(unsafe { (*addr).sa_family }) {
        libc::AF_INET => {
            // SAFETY: AF_INET sockaddrs are sockaddr_in.
            let (a, m) = unsafe {
                (
                    &*addr.cast::<libc::sockaddr_in>(),
                    &*mask.cast::<libc::sockaddr_in>(),
                )
            };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            let bits = u32::from_be(m.sin_addr.s_addr).leading_ones();
            IpPrefix::new(ip.into(), u8::try_from(bits).ok()?)
        }
        libc::AF_INET6 => {
            // SAFETY: AF_INET6 sockaddrs are sockaddr_in6.
            let (a, m) = unsafe {
                (
                    &*addr.cast::<libc::sockaddr_in6>(),
                    &*mask.cast::<libc::sockaddr_in6>(),
                )
            };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            let bits = u128::from_be_bytes(m.sin6_addr.s6_addr).leading_ones();
            IpPrefix::new(ip.into(), u8::try_from(bits).ok()?)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_the_skipped_device_are_left_out() {
        let all = interface_prefixes("");
        for p in &all {
            assert!(!p.addr().is_loopback(), "{p}");
        }
        // Some interface here has an address (the test runs on a networked machine).
        assert!(!all.is_empty(), "no interface addresses at all");
    }

    #[test]
    fn netmasks_become_lengths() {
        let sin = |a: [u8; 4]| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a),
            },
            sin_zero: [0; 8],
        };
        let (a, m) = (sin([192, 168, 88, 1]), sin([255, 255, 255, 0]));
        let p = unsafe { prefix_of(std::ptr::from_ref(&a).cast(), std::ptr::from_ref(&m).cast()) };
        assert_eq!(p, Some("192.168.88.1/24".parse().unwrap()));
    }
}
