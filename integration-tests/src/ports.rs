//! Ports for servers that must be told their port before they start (a cluster's
//! members name each other's ports up front).

use std::sync::atomic::{AtomicU32, Ordering};

/// A port that is free on `ip` now. Chosen below Linux's ephemeral range (32768 and
/// up): a port-0 pick would be free when asked, but any outgoing connection on the
/// machine (another node dialing its peers, a test's client) may take it before the
/// server binds it, and the server then fails with "address in use". Successive calls
/// in one process walk the range, so they never hand out the same port twice.
pub fn free_port(ip: &str) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test binaries that run at the same time start at different places.
    let seed = std::process::id().wrapping_mul(7919) % 12_000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed + n.wrapping_mul(37)) % 12_000;
        let port = u16::try_from(port).expect("port in range");
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_repeat() {
        let ports: Vec<u16> = (0..200).map(|_| free_port("127.0.0.1")).collect();
        assert!(
            ports.iter().all(|p| (20_000..32_000).contains(p)),
            "{ports:?}"
        );
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    }
}
