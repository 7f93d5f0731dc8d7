//! The allow-list of HTTP/S subscription endpoints (`sns.http_allow`).
//!
//! An SNS endpoint makes the broker send requests wherever a subscriber says: without a list,
//! anyone allowed to call Subscribe could have the broker probe or post to internal services
//! (server-side request forgery). Entries:
//! - an IP network in CIDR form (`10.0.0.0/8`, `::1/128`) or a single address (`192.0.2.7`):
//!   endpoints whose host is an address literal inside it;
//! - a host name (`hooks.example.com`), or `*.example.com` for the names under a domain:
//!   endpoints naming that host; the broker trusts the name and connects to whatever it
//!   resolves to;
//! - `*`: every endpoint (for closed test networks only).
//!
//! A name is never allowed through a network entry: deciding that would need a DNS lookup at
//! Subscribe time, and the answer could change before the post (DNS rebinding). Redirects are
//! never followed (a 3xx answer ends the delivery), so an allowed endpoint cannot send the
//! broker elsewhere.

use std::net::IpAddr;

use ipnet::IpNet;
use url::{Host, Url};

/// The default: this machine only.
pub const DEFAULT_ALLOW: &[&str] = &["localhost", "127.0.0.0/8", "::1/128"];

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowList {
    any: bool,
    networks: Vec<IpNet>,
    /// Lowercased exact names.
    names: Vec<String>,
    /// Lowercased domain suffixes of `*.domain` entries, with the leading dot.
    domains: Vec<String>,
}

impl AllowList {
    /// Reads the entries; the error names every entry that is neither a network nor a name.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, String> {
        let mut list = AllowList::default();
        let mut bad = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry == "*" {
                list.any = true;
            } else if let Ok(net) = entry.parse::<IpNet>() {
                list.networks.push(net);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                list.networks.push(IpNet::from(ip));
            } else if let Some(domain) = entry.strip_prefix("*.") {
                if valid_name(domain) {
                    list.domains
                        .push(format!(".{}", domain.to_ascii_lowercase()));
                } else {
                    bad.push(entry.to_string());
                }
            } else if valid_name(entry) {
                list.names.push(entry.to_ascii_lowercase());
            } else {
                bad.push(entry.to_string());
            }
        }
        if bad.is_empty() {
            Ok(list)
        } else {
            Err(format!(
                "{bad:?}: not an IP network, an address, a host name, *.domain or *"
            ))
        }
    }

    /// Whether a post may go to `url`: `http` or `https`, and a host the list allows.
    pub fn check(&self, url: &Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "endpoint scheme {:?} is not http or https",
                url.scheme()
            ));
        }
        let allowed = match url.host() {
            None => return Err("endpoint has no host".to_string()),
            Some(_) if self.any => true,
            Some(Host::Ipv4(ip)) => self.allows_ip(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => self.allows_ip(IpAddr::V6(ip)),
            Some(Host::Domain(name)) => self.allows_name(name),
        };
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "endpoint host {} is not in sns.http_allow",
                url.host_str().unwrap_or_default()
            ))
        }
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 address is the IPv4 address for the network it reaches.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.networks.iter().any(|n| n.contains(&ip))
    }

    fn allows_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.names.contains(&name) || self.domains.iter().any(|d| name.ends_with(d.as_str()))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}
