//! How many sockets the server holds: in all, per user and per client address. A handshake past
//! a limit is refused before the upgrade (503 or 429 with a JSON body), never accepted and then
//! closed, so a client sees why and a well-behaved one backs off.
//!
//! A socket holds a [`Slot`] from its handshake's checks to its close: it is counted while
//! `verifyUser` runs too, so a burst of handshakes cannot pass a limit by all waiting at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use hyper::header::HeaderMap;
use parking_lot::Mutex;

use crate::config::Config;

/// Which limit a handshake is past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Over {
    /// `maxConnections`: the server as a whole (503).
    Total,
    /// `maxConnectionsPerUser` (429).
    User,
    /// `maxConnectionsPerIp` (429).
    Ip,
}

/// The counts; a map is kept only for a limit that is set (0 = none), so an unlimited
/// server does no map work per handshake.
#[derive(Default)]
struct Counts {
    total: usize,
    by_user: HashMap<Arc<str>, usize>,
    by_ip: HashMap<IpAddr, usize>,
}

pub(crate) struct Limits {
    max_total: usize,
    max_per_user: usize,
    max_per_ip: usize,
    /// One lock for the three counts: handshakes are rare beside messages, and one lock makes
    /// a reservation all or nothing.
    counts: Mutex<Counts>,
}

/// One socket's place in the counts, given back when dropped.
pub(crate) struct Slot {
    limits: Arc<Limits>,
    /// The user this socket counts for (the user's key, shared, not copied), when per-user
    /// limits are on.
    user: Option<Arc<str>>,
    /// The address it counts for, when per-address limits are on.
    ip: Option<IpAddr>,
}

impl Counts {
    /// Counts one more socket for `user`; the key the map holds, which the slot keeps (one copy
    /// per user, not one per socket: each handshake makes its own).
    fn count_user(&mut self, user: &Arc<str>) -> Arc<str> {
        match self.by_user.get_mut(user) {
            Some(n) => {
                *n += 1;
                self.by_user.get_key_value(user).expect("just counted").0.clone()
            }
            None => {
                self.by_user.insert(user.clone(), 1);
                user.clone()
            }
        }
    }
}

impl Limits {
    pub(crate) fn new(config: &Config) -> Arc<Limits> {
        Arc::new(Limits {
            max_total: config.max_connections,
            max_per_user: config.max_connections_per_user,
            max_per_ip: config.max_connections_per_ip,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Counts one more socket for this user (`None`: anonymous, counted by address only) from
    /// this address, unless that passes a limit (0 is no limit, for the two per-client ones).
    pub(crate) fn reserve(self: &Arc<Self>, user: Option<&Arc<str>>, ip: Option<IpAddr>) -> Result<Slot, Over> {
        let mut c = self.counts.lock();
        if c.total >= self.max_total {
            return Err(Over::Total);
        }
        let user = user.filter(|_| self.max_per_user > 0);
        let ip = ip.filter(|_| self.max_per_ip > 0);
        if let Some(user) = user {
            if c.by_user.get(user).copied().unwrap_or(0) >= self.max_per_user {
                return Err(Over::User);
            }
        }
        if let Some(ip) = ip {
            if c.by_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
                return Err(Over::Ip);
            }
        }
        c.total += 1;
        let user = user.map(|user| c.count_user(user));
        if let Some(ip) = ip {
            *c.by_ip.entry(ip).or_default() += 1;
        }
        Ok(Slot {
            limits: self.clone(),
            user,
            ip,
        })
    }

    /// Sockets counted now (open, or in their handshake).
    #[cfg(test)]
    pub(crate) fn total(&self) -> usize {
        self.counts.lock().total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.limits.counts.lock();
        c.total -= 1;
        // Entries at zero are removed: the maps hold only users and addresses with sockets.
        if let Some(user) = &self.user {
            if let Some(n) = c.by_user.get_mut(user) {
                *n -= 1;
                if *n == 0 {
                    c.by_user.remove(user);
                }
            }
        }
        if let Some(ip) = &self.ip {
            if let Some(n) = c.by_ip.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    c.by_ip.remove(ip);
                }
            }
        }
    }
}

impl Slot {
    /// Counts this socket for `user_key` too, once it has said who it is after the upgrade
    /// (first-message auth): `Err` when that user is at `maxConnectionsPerUser`.
    pub(crate) fn add_user(&mut self, user_key: &Arc<str>) -> Result<(), Over> {
        if self.limits.max_per_user == 0 {
            return Ok(());
        }
        let mut c = self.limits.counts.lock();
        if c.by_user.get(user_key).copied().unwrap_or(0) >= self.limits.max_per_user {
            return Err(Over::User);
        }
        self.user = Some(c.count_user(user_key));
        Ok(())
    }
}

/// How many `verifyUser` calls run at once: in all (`maxVerifying`) and per user
/// (`maxVerifyingPerUser`). Each is a database read in the host's process, so a burst of
/// handshakes or refreshes past these is turned away at once rather than queued behind Payload.
pub(crate) struct Verifying {
    max_total: usize,
    max_per_user: usize,
    counts: Mutex<(usize, HashMap<String, usize>)>,
}

/// One `verifyUser` call's place, given back when dropped (answered, failed, or timed out).
pub(crate) struct VerifySlot {
    verifying: Arc<Verifying>,
    user: String,
}

impl Verifying {
    pub(crate) fn new(config: &Config) -> Arc<Verifying> {
        Arc::new(Verifying {
            max_total: config.max_verifying,
            max_per_user: config.max_verifying_per_user,
            counts: Mutex::new((0, HashMap::new())),
        })
    }

    /// A place for one more call for `user_key`, or which cap is full ([`Over::Total`] or
    /// [`Over::User`]).
    pub(crate) fn begin(self: &Arc<Self>, user_key: &str) -> Result<VerifySlot, Over> {
        let mut c = self.counts.lock();
        if c.0 >= self.max_total {
            return Err(Over::Total);
        }
        let mine = c.1.get(user_key).copied().unwrap_or(0);
        if self.max_per_user > 0 && mine >= self.max_per_user {
            return Err(Over::User);
        }
        c.0 += 1;
        *c.1.entry(user_key.to_string()).or_default() += 1;
        Ok(VerifySlot {
            verifying: self.clone(),
            user: user_key.to_string(),
        })
    }

    /// Calls in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.counts.lock().0
    }
}

impl Drop for VerifySlot {
    fn drop(&mut self) {
        let mut c = self.verifying.counts.lock();
        c.0 -= 1;
        if let Some(n) = c.1.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                c.1.remove(&self.user);
            }
        }
    }
}

/// The client's address: the peer's own, unless the peer is a trusted proxy; then the last
/// address in `Forwarded` (RFC 7239), or `X-Forwarded-For` without it, that is not a trusted
/// proxy: the one the nearest trusted proxy saw (anything left of it the client may have
/// written itself). With `loopback`, every loopback address is a trusted proxy too.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr], loopback: bool) -> IpAddr {
    let peer = peer.to_canonical();
    let trusted_ip = |ip: &IpAddr| (loopback && ip.is_loopback()) || trusted.contains(ip);
    if !trusted_ip(&peer) {
        return peer;
    }
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::to_string)
            .collect()
    };
    let mut chain = values("forwarded");
    let forwarded = !chain.is_empty();
    if !forwarded {
        chain = values("x-forwarded-for");
    }
    let chain: Vec<IpAddr> = chain
        .iter()
        .filter_map(|hop| {
            if forwarded {
                forwarded_for(hop)
            } else {
                Some(hop.trim())
            }
        })
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    chain
        .iter()
        .rev()
        .find(|ip| !trusted_ip(ip))
        .or(chain.first())
        .copied()
        .unwrap_or(peer)
}

/// The address of one `Forwarded` element's `for=` (`for=192.0.2.1`, `for="[2001:db8::1]:4711"`,
/// `for="192.0.2.1:80"`); `None` for an obfuscated or `unknown` one, or none at all.
fn forwarded_for(element: &str) -> Option<&str> {
    let value = element.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })?;
    if let Some(v6) = value.strip_prefix('[') {
        return v6.split(']').next();
    }
    // An IPv4 address may come with a port.
    Some(
        value
            .split(':')
            .next()
            .filter(|_| value.matches(':').count() == 1)
            .unwrap_or(value),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Arc<str> {
        Arc::from(k)
    }

    fn limits(total: usize, per_user: usize, per_ip: usize) -> Arc<Limits> {
        Limits::new(&Config {
            max_connections: total,
            max_connections_per_user: per_user,
            max_connections_per_ip: per_ip,
            ..Config::default()
        })
    }

    #[test]
    fn each_limit_refuses_past_it_and_a_closed_socket_frees_its_place() {
        let ip = |n: u8| Some(IpAddr::from([10, 0, 0, n]));
        let l = limits(4, 2, 3);
        let a1 = l.reserve(Some(&key("users:a")), ip(1)).unwrap();
        let _a2 = l.reserve(Some(&key("users:a")), ip(1)).unwrap();
        assert_eq!(l.reserve(Some(&key("users:a")), ip(2)).err(), Some(Over::User));
        let _b1 = l.reserve(Some(&key("users:b")), ip(1)).unwrap();
        assert_eq!(l.reserve(None, ip(1)).err(), Some(Over::Ip), "anonymous: by address");
        let _c = l.reserve(None, ip(2)).unwrap();
        assert_eq!(l.reserve(Some(&key("users:z")), ip(9)).err(), Some(Over::Total));
        assert_eq!(l.total(), 4, "refusals take no place");
        drop(a1);
        assert_eq!(l.total(), 3);
        let _a3 = l.reserve(Some(&key("users:a")), ip(2)).unwrap();
        assert!(l.counts.lock().by_user.len() == 2);
    }

    #[test]
    fn zero_is_no_limit_per_user_and_address_and_the_maps_forget_what_left() {
        let l = limits(1000, 0, 0);
        let slots: Vec<Slot> = (0..100)
            .map(|_| {
                l.reserve(Some(&key("users:a")), Some(IpAddr::from([127, 0, 0, 1])))
                    .unwrap()
            })
            .collect();
        drop(slots);
        let c = l.counts.lock();
        assert_eq!(c.total, 0);
        assert!(c.by_user.is_empty() && c.by_ip.is_empty());
    }

    #[test]
    fn verifications_are_capped_in_all_and_per_user_and_freed_when_dropped() {
        let v = Verifying::new(&Config {
            max_verifying: 3,
            max_verifying_per_user: 2,
            ..Config::default()
        });
        let a1 = v.begin("users:a").unwrap();
        let a2 = v.begin("users:a").unwrap();
        assert_eq!(v.begin("users:a").err(), Some(Over::User));
        let _b1 = v.begin("users:b").unwrap();
        assert_eq!(v.begin("users:c").err(), Some(Over::Total), "the global cap first");
        assert_eq!(v.in_flight(), 3, "refusals take no place");
        drop(a1);
        // A freed place serves anyone, and the user's own count went down with it.
        let a3 = v.begin("users:a").unwrap();
        drop((a2, a3));
        assert_eq!(v.in_flight(), 1);
        assert!(
            !v.counts.lock().1.contains_key("users:a"),
            "users with no call are forgotten"
        );

        let unlimited = Verifying::new(&Config {
            max_verifying: 100,
            max_verifying_per_user: 0,
            ..Config::default()
        });
        let slots: Vec<_> = (0..50).map(|_| unlimited.begin("users:a").unwrap()).collect();
        assert_eq!(unlimited.in_flight(), 50);
        drop(slots);
        assert_eq!(unlimited.in_flight(), 0);
    }

    #[test]
    fn a_socket_that_says_who_it_is_later_counts_for_its_user() {
        let l = limits(10, 1, 0);
        let _known = l.reserve(Some(&key("users:a")), None).unwrap();
        let mut pending = l.reserve(None, None).unwrap();
        assert_eq!(pending.add_user(&key("users:a")).err(), Some(Over::User));
        pending.add_user(&key("users:b")).unwrap();
        assert_eq!(l.reserve(Some(&key("users:b")), None).err(), Some(Over::User));
        drop(pending);
        let _b = l.reserve(Some(&key("users:b")), None).unwrap();
        assert_eq!(l.total(), 2);
    }

    #[test]
    fn a_loopback_proxy_is_trusted_without_being_listed() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "198.51.100.4, 127.0.0.1".parse().unwrap());
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(local, &h, &[], true),
            "198.51.100.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("::1".parse().unwrap(), &h, &[], true),
            "198.51.100.4".parse::<IpAddr>().unwrap()
        );
        // Without a header a local client is itself.
        assert_eq!(client_ip(local, &HeaderMap::new(), &[], true), local);
        // A remote peer's header is still its own words.
        let remote: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(remote, &h, &[], true), remote);
        // trustedProxies without 'loopback': a local peer's header is its own words too.
        assert_eq!(client_ip(local, &h, &[], false), local);
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2".parse().unwrap());
        let trusted = ["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        // Not from a trusted proxy: the header is the client's own words.
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(stranger, &h, &trusted, false), stranger);
        // From one: the nearest address no trusted proxy owns (not the spoofable leftmost).
        assert_eq!(
            client_ip(proxy, &h, &trusted, false),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        // IPv4 seen through an IPv6 socket is the same address.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(mapped, &h, &trusted, false),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        // No header: the proxy itself.
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted, false), proxy);

        // RFC 7239's header, with quoted addresses and ports, in place of X-Forwarded-For.
        let mut h = HeaderMap::new();
        h.insert(
            "forwarded",
            r#"for=6.6.6.6, for="[2001:db8::7]:4711";proto=https, For="10.0.0.2:80""#
                .parse()
                .unwrap(),
        );
        h.insert("x-forwarded-for", "198.51.100.9".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted, false),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        let mut h = HeaderMap::new();
        h.insert("forwarded", "for=unknown, for=203.0.113.8:1234".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted, false),
            "203.0.113.8".parse::<IpAddr>().unwrap()
        );
    }
}
