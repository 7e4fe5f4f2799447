//! Where a webhook may be sent. A webhook URL is chosen by whoever holds an admin token, and the
//! service POSTs to it from inside the operator's network: without a check it reaches the
//! metadata service, the database or an admin port (server-side request forgery). So a
//! destination is parsed strictly, and every address its host resolves to must be public unless
//! the operator allows private ones (tests, or receivers on the same network).
//!
//! The addresses checked are the addresses to connect to: a dispatcher pins them for the request
//! (`reqwest::ClientBuilder::resolve_to_addrs`), so a DNS answer that changes between the check
//! and the connection (rebinding) cannot redirect a delivery.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest destination URL accepted.
pub const URL_BYTES_MAX: usize = 2048;
/// Most addresses one host may resolve to that are kept.
pub const ADDRESSES_MAX: usize = 16;
/// The longest a host's resolution may take: a resolver that does not answer must not hold an
/// admin's request or a delivery.
pub const RESOLVE_SECONDS_MAX: u64 = 3;

/// Which addresses a destination may resolve to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Only public unicast addresses: the default.
    PublicOnly,
    /// Any address, loopback and private networks included (`--webhooks-allow-private`).
    AllowPrivate,
}

/// Why a destination is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestinationError {
    /// Not an absolute `http(s)://host[:port]/path` URL without credentials or fragment, or too long.
    Malformed(String),
    /// The host did not resolve.
    Unresolved(String),
    /// The host resolves to an address that is not public.
    NotPublic(IpAddr),
}

impl std::fmt::Display for DestinationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DestinationError::Malformed(detail) => write!(f, "not a usable webhook URL: {detail}"),
            DestinationError::Unresolved(detail) => write!(f, "the webhook host does not resolve: {detail}"),
            DestinationError::NotPublic(ip) => write!(f, "the webhook host resolves to {ip}, which is not public"),
        }
    }
}

impl std::error::Error for DestinationError {}

/// A parsed destination: scheme, host and port are known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    url: url::Url,
}

impl Destination {
    pub fn parse(text: &str) -> Result<Destination, DestinationError> {
        let malformed = |detail: &str| DestinationError::Malformed(detail.to_owned());
        if text.len() > URL_BYTES_MAX {
            return Err(malformed("longer than 2048 bytes"));
        }
        let url = url::Url::parse(text).map_err(|error| DestinationError::Malformed(error.to_string()))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(malformed("the scheme must be https or http"));
        }
        if url.host().is_none() {
            return Err(malformed("no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(malformed("credentials in the URL"));
        }
        if url.fragment().is_some() {
            return Err(malformed("a fragment"));
        }
        Ok(Destination { url })
    }

    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// The addresses to connect to, every one allowed by `reach`.
    pub async fn resolve(&self, reach: Reach) -> Result<Vec<SocketAddr>, DestinationError> {
        let port = self.url.port_or_known_default().ok_or_else(|| DestinationError::Malformed("no port".to_owned()))?;
        let addresses: Vec<SocketAddr> = match self.url.host() {
            Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
            Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
            Some(url::Host::Domain(name)) => {
                let lookup = tokio::net::lookup_host((name, port));
                tokio::time::timeout(std::time::Duration::from_secs(RESOLVE_SECONDS_MAX), lookup)
                    .await
                    .map_err(|_| DestinationError::Unresolved(format!("no answer within {RESOLVE_SECONDS_MAX} s")))?
                    .map_err(|error| DestinationError::Unresolved(error.to_string()))?
                    .take(ADDRESSES_MAX)
                    .collect()
            }
            None => return Err(DestinationError::Malformed("no host".to_owned())),
        };
        if addresses.is_empty() {
            return Err(DestinationError::Unresolved("no address".to_owned()));
        }
        if reach == Reach::PublicOnly {
            if let Some(refused) = addresses.iter().map(SocketAddr::ip).find(|ip| !is_public(*ip)) {
                return Err(DestinationError::NotPublic(refused));
            }
        }
        Ok(addresses)
    }
}

/// A public unicast address: not loopback, private, shared (CGNAT), link-local, unique-local,
/// multicast, broadcast, documentation, benchmarking, reserved or unspecified — an IPv6 address
/// that embeds an IPv4 one (mapped, NAT64, 6to4) is judged by the IPv4 address it reaches.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..=127).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..=19).contains(&b)) // benchmarking
        || a >= 240; // reserved
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach the IPv4 address they embed.
    if segments[0..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [_, _, _, _, _, _, high, low] = segments;
        return is_public_v4(Ipv4Addr::from((u32::from(high) << 16) | u32::from(low)));
    }
    if segments[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::from((u32::from(segments[1]) << 16) | u32::from(segments[2])));
    }
    let refused = ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (segments[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || segments[0..6] == [0, 0, 0, 0, 0, 0]; // IPv4-compatible (deprecated) and other ::/96
    !refused
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "192.0.0.8",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "::10.0.0.1",
        ] {
            let ip: IpAddr = refused.parse().expect(refused);
            assert!(!is_public(ip), "{refused} must not be public");
        }
        for allowed in
            ["1.1.1.1", "8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:1.1.1.1", "64:ff9b::101:101"]
        {
            let ip: IpAddr = allowed.parse().expect(allowed);
            assert!(is_public(ip), "{allowed} is public");
        }
    }

    #[test]
    fn urls_are_parsed_strictly() {
        assert!(Destination::parse("https://hooks.example.com/creditgraph?x=1").is_ok());
        for bad in [
            "ftp://example.com/",
            "https://user:pass@example.com/",
            "https://example.com/#part",
            "not a url",
            "https://",
            "file:///etc/passwd",
        ] {
            assert!(matches!(Destination::parse(bad), Err(DestinationError::Malformed(_))), "{bad}");
        }
        let long = format!("https://example.com/{}", "a".repeat(URL_BYTES_MAX));
        assert!(matches!(Destination::parse(&long), Err(DestinationError::Malformed(_))));
    }

    #[tokio::test]
    async fn loopback_destinations_are_refused_unless_private_ones_are_allowed() {
        for text in
            ["http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://[::1]:9/hook", "http://2130706433:9/"]
        {
            let destination = Destination::parse(text).expect(text);
            let refused = destination.resolve(Reach::PublicOnly).await;
            assert!(matches!(refused, Err(DestinationError::NotPublic(_))), "{text}: {refused:?}");
            let allowed = destination.resolve(Reach::AllowPrivate).await.expect(text);
            assert!(allowed.iter().all(|address| address.port() == 9 || address.port() == 80), "{allowed:?}");
        }
    }

    proptest! {
        /// An IPv4 address and its IPv4-mapped IPv6 form are judged alike.
        #[test]
        fn a_mapped_address_is_judged_as_the_ipv4_it_reaches(bits in any::<u32>()) {
            let v4 = Ipv4Addr::from(bits);
            prop_assert_eq!(is_public(IpAddr::V4(v4)), is_public(IpAddr::V6(v4.to_ipv6_mapped())));
        }
    }
}
