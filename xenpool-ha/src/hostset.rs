//! A set of host indices (at most 64, the statefile's limit as in xha).

/// A set of host indices below 64, as a bitmap: the statefile and heartbeats carry these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct HostSet(pub u64);

impl HostSet {
    /// Hosts `0..n`.
    pub fn first(n: usize) -> HostSet {
        if n >= 64 {
            HostSet(u64::MAX)
        } else {
            HostSet((1u64 << n) - 1)
        }
    }
    /// The empty set.
    pub fn empty() -> HostSet {
        HostSet(0)
    }
    /// Whether `h` is in the set.
    pub fn contains(self, h: usize) -> bool {
        h < 64 && self.0 & (1u64 << h) != 0
    }
    /// Adds `h`.
    pub fn insert(&mut self, h: usize) {
        if h < 64 {
            self.0 |= 1u64 << h;
        }
    }
    /// Removes `h`.
    pub fn remove(&mut self, h: usize) {
        if h < 64 {
            self.0 &= !(1u64 << h);
        }
    }
    /// Number of hosts.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }
    /// Whether no host is in it.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The lowest index, if any.
    pub fn lowest(self) -> Option<usize> {
        (self.0 != 0).then(|| self.0.trailing_zeros() as usize)
    }
    /// Hosts in `self` but not in `other`.
    pub fn minus(self, other: HostSet) -> HostSet {
        HostSet(self.0 & !other.0)
    }
    /// The indices, ascending.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        // Walk the set bits only: this runs on every heartbeat.
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(i)
        })
    }
}
