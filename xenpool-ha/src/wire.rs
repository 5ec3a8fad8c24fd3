//! Byte codecs of what hosts tell each other outside the toolstack: the network heartbeat
//! and the statefile slot payload.
//!
//! Every message carries the arming generation (16 bytes), so heartbeats and slots left
//! over from another arming are never taken for this one's. Both formats are little-endian
//! with a trailing CRC-32 of everything before it; a message that is truncated, padded,
//! of another version or generation, or fails its checksum decodes to `None`, never to a
//! guess. Decoding never panics and never allocates more than the input's length
//! justifies.
//!
//! Heartbeat: magic `XPHB`, version, generation, sender index (u16), sequence, epoch,
//! liveset (u64 bitmap), ack count (u16, at most [`MAX_HOSTS`]), acks (u64 each), CRC-32.
//! At 64 hosts it is 575 bytes: one datagram on any network.
//!
//! Slot: magic `XPSL`, version, generation, sequence, epoch, liveset, claim flag (0 or
//! 1), claim bitmap (0 without a claim), CRC-32: 58 bytes whatever the pool size.

use crate::machine::{Heartbeat, Slot};
use crate::HostSet;

/// The most hosts a pool has (the width of a [`HostSet`]): acknowledgements beyond this
/// index are not carried.
pub const MAX_HOSTS: usize = 64;

const HEARTBEAT_MAGIC: &[u8; 4] = b"XPHB";
const SLOT_MAGIC: &[u8; 4] = b"XPSL";
const VERSION: u8 = 1;
/// magic 4 + version 1 + generation 16 + from 2 + seq 8 + epoch 8 + liveset 8 + count 2
const HEARTBEAT_HEADER: usize = 49;
/// magic 4 + version 1 + generation 16 + seq 8 + epoch 8 + liveset 8 + flag 1 + claim 8
const SLOT_BODY: usize = 54;
const CRC: usize = 4;

/// Size of an encoded slot.
pub const SLOT_LEN: usize = SLOT_BODY + CRC;
/// Size of the largest encoded heartbeat.
pub const MAX_HEARTBEAT_LEN: usize = HEARTBEAT_HEADER + 8 * MAX_HOSTS + CRC;

// One datagram without fragmentation on any path (IPv6 minimum MTU less headers).
const _: () = assert!(MAX_HEARTBEAT_LEN <= 1200);

/// Encodes a heartbeat of arming `generation`. Acknowledgements beyond [`MAX_HOSTS`] are
/// dropped (no pool has such hosts); a sender index beyond `u16` is sent as `u16::MAX`,
/// which every receiver rejects.
pub fn encode_heartbeat(generation: &[u8; 16], hb: &Heartbeat) -> Vec<u8> {
    let acks = &hb.acks[..hb.acks.len().min(MAX_HOSTS)];
    let mut out = Vec::with_capacity(HEARTBEAT_HEADER + 8 * acks.len() + CRC);
    out.extend_from_slice(HEARTBEAT_MAGIC);
    out.push(VERSION);
    out.extend_from_slice(generation);
    let from = u16::try_from(hb.from).unwrap_or(u16::MAX);
    out.extend_from_slice(&from.to_le_bytes());
    out.extend_from_slice(&hb.seq.to_le_bytes());
    out.extend_from_slice(&hb.epoch.to_le_bytes());
    out.extend_from_slice(&hb.liveset.0.to_le_bytes());
    // At most 64, so the cast cannot truncate.
    out.extend_from_slice(&(acks.len() as u16).to_le_bytes());
    for a in acks {
        out.extend_from_slice(&a.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a heartbeat of arming `generation`; `None` for anything else.
pub fn decode_heartbeat(generation: &[u8; 16], bytes: &[u8]) -> Option<Heartbeat> {
    let body = checked(bytes, HEARTBEAT_MAGIC, generation)?;
    let mut r = Reader(body.get(HEARTBEAT_MAGIC.len() + 1 + 16..)?);
    let from = r.u16()?;
    let seq = r.u64()?;
    let epoch = r.u64()?;
    let liveset = HostSet(r.u64()?);
    let count = usize::from(r.u16()?);
    // The length is checked against the count before anything is allocated for it.
    if count > MAX_HOSTS || r.0.len() != 8 * count {
        return None;
    }
    let acks = (0..count).map(|_| r.u64()).collect::<Option<Vec<u64>>>()?;
    Some(Heartbeat {
        from: usize::from(from),
        seq,
        epoch,
        liveset,
        acks,
    })
}

/// Encodes a statefile slot payload of arming `generation` ([`SLOT_LEN`] bytes).
pub fn encode_slot(generation: &[u8; 16], slot: &Slot) -> Vec<u8> {
    let mut out = Vec::with_capacity(SLOT_LEN);
    out.extend_from_slice(SLOT_MAGIC);
    out.push(VERSION);
    out.extend_from_slice(generation);
    out.extend_from_slice(&slot.seq.to_le_bytes());
    out.extend_from_slice(&slot.epoch.to_le_bytes());
    out.extend_from_slice(&slot.liveset.0.to_le_bytes());
    out.push(u8::from(slot.claim.is_some()));
    out.extend_from_slice(&slot.claim.map_or(0, |c| c.0).to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a statefile slot payload of arming `generation`; `None` for anything else.
pub fn decode_slot(generation: &[u8; 16], bytes: &[u8]) -> Option<Slot> {
    if bytes.len() != SLOT_LEN {
        return None;
    }
    let body = checked(bytes, SLOT_MAGIC, generation)?;
    let mut r = Reader(body.get(SLOT_MAGIC.len() + 1 + 16..)?);
    let seq = r.u64()?;
    let epoch = r.u64()?;
    let liveset = HostSet(r.u64()?);
    let flag = r.u8()?;
    let bits = r.u64()?;
    let claim = match (flag, bits) {
        (0, 0) => None,
        (1, bits) => Some(HostSet(bits)),
        _ => return None,
    };
    Some(Slot {
        seq,
        epoch,
        liveset,
        claim,
    })
}

/// The message less its checksum, if the checksum, magic, version and generation match.
fn checked<'a>(bytes: &'a [u8], magic: &[u8; 4], generation: &[u8; 16]) -> Option<&'a [u8]> {
    let split = bytes.len().checked_sub(CRC)?;
    let (body, crc) = bytes.split_at(split);
    let crc = u32::from_le_bytes(crc.try_into().ok()?);
    if crc32fast::hash(body) != crc {
        return None;
    }
    let (m, rest) = body.split_first_chunk::<4>()?;
    let (version, rest) = rest.split_first()?;
    let (g, _) = rest.split_first_chunk::<16>()?;
    (m == magic && *version == VERSION && g == generation).then_some(body)
}

/// A cursor over bytes: every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GEN: [u8; 16] = *b"0123456789abcdef";

    fn heartbeat() -> impl Strategy<Value = Heartbeat> {
        (
            0usize..64,
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u64>(), 0..=MAX_HOSTS),
        )
            .prop_map(|(from, seq, epoch, live, acks)| Heartbeat {
                from,
                seq,
                epoch,
                liveset: HostSet(live),
                acks,
            })
    }

    fn slot() -> impl Strategy<Value = Slot> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(seq, epoch, live, claim)| Slot {
                seq,
                epoch,
                liveset: HostSet(live),
                claim: claim.map(HostSet),
            })
    }

    #[test]
    fn sizes_fit_a_datagram_and_a_statefile_slot() {
        let hb = Heartbeat {
            from: 63,
            seq: u64::MAX,
            epoch: 1,
            liveset: HostSet::first(64),
            acks: vec![u64::MAX; 64],
        };
        assert_eq!(encode_heartbeat(&GEN, &hb).len(), MAX_HEARTBEAT_LEN);
        let s = Slot {
            seq: 1,
            epoch: 2,
            liveset: HostSet::first(64),
            claim: Some(HostSet::first(3)),
        };
        assert_eq!(encode_slot(&GEN, &s).len(), SLOT_LEN);
    }

    #[test]
    fn extra_acks_and_huge_senders_are_not_sent_as_valid() {
        let hb = Heartbeat {
            from: 70_000,
            seq: 1,
            epoch: 0,
            liveset: HostSet::first(2),
            acks: vec![7; 100],
        };
        let back = decode_heartbeat(&GEN, &encode_heartbeat(&GEN, &hb));
        let back = back.unwrap_or_else(|| panic!("a well-formed heartbeat decodes"));
        assert_eq!(back.from, usize::from(u16::MAX));
        assert_eq!(back.acks.len(), MAX_HOSTS);
    }

    #[test]
    fn a_claim_flag_other_than_zero_or_one_is_refused() {
        let s = Slot {
            seq: 1,
            epoch: 0,
            liveset: HostSet::first(2),
            claim: None,
        };
        let mut bytes = encode_slot(&GEN, &s);
        bytes[45] = 2;
        let crc = crc32fast::hash(&bytes[..SLOT_BODY]);
        bytes[SLOT_BODY..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_slot(&GEN, &bytes), None);
        bytes[45] = 0;
        let crc = crc32fast::hash(&bytes[..SLOT_BODY]);
        bytes[SLOT_BODY..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_slot(&GEN, &bytes), Some(s));
    }

    proptest! {
        #[test]
        fn heartbeats_round_trip(hb in heartbeat()) {
            let bytes = encode_heartbeat(&GEN, &hb);
            prop_assert_eq!(decode_heartbeat(&GEN, &bytes), Some(hb));
        }

        #[test]
        fn slots_round_trip(s in slot()) {
            let bytes = encode_slot(&GEN, &s);
            prop_assert_eq!(bytes.len(), SLOT_LEN);
            prop_assert_eq!(decode_slot(&GEN, &bytes), Some(s));
        }

        #[test]
        fn another_generation_is_ignored(
            hb in heartbeat(),
            s in slot(),
            other in any::<[u8; 16]>(),
        ) {
            prop_assume!(other != GEN);
            prop_assert_eq!(decode_heartbeat(&other, &encode_heartbeat(&GEN, &hb)), None);
            prop_assert_eq!(decode_slot(&other, &encode_slot(&GEN, &s)), None);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = decode_heartbeat(&GEN, &bytes);
            let _ = decode_slot(&GEN, &bytes);
        }

        /// Every single-bit flip and every truncation or extension of a valid message is
        /// refused: a damaged heartbeat or slot is never read as another one.
        #[test]
        fn damaged_messages_are_refused(
            hb in heartbeat(),
            s in slot(),
            bit in any::<usize>(),
            cut in any::<usize>(),
            extra in any::<u8>(),
        ) {
            for mut bytes in [encode_heartbeat(&GEN, &hb), encode_slot(&GEN, &s)] {
                let is_slot = bytes.len() == SLOT_LEN && bytes.starts_with(SLOT_MAGIC);
                let decodes = |b: &[u8]| if is_slot {
                    decode_slot(&GEN, b).is_some()
                } else {
                    decode_heartbeat(&GEN, b).is_some()
                };
                let len = bytes.len();
                prop_assert!(!decodes(&bytes[..cut % len]));
                let mut longer = bytes.clone();
                longer.push(extra);
                prop_assert!(!decodes(&longer));
                let i = bit % (len * 8);
                bytes[i / 8] ^= 1 << (i % 8);
                prop_assert!(!decodes(&bytes));
            }
        }
    }
}
