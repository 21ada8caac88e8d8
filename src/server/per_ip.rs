//! Connections held per client IP address, for `max_connections_per_ip`.
//!
//! Owns: one counter per address with at least one connection, the slot a
//! connection keeps to give its count back in O(1), and the [`Claim`] an
//! admission holds until the connection is in the slab.
//! Must never: keep an address whose count fell to zero, scan all entries,
//! or let a count taken for a connection that is not admitted stay taken.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;

use slab::Slab;

/// What a connection holds while it is counted: the slot index plus one, so
/// `Option<IpSlot>` costs a connection four bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IpSlot(NonZeroU32);

impl IpSlot {
    fn new(key: usize) -> Option<IpSlot> {
        let plus_one = u32::try_from(key).ok()?.checked_add(1)?;
        NonZeroU32::new(plus_one).map(IpSlot)
    }

    fn key(self) -> usize {
        (self.0.get() - 1) as usize
    }
}

#[derive(Debug, Default)]
pub(super) struct PerIp {
    counts: Slab<(IpAddr, u32)>,
    index: HashMap<IpAddr, usize>,
}

impl PerIp {
    /// Counts one more connection from `ip`, unless it already holds `max`.
    pub(super) fn try_acquire(&mut self, ip: IpAddr, max: usize) -> Option<IpSlot> {
        // IPv4 peers on a dual-stack socket arrive as ::ffff:a.b.c.d; count
        // them under the IPv4 address they really are.
        let ip = ip.to_canonical();
        if let Some(&key) = self.index.get(&ip) {
            let entry = self.counts.get_mut(key)?;
            if entry.1 as usize >= max {
                return None;
            }
            entry.1 += 1;
            return IpSlot::new(key);
        }
        if max == 0 {
            return None;
        }
        let slot = IpSlot::new(self.counts.vacant_key())?;
        let key = self.counts.insert((ip, 1));
        self.index.insert(ip, key);
        Some(slot)
    }

    /// Gives back a count taken with [`PerIp::try_acquire`].
    pub(super) fn release(&mut self, slot: IpSlot) {
        let key = slot.key();
        let Some(entry) = self.counts.get_mut(key) else {
            return;
        };
        entry.1 = entry.1.saturating_sub(1);
        if entry.1 == 0 {
            let (ip, _) = self.counts.remove(key);
            self.index.remove(&ip);
        }
    }

    /// Takes a count for a connection from `ip` being admitted, unless the
    /// address already holds `limit` (`None`: no limit, nothing is counted).
    /// The count is given back when the claim is dropped, unless
    /// [`Claim::keep`] hands it to the admitted connection: an admission
    /// that fails half-way cannot leak it.
    pub(super) fn claim(&mut self, ip: IpAddr, limit: Option<usize>) -> Option<Claim<'_>> {
        let slot = match limit {
            None => None,
            Some(max) => Some(self.try_acquire(ip, max)?),
        };
        Some(Claim { per_ip: self, slot })
    }

    /// Addresses currently counted.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// A count taken for a connection being admitted; see [`PerIp::claim`].
pub(super) struct Claim<'a> {
    per_ip: &'a mut PerIp,
    slot: Option<IpSlot>,
}

impl Claim<'_> {
    /// The connection made it into the slab: it holds the count from now on
    /// and gives it back with [`PerIp::release`] when removed.
    pub(super) fn keep(mut self) -> Option<IpSlot> {
        self.slot.take()
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.per_ip.release(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_to_the_limit_and_forgets_idle_addresses() {
        let mut per_ip = PerIp::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = per_ip.try_acquire(a, 2).unwrap();
        let second = per_ip.try_acquire(a, 2).unwrap();
        assert_eq!(per_ip.try_acquire(a, 2), None);
        let other = per_ip.try_acquire(b, 2).unwrap();
        per_ip.release(first);
        assert!(per_ip.try_acquire(a, 2).is_some());
        per_ip.release(second);
        per_ip.release(second);
        per_ip.release(other);
        assert_eq!(per_ip.len(), 0, "zero counts are dropped");
        assert!(per_ip.is_empty());
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let mut per_ip = PerIp::default();
        let v4: IpAddr = "127.0.0.2".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        per_ip.try_acquire(v4, 1).unwrap();
        assert_eq!(per_ip.try_acquire(mapped, 1), None);
    }

    #[test]
    fn zero_limit_admits_nobody() {
        let mut per_ip = PerIp::default();
        assert_eq!(per_ip.try_acquire("127.0.0.2".parse().unwrap(), 0), None);
    }

    #[test]
    fn a_claim_not_kept_gives_its_count_back() {
        let mut per_ip = PerIp::default();
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        // Admission failing after the claim (slab full, poller refusing the
        // socket, TLS setup failing): the claim is dropped.
        for _ in 0..3 {
            let claim = per_ip.claim(ip, Some(1)).expect("under the limit");
            drop(claim);
        }
        assert!(per_ip.is_empty(), "no count leaked");
        let kept = per_ip.claim(ip, Some(1)).and_then(Claim::keep);
        assert!(kept.is_some());
        assert!(per_ip.claim(ip, Some(1)).is_none(), "the kept count holds");
        per_ip.release(kept.unwrap());
        assert!(per_ip.is_empty());
    }

    #[test]
    fn without_a_limit_nothing_is_counted() {
        let mut per_ip = PerIp::default();
        let claim = per_ip.claim("127.0.0.2".parse().unwrap(), None).unwrap();
        assert_eq!(claim.keep(), None);
        assert!(per_ip.is_empty());
    }
}
