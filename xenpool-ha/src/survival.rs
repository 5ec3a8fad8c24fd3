//! The survival rule: which of two competing claims wins.
//!
//! A claim is the set of liveset members a host still has two-way network contact with.
//! Claims are only ever written by hosts that can write the statefile, so a partition
//! without the statefile never claims and so never survives a split (rule 1 of xha: the
//! partition with the statefile decides). Between claims: the larger set wins; on equal
//! size, the set holding the lowest host index (the host listed first); the rest (which can
//! only arise from asymmetric links) by the sorted member lists. This is a total order, so
//! two different claims never both beat each other.

use std::cmp::Ordering;

use crate::HostSet;

/// Orders claims: `Greater` means `a` beats `b`.
pub fn compare_claims(a: HostSet, b: HostSet) -> Ordering {
    a.len()
        .cmp(&b.len())
        // A lower lowest index is better, so compare reversed.
        .then_with(|| b.lowest().cmp(&a.lowest()))
        .then_with(|| {
            // Lexicographically smaller member list is better; the bitmaps differ in
            // their lowest differing bit, which belongs to the better claim.
            let diff = a.0 ^ b.0;
            if diff == 0 {
                Ordering::Equal
            } else if a.0 & (diff & diff.wrapping_neg()) != 0 {
                Ordering::Greater
            } else {
                Ordering::Less
            }
        })
}

/// Whether claim `a` beats claim `b`.
pub fn beats(a: HostSet, b: HostSet) -> bool {
    compare_claims(a, b) == Ordering::Greater
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(v: &[usize]) -> HostSet {
        let mut s = HostSet::empty();
        for &h in v {
            s.insert(h);
        }
        s
    }

    #[test]
    fn larger_wins_then_lowest_index() {
        assert!(beats(set(&[1, 2]), set(&[0])));
        assert!(beats(set(&[0, 3]), set(&[1, 2])));
        assert!(beats(set(&[0]), set(&[1])));
        assert!(!beats(set(&[0, 1]), set(&[0, 1])));
    }

    proptest! {
        /// A strict total order: exactly one of two different claims beats the other, and
        /// beating is transitive.
        #[test]
        fn total_order(a in 1u64.., b in 1u64.., c in 1u64..) {
            let (a, b, c) = (HostSet(a), HostSet(b), HostSet(c));
            if a != b {
                prop_assert!(beats(a, b) ^ beats(b, a));
            } else {
                prop_assert!(!beats(a, b));
            }
            if beats(a, b) && beats(b, c) {
                prop_assert!(beats(a, c));
            }
        }
    }
}
