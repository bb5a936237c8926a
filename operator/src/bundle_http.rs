//! Where the operator may download a bundle from (`spec.bundle.source.http.url`).
//!
//! The URL is written by a tenant, and the operator fetches it from inside the cluster with its
//! own network position: without limits it is a deputy that reaches what the tenant cannot (the
//! cloud metadata endpoint, the API server, other namespaces' Services) and reports back what it
//! found. So:
//! - HTTPS only; plain HTTP only to hosts the cluster admin lists (`bundleHttp.insecureHosts`);
//! - no user name or password in the URL (they would be sent to whoever answers);
//! - no destination that is not globally reachable (loopback, private, link-local, shared,
//!   benchmarking, documentation, multicast, IPv6 unique-local …) unless the admin lists its
//!   range (`bundleHttp.allowedCidrs`). Names are checked after they are resolved, by the
//!   resolver the HTTP client connects with, so a name cannot resolve to one address when checked
//!   and another when used;
//! - redirects are not followed (a public URL cannot bounce the operator to a private one);
//! - a failure says what kind it was (refused, timed out, HTTP status), never the bytes answered.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// What the cluster admin allows beyond the defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HttpPolicy {
    /// Hosts (`host` or `host:port`) a bundle may be downloaded from over plain HTTP.
    pub insecure_hosts: Vec<String>,
    /// Ranges that are not globally reachable but may be downloaded from anyway.
    pub allowed_cidrs: Vec<IpNet>,
}

/// Why a URL is not downloaded. Each message names the field and the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("spec.bundle.source.http.url is not an absolute URL ({0}); write https://host/path")]
    NotAUrl(String),
    #[error(
        "spec.bundle.source.http.url must use https:// (plain http:// only to hosts the cluster admin lists in the chart value bundleHttp.insecureHosts)"
    )]
    NotHttps,
    #[error(
        "spec.bundle.source.http.url must not contain a user name or password; serve the bundle without credentials"
    )]
    Credentials,
    #[error(
        "spec.bundle.source.http.url leads to {0}, an address that is not globally reachable (private, loopback, link-local or reserved); the operator does not download from there. Publish the bundle on a public server, use an OCI or ConfigMap source, or ask the cluster admin to list the range in the chart value bundleHttp.allowedCidrs"
    )]
    NotPublic(IpAddr),
    /// A name that resolves only to such addresses. The addresses are not named: they would tell
    /// a tenant what the operator's resolver knows (Services of other namespaces).
    #[error(
        "spec.bundle.source.http.url's host {0} does not lead to a globally reachable address; the operator does not download from there. Publish the bundle on a public server, use an OCI or ConfigMap source, or ask the cluster admin to list the range in the chart value bundleHttp.allowedCidrs"
    )]
    NotPublicName(String),
    #[error("spec.bundle.source.http.url's host {0} resolves to no address; check the name")]
    Unresolved(String),
}

impl HttpPolicy {
    /// The URL if it may be requested; addresses behind a name are checked by [`Resolver`].
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, Refused> {
        let parsed = reqwest::Url::parse(url).map_err(|e| Refused::NotAUrl(e.to_string()))?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(Refused::NotHttps);
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| Refused::NotAUrl("no host".into()))?;
        if parsed.scheme() == "http" && !self.is_insecure_host(host, parsed.port_or_known_default())
        {
            return Err(Refused::NotHttps);
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Refused::Credentials);
        }
        // An address literal never reaches the resolver.
        match parsed.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip))?,
            _ => {}
        }
        Ok(parsed)
    }

    /// Whether the operator may connect to `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        if is_global(ip) || self.allowed_cidrs.iter().any(|net| net.contains(&ip)) {
            Ok(())
        } else {
            Err(Refused::NotPublic(ip))
        }
    }

    fn is_insecure_host(&self, host: &str, port: Option<u16>) -> bool {
        self.insecure_hosts
            .iter()
            .any(|listed| listed == host || port.is_some_and(|p| *listed == format!("{host}:{p}")))
    }
}

/// Whether `ip` is globally reachable: not loopback, private, link-local, shared (CGNAT),
/// benchmarking, documentation, reserved, multicast or unspecified; IPv4-mapped IPv6 addresses
/// are judged as the IPv4 address they carry.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_global_v4(v4),
            None => is_global_v6(v6),
        },
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    const NOT_GLOBAL: &[(u32, u8)] = &[
        (0x0000_0000, 8),  // 0.0.0.0/8 "this network"
        (0x0a00_0000, 8),  // 10.0.0.0/8 private
        (0x6440_0000, 10), // 100.64.0.0/10 shared address space (CGNAT)
        (0x7f00_0000, 8),  // 127.0.0.0/8 loopback
        (0xa9fe_0000, 16), // 169.254.0.0/16 link-local (cloud metadata endpoints)
        (0xac10_0000, 12), // 172.16.0.0/12 private
        (0xc000_0000, 24), // 192.0.0.0/24 IETF protocol assignments
        (0xc000_0200, 24), // 192.0.2.0/24 documentation
        (0xc0a8_0000, 16), // 192.168.0.0/16 private
        (0xc612_0000, 15), // 198.18.0.0/15 benchmarking
        (0xc633_6400, 24), // 198.51.100.0/24 documentation
        (0xcb00_7100, 24), // 203.0.113.0/24 documentation
        (0xe000_0000, 4),  // 224.0.0.0/4 multicast
        (0xf000_0000, 4),  // 240.0.0.0/4 reserved, and the broadcast address
    ];
    let bits = u32::from(ip);
    !NOT_GLOBAL.iter().any(|&(net, len)| {
        let mask = u32::MAX << (32 - u32::from(len));
        bits & mask == net
    })
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let first = s[0];
    // Ranges that carry an IPv4 address or lead into someone's network by translation are not
    // judged by the address they carry: they are refused whole (fail closed).
    let embeds_v4 = s[..6] == [0; 6] // ::/96 IPv4-compatible (deprecated): ::169.254.169.254
        || first == 0x2002 // 2002::/16 6to4: 2002:a9fe:a9fe:: is 169.254.169.254
        || first == 0x2001 && s[1] < 0x0200; // 2001::/23 IETF assignments, Teredo 2001::/32 among them
    !(embeds_v4
        || ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || first & 0xfe00 == 0xfc00 // fc00::/7 unique local
        || first & 0xffc0 == 0xfe80 // fe80::/10 link-local
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // 2001:db8::/32 documentation
        || first == 0x0064 && s[1] == 0xff9b // 64:ff9b::/96 and 64:ff9b:1::/48 NAT64
        || first == 0x0100 && s[1..4] == [0; 3]) // 100::/64 discard-only
}

/// The DNS resolver of the bundle client: a name resolves only to the addresses the policy
/// allows, so the connection goes exactly where the check said.
#[derive(Clone, Debug)]
pub struct Resolver(pub Arc<HttpPolicy>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if found.is_empty() {
                return Err(Box::new(Refused::Unresolved(host)) as Box<_>);
            }
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| policy.check_ip(a.ip()).is_ok())
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(Refused::NotPublicName(host)) as Box<_>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The refusal behind a failed request, if the resolver refused it.
pub fn refusal_in(error: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused.clone());
        }
        current = e.source();
    }
    None
}

/// What kind of failure a request had, for a status message: never the bytes answered.
pub fn failure_kind(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "the server did not answer in time"
    } else if error.is_connect() {
        "the connection failed"
    } else if error.is_body() || error.is_decode() {
        "the answer broke off"
    } else {
        "the request failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HttpPolicy {
        HttpPolicy {
            insecure_hosts: vec!["bundles.local:8080".into(), "10.1.2.3".into()],
            allowed_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
        }
    }

    #[test]
    fn https_to_a_public_address_is_allowed_and_plain_http_only_to_listed_hosts() {
        let p = policy();
        assert!(
            p.check_url("https://bundles.example.com/hello.tar.gz")
                .is_ok()
        );
        assert!(p.check_url("https://93.184.216.34/hello.tar.gz").is_ok());
        assert_eq!(
            p.check_url("http://bundles.example.com/hello.tar.gz"),
            Err(Refused::NotHttps)
        );
        assert!(p.check_url("http://bundles.local:8080/b.tgz").is_ok());
        // Listed with a port: that port only.
        assert_eq!(
            p.check_url("http://bundles.local:9090/b.tgz"),
            Err(Refused::NotHttps)
        );
        // Listed without a port: any port, and still subject to the address check (allowed).
        assert!(p.check_url("http://10.1.2.3:1234/b.tgz").is_ok());
        for other in [
            "ftp://bundles.example.com/b",
            "file:///etc/passwd",
            "gopher://x/",
        ] {
            assert_eq!(p.check_url(other), Err(Refused::NotHttps), "{other}");
        }
        assert!(matches!(p.check_url("not a url"), Err(Refused::NotAUrl(_))));
        assert_eq!(
            p.check_url("https://user:secret@bundles.example.com/b"),
            Err(Refused::Credentials)
        );
    }

    #[test]
    fn addresses_that_are_not_globally_reachable_are_refused_unless_listed() {
        let p = policy();
        for url in [
            "https://169.254.169.254/latest/meta-data/",
            "https://127.0.0.1:6443/api",
            "https://[::1]/",
            "https://[::ffff:169.254.169.254]/",
            "https://[::169.254.169.254]/",
            "https://[2002:a9fe:a9fe::1]/",
            "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
            "https://[64:ff9b:1::a9fe:a9fe]/",
            "https://[100::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://192.168.1.1/",
            "https://172.20.0.1/",
            "https://100.64.0.1/",
            "https://198.19.255.1:5000/",
            "https://0.0.0.0/",
            "https://10.2.0.1/",
        ] {
            assert!(
                matches!(p.check_url(url), Err(Refused::NotPublic(_))),
                "{url}: {:?}",
                p.check_url(url)
            );
        }
        // The admin's range is allowed.
        assert!(p.check_url("https://10.1.200.7/b").is_ok());
        assert!(is_global("8.8.8.8".parse().unwrap()));
        assert!(is_global("2606:4700::1111".parse().unwrap()));
    }

    #[test]
    fn a_refusal_says_which_field_and_what_to_do_never_what_was_answered() {
        let message = Refused::NotPublic("169.254.169.254".parse().unwrap()).to_string();
        assert!(
            message.starts_with("spec.bundle.source.http.url"),
            "{message}"
        );
        assert!(message.contains("bundleHttp.allowedCidrs"), "{message}");
        assert!(
            Refused::NotHttps
                .to_string()
                .contains("bundleHttp.insecureHosts")
        );
    }

    #[tokio::test]
    async fn a_name_that_resolves_only_to_private_addresses_is_refused_by_the_resolver() {
        use reqwest::dns::Resolve;
        let resolver = Resolver(Arc::new(HttpPolicy::default()));
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = match resolver.resolve(name).await {
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        let refusal = refusal_in(err.as_ref());
        assert_eq!(
            refusal,
            Some(Refused::NotPublicName("localhost".into())),
            "{err}"
        );
        // The message names the host the tenant wrote, not what it resolved to.
        let message = refusal.map(|r| r.to_string()).unwrap_or_default();
        assert!(
            !message.contains("127.0.0.1") && !message.contains("::1"),
            "{message}"
        );
        // Allowed when the admin lists loopback.
        let allowing = Resolver(Arc::new(HttpPolicy {
            allowed_cidrs: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            ..HttpPolicy::default()
        }));
        let addrs: Vec<_> = allowing
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[tokio::test]
    async fn the_client_refuses_a_private_name_before_connecting() {
        // The same client setup the operator uses: a name resolving to loopback is refused.
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(Resolver(Arc::new(HttpPolicy::default()))))
            .build()
            .unwrap();
        let err = client
            .get("https://localhost:1/bundle.tar.gz")
            .send()
            .await
            .unwrap_err();
        assert!(
            matches!(refusal_in(&err), Some(Refused::NotPublicName(_))),
            "{err:?}"
        );
    }
}
