//! A simulated guest's memory: a sparse, page-granular image with a dirty-page log, and a
//! seeded workload that writes to it.
//!
//! Pages never written read as zeros and take no host memory, so a 4 GiB guest that touched
//! 256 MiB costs 256 MiB here. The dirty log is what Xen's log-dirty mode gives a migration:
//! while it is on, every written page is remembered until the log is read and cleared.
//!
//! The workload draws from its own seeded generator and moves only when told to (a step), so
//! a run is the same on every machine and no decision depends on a clock.

use std::collections::{BTreeMap, BTreeSet};

/// Bytes per page, as on x86 Xen.
pub const PAGE_SIZE: usize = 4096;

/// One page's contents.
pub type Page = Box<[u8; PAGE_SIZE]>;

fn zero_page() -> Page {
    Box::new([0u8; PAGE_SIZE])
}

/// A guest's memory image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestMemory {
    /// Pages that were ever written, by index.
    pages: BTreeMap<u64, Page>,
    /// Pages written since the log was last read; `None` while logging is off.
    dirty: Option<BTreeSet<u64>>,
    /// Pages in the guest (its memory divided by [`PAGE_SIZE`]).
    page_count: u64,
}

impl GuestMemory {
    /// An all-zero image of `page_count` pages.
    pub fn new(page_count: u64) -> GuestMemory {
        GuestMemory {
            pages: BTreeMap::new(),
            dirty: None,
            page_count,
        }
    }

    /// Pages in the guest.
    pub fn page_count(&self) -> u64 {
        self.page_count
    }

    /// Pages that were written at least once, in index order.
    pub fn populated(&self) -> Vec<u64> {
        self.pages.keys().copied().collect()
    }

    /// How many pages were written at least once.
    pub fn populated_count(&self) -> usize {
        self.pages.len()
    }

    /// A page's contents (zeros when never written); `None` past the end of the guest.
    pub fn read(&self, index: u64) -> Option<&[u8; PAGE_SIZE]> {
        static ZERO: [u8; PAGE_SIZE] = [0u8; PAGE_SIZE];
        if index >= self.page_count {
            return None;
        }
        Some(self.pages.get(&index).map_or(&ZERO, |p| p))
    }

    /// Replaces a whole page; `false` (and nothing written) past the end of the guest.
    pub fn write_page(&mut self, index: u64, data: &[u8; PAGE_SIZE]) -> bool {
        if index >= self.page_count {
            return false;
        }
        match self.pages.get_mut(&index) {
            Some(p) => p.copy_from_slice(data),
            None => {
                let mut p = zero_page();
                p.copy_from_slice(data);
                self.pages.insert(index, p);
            }
        }
        self.mark(index);
        true
    }

    /// Writes eight bytes at `offset` (rounded down to a multiple of 8) of a page, as a guest
    /// store does; `false` past the end of the guest.
    pub fn store_u64(&mut self, index: u64, offset: usize, value: u64) -> bool {
        if index >= self.page_count {
            return false;
        }
        let at = (offset % PAGE_SIZE) & !7;
        let page = self.pages.entry(index).or_insert_with(zero_page);
        page[at..at + 8].copy_from_slice(&value.to_le_bytes());
        self.mark(index);
        true
    }

    fn mark(&mut self, index: u64) {
        if let Some(d) = &mut self.dirty {
            d.insert(index);
        }
    }

    /// Turns the dirty log on, empty.
    pub fn start_logging(&mut self) {
        self.dirty = Some(BTreeSet::new());
    }

    /// Turns the dirty log off and forgets it.
    pub fn stop_logging(&mut self) {
        self.dirty = None;
    }

    /// Whether the dirty log is on.
    pub fn logging(&self) -> bool {
        self.dirty.is_some()
    }

    /// The pages written since the last call (or since logging started), in index order,
    /// and clears the log. Empty when logging is off.
    pub fn take_dirty(&mut self) -> Vec<u64> {
        match &mut self.dirty {
            Some(d) => std::mem::take(d).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// Whether two images read the same at every page: a page written with zeros equals a
    /// page never written.
    pub fn same_contents(&self, other: &GuestMemory) -> bool {
        if self.page_count != other.page_count {
            return false;
        }
        let zero = [0u8; PAGE_SIZE];
        let differs = |a: &GuestMemory, b: &GuestMemory| {
            a.pages.iter().any(|(i, p)| match b.pages.get(i) {
                Some(q) => p != q,
                None => p[..] != zero[..],
            })
        };
        !differs(self, other) && !differs(other, self)
    }
}

/// What a simulated guest does to its memory on each step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadConfig {
    /// Seed of the generator; the same seed writes the same pages with the same values.
    pub seed: u64,
    /// Pages written per step.
    pub pages_per_step: u32,
    /// First page of the region the guest writes to.
    pub working_set_start: u64,
    /// Pages in that region (at least 1); writes fall uniformly within it.
    pub working_set_pages: u64,
}

/// A guest workload: a seeded generator of stores into a working set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    config: WorkloadConfig,
    state: u64,
}

impl Workload {
    /// A workload starting from its seed.
    pub fn new(config: WorkloadConfig) -> Workload {
        Workload {
            state: config.seed,
            config,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &WorkloadConfig {
        &self.config
    }

    /// splitmix64: small, fast, and the same everywhere.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Runs `steps` steps against `memory`; returns how many stores landed.
    pub fn step(&mut self, memory: &mut GuestMemory, steps: u64) -> u64 {
        let span = self.config.working_set_pages.max(1);
        let mut stored = 0;
        for _ in 0..steps {
            for _ in 0..self.config.pages_per_step {
                let page = self
                    .config
                    .working_set_start
                    .wrapping_add(self.next() % span);
                let offset = (self.next() % PAGE_SIZE as u64) as usize;
                let value = self.next();
                if memory.store_u64(page, offset, value) {
                    stored += 1;
                }
            }
        }
        stored
    }
}

/// Fills `pages` pages from `first` with seeded contents, as a guest that booted and touched
/// that much memory. Logging, if on, records them.
pub fn populate(memory: &mut GuestMemory, first: u64, pages: u64, seed: u64) {
    let mut w = Workload::new(WorkloadConfig {
        seed,
        pages_per_step: 0,
        working_set_start: 0,
        working_set_pages: 1,
    });
    for index in first..first.saturating_add(pages).min(memory.page_count()) {
        // One store per page is enough to make each page distinct and non-zero.
        let value = w.next() | 1;
        memory.store_u64(index, (index as usize % 512) * 8, value);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unwritten_pages_read_as_zero_and_cost_nothing() {
        let mut m = GuestMemory::new(1 << 20);
        assert_eq!(m.read(12345).unwrap()[..], [0u8; PAGE_SIZE][..]);
        assert_eq!(m.populated_count(), 0);
        assert!(m.store_u64(7, 16, 0xdead_beef));
        assert_eq!(m.populated(), vec![7]);
        assert_eq!(&m.read(7).unwrap()[16..24], &0xdead_beefu64.to_le_bytes());
        assert!(m.read(1 << 20).is_none());
        assert!(!m.store_u64(1 << 20, 0, 1));
    }

    #[test]
    fn the_dirty_log_records_writes_while_on_and_clears_when_read() {
        let mut m = GuestMemory::new(64);
        m.store_u64(1, 0, 1);
        m.start_logging();
        assert!(m.take_dirty().is_empty());
        m.store_u64(3, 0, 1);
        m.store_u64(2, 0, 1);
        m.store_u64(3, 8, 1);
        assert_eq!(m.take_dirty(), vec![2, 3]);
        assert!(m.take_dirty().is_empty());
        m.stop_logging();
        m.store_u64(4, 0, 1);
        assert!(m.take_dirty().is_empty());
    }

    #[test]
    fn a_zero_page_equals_a_missing_one() {
        let mut a = GuestMemory::new(8);
        let b = GuestMemory::new(8);
        a.write_page(3, &[0u8; PAGE_SIZE]);
        assert!(a.same_contents(&b) && b.same_contents(&a));
        a.store_u64(3, 0, 9);
        assert!(!a.same_contents(&b) && !b.same_contents(&a));
        assert!(!GuestMemory::new(9).same_contents(&b));
    }

    #[test]
    fn workloads_are_deterministic_and_stay_in_their_working_set() {
        let config = WorkloadConfig {
            seed: 42,
            pages_per_step: 10,
            working_set_start: 100,
            working_set_pages: 50,
        };
        let run = || {
            let mut m = GuestMemory::new(1000);
            m.start_logging();
            let mut w = Workload::new(config);
            assert_eq!(w.step(&mut m, 5), 50);
            m
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        let mut a = a;
        let dirty = a.take_dirty();
        assert!(!dirty.is_empty());
        assert!(dirty.iter().all(|p| (100..150).contains(p)), "{dirty:?}");
    }
}
