//! The SSRF guard for user-supplied URLs (webhook endpoints, forwarding destinations): loopback,
//! private, link-local, shared (CGNAT), multicast and reserved addresses are refused unless the
//! deployment allows them (tests, on-premises setups).
//!
//! Two layers:
//! - [`check_url`] before a request: a literal IP is checked as is, a name is resolved and every
//!   address checked, so the caller gets a clear "refused" error to record;
//! - [`client`] builds the HTTP client with [`GuardedResolver`], which drops private addresses
//!   from every resolution the client itself makes. A DNS answer that changes between the check
//!   and the connection (rebinding) therefore still cannot reach a private address. The client
//!   does not follow redirects and ignores proxy settings (a proxy would resolve the name
//!   itself, out of the guard's sight).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a URL may not be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsrfError {
    #[error("`{0}` is not an absolute http(s) URL")]
    InvalidUrl(String),
    #[error("{host} resolves to a private or local address ({ip}); refused")]
    Private { host: String, ip: IpAddr },
    #[error("cannot resolve {host}: {message}")]
    Resolve { host: String, message: String },
}

impl SsrfError {
    /// Whether the URL was refused for what it points at (as opposed to a DNS failure, which
    /// may pass).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, SsrfError::Resolve { .. })
    }
}

/// Whether `ip` is an address a user-supplied URL must not reach.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => is_private_v6(v6),
    }
}

fn is_private_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        // 0.0.0.0/8 "this network"
        || a == 0
        // 100.64.0.0/10 shared address space (CGNAT)
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24 protocol assignments
        || (a == 192 && b == 0 && c == 0)
        // 198.18.0.0/15 benchmarking
        || (a == 198 && (b == 18 || b == 19))
        // 240.0.0.0/4 reserved
        || a >= 240
}

fn is_private_v6(v6: Ipv6Addr) -> bool {
    let segments = v6.segments();
    if let Some(v4) = v6.to_ipv4_mapped() {
        return is_private_v4(v4);
    }
    // NAT64 (64:ff9b::/96) embeds an IPv4 address in the last 32 bits.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let embedded = Ipv4Addr::from(((segments[6] as u32) << 16) | segments[7] as u32);
        return is_private_v4(embedded);
    }
    // 6to4 (2002::/16) embeds one in bits 16..48.
    if segments[0] == 0x2002 {
        let embedded = Ipv4Addr::from(((segments[1] as u32) << 16) | segments[2] as u32);
        return is_private_v4(embedded);
    }
    v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        // fc00::/7 unique local
        || (segments[0] & 0xfe00) == 0xfc00
        // fe80::/10 link-local
        || (segments[0] & 0xffc0) == 0xfe80
        // fec0::/10 site-local (deprecated)
        || (segments[0] & 0xffc0) == 0xfec0
        // 2001:db8::/32 documentation
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)
        // ::/96 IPv4-compatible (deprecated)
        || (segments[..6] == [0, 0, 0, 0, 0, 0])
}

/// Parses an absolute `http`/`https` URL with a host.
pub fn parse_http_url(raw: &str) -> Result<reqwest::Url, SsrfError> {
    let url = reqwest::Url::parse(raw.trim()).map_err(|_| SsrfError::InvalidUrl(raw.to_owned()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(SsrfError::InvalidUrl(raw.to_owned()));
    }
    Ok(url)
}

/// Checks `url` before calling it: refused when it is, or resolves to, a private address and
/// `allow_private` is off. A name that does not resolve is an error too (the request would
/// fail anyway); callers that only validate input can let [`SsrfError::Resolve`] pass.
pub async fn check_url(url: &str, allow_private: bool) -> Result<(), SsrfError> {
    let parsed = parse_http_url(url)?;
    if allow_private {
        return Ok(());
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    let host = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => return check_ip(&ip.to_string(), IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => return check_ip(&ip.to_string(), IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => name.to_owned(),
        None => return Err(SsrfError::InvalidUrl(url.to_owned())),
    };
    let addresses = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| SsrfError::Resolve {
            host: host.clone(),
            message: e.to_string(),
        })?;
    for address in addresses {
        check_ip(&host, address.ip())?;
    }
    Ok(())
}

fn check_ip(host: &str, ip: IpAddr) -> Result<(), SsrfError> {
    if is_private(ip) {
        return Err(SsrfError::Private {
            host: host.to_owned(),
            ip,
        });
    }
    Ok(())
}

/// A resolver that leaves private addresses out of every answer; a name with nothing else
/// fails to resolve.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| !is_private(a.ip()))
                .collect();
            if public.is_empty() {
                let refused = SsrfError::Private {
                    host,
                    ip: all
                        .first()
                        .map(SocketAddr::ip)
                        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                };
                return Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// An HTTP client for user-supplied URLs: `timeout` per request, no redirects, no proxy, and
/// (unless `allow_private`) the [`GuardedResolver`].
pub fn client(timeout: Duration, allow_private: bool) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if !allow_private {
        builder = builder.dns_resolver(Arc::new(GuardedResolver));
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "198.18.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "81.2.69.142",
            "2001:218::1",
            "8.8.8.8",
            "172.32.0.1",
            "64:ff9b::808:808",
            "2606:4700::1111",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_before_calls() {
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://[::1]/hook",
            "https://10.0.0.7/",
            "http://localhost:9/",
        ] {
            let err = check_url(url, false).await.unwrap_err();
            assert!(err.is_refusal(), "{url}: {err}");
            assert!(err.to_string().contains("private"), "{err}");
            check_url(url, true).await.unwrap();
        }
        for url in [
            "ftp://example.com/",
            "not a url",
            "https://",
            "mailto:a@example.com",
        ] {
            assert!(matches!(
                check_url(url, true).await,
                Err(SsrfError::InvalidUrl(_))
            ));
        }
        check_url("https://81.2.69.142/hook", false).await.unwrap();
    }

    #[tokio::test]
    async fn the_guarded_client_cannot_reach_loopback_names() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let guarded = client(Duration::from_secs(2), false).unwrap();
        let err = guarded
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap_err();
        assert!(
            err.is_connect() || format!("{err:?}").contains("private"),
            "{err:?}"
        );
    }
}
