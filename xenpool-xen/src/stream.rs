//! The byte stream of a live migration: what the sending host writes and the receiving host
//! reads, over the pool's HTTP(S) or in-process.
//!
//! All integers are little-endian. A stream is one header, page records, and one end record:
//!
//! ```text
//! header  "XPMIGRT1" | version u32 (1) | page size u32 (4096) | pages in the guest u64 | crc32 u32
//! page    'P' | round u32 | page index u64 | page data (page size bytes) | crc32 u32
//! end     'E' | rounds u32 | page records in the stream u64 | crc32 u32
//! ```
//!
//! Each crc32 covers the bytes of its own record before it, so a corrupted page is refused
//! before it reaches the guest, and the end record's count catches a record lost or added
//! between intact ones. A page may come several times (once per round it was dirty); the
//! last copy wins. The [`Decoder`] takes the stream in chunks of any size, as an HTTP body
//! arrives, and never panics on malformed input.

use crate::memory::PAGE_SIZE;
use crate::XenError;

/// The first eight bytes of every stream.
pub const MAGIC: &[u8; 8] = b"XPMIGRT1";
/// The format version this crate writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 4;
/// Bytes of one page record.
pub const PAGE_RECORD_LEN: usize = 1 + 4 + 8 + PAGE_SIZE + 4;
/// Bytes of the end record.
pub const END_RECORD_LEN: usize = 1 + 4 + 8 + 4;

const TAG_PAGE: u8 = b'P';
const TAG_END: u8 = b'E';

/// What the header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamHeader {
    /// Pages in the guest; every page index is below it.
    pub page_count: u64,
}

/// One record after the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// A page's contents as of the round that sent it.
    Page {
        /// The round (1 for the first full copy).
        round: u32,
        /// The page index.
        index: u64,
        /// Its contents.
        data: &'a [u8; PAGE_SIZE],
    },
    /// The stream is complete.
    End {
        /// Rounds the sender ran, the stop-and-copy round included.
        rounds: u32,
        /// Page records it sent.
        pages: u64,
    },
}

/// Appends the header to `out`.
pub fn encode_header(out: &mut Vec<u8>, header: &StreamHeader) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    out.extend_from_slice(&header.page_count.to_le_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Appends one page record to `out`.
pub fn encode_page(out: &mut Vec<u8>, round: u32, index: u64, data: &[u8; PAGE_SIZE]) {
    let start = out.len();
    out.push(TAG_PAGE);
    out.extend_from_slice(&round.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Appends the end record to `out`.
pub fn encode_end(out: &mut Vec<u8>, rounds: u32, pages: u64) {
    let start = out.len();
    out.push(TAG_END);
    out.extend_from_slice(&rounds.to_le_bytes());
    out.extend_from_slice(&pages.to_le_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Header,
    Records,
    Ended,
    /// A bad record was seen: nothing after it can be trusted.
    Failed,
}

/// Reads a stream given in chunks, handing each complete record to a callback.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    expect: Expect,
    /// Stream offset of `buf[0]`.
    offset: u64,
    header: Option<StreamHeader>,
    pages: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Decoder {
    /// A decoder waiting for the header.
    pub fn new() -> Decoder {
        Decoder {
            buf: Vec::new(),
            expect: Expect::Header,
            offset: 0,
            header: None,
            pages: 0,
        }
    }

    /// The header, once read.
    pub fn header(&self) -> Option<StreamHeader> {
        self.header
    }

    /// Whether the end record was read.
    pub fn ended(&self) -> bool {
        self.expect == Expect::Ended
    }

    fn bad(&self, at: usize, reason: impl Into<String>) -> XenError {
        XenError::MigrationStream {
            offset: self.offset + at as u64,
            reason: reason.into(),
        }
    }

    /// Takes the next chunk and hands every record it completes to `on_record`, in order.
    /// A record the callback refuses, or malformed bytes, stop the stream: the decoder
    /// refuses everything after.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        on_record: &mut dyn FnMut(Record<'_>) -> Result<(), XenError>,
    ) -> Result<(), XenError> {
        self.buf.extend_from_slice(chunk);
        let mut at = 0;
        let result = self.parse(&mut at, on_record);
        self.buf.drain(..at);
        self.offset += at as u64;
        if result.is_err() {
            self.expect = Expect::Failed;
            self.buf.clear();
        }
        result
    }

    fn parse(
        &mut self,
        at: &mut usize,
        on_record: &mut dyn FnMut(Record<'_>) -> Result<(), XenError>,
    ) -> Result<(), XenError> {
        loop {
            let rest = &self.buf[*at..];
            match self.expect {
                Expect::Failed => return Err(self.bad(*at, "the stream already failed")),
                Expect::Ended => {
                    return if rest.is_empty() {
                        Ok(())
                    } else {
                        Err(self.bad(*at, "bytes after the end record"))
                    };
                }
                Expect::Header => {
                    if rest.len() < HEADER_LEN {
                        if !MAGIC.starts_with(&rest[..rest.len().min(8)]) {
                            return Err(self.bad(*at, "not a migration stream"));
                        }
                        return Ok(());
                    }
                    if &rest[..8] != MAGIC {
                        return Err(self.bad(*at, "not a migration stream"));
                    }
                    let crc = u32_at(rest, HEADER_LEN - 4);
                    if crc32fast::hash(&rest[..HEADER_LEN - 4]) != crc {
                        return Err(self.bad(*at, "header checksum mismatch"));
                    }
                    let version = u32_at(rest, 8);
                    if version != VERSION {
                        return Err(self.bad(*at, format!("version {version}, expected {VERSION}")));
                    }
                    let page_size = u32_at(rest, 12);
                    if page_size as usize != PAGE_SIZE {
                        return Err(
                            self.bad(*at, format!("page size {page_size}, expected {PAGE_SIZE}"))
                        );
                    }
                    self.header = Some(StreamHeader {
                        page_count: u64_at(rest, 16),
                    });
                    self.expect = Expect::Records;
                    *at += HEADER_LEN;
                }
                Expect::Records => {
                    let Some(&tag) = rest.first() else {
                        return Ok(());
                    };
                    let len = match tag {
                        TAG_PAGE => PAGE_RECORD_LEN,
                        TAG_END => END_RECORD_LEN,
                        other => return Err(self.bad(*at, format!("unknown record tag {other}"))),
                    };
                    if rest.len() < len {
                        return Ok(());
                    }
                    let record = &rest[..len];
                    if crc32fast::hash(&record[..len - 4]) != u32_at(record, len - 4) {
                        return Err(self.bad(*at, "record checksum mismatch"));
                    }
                    let page_count = self.header.map_or(0, |h| h.page_count);
                    if tag == TAG_PAGE {
                        let index = u64_at(record, 5);
                        if index >= page_count {
                            return Err(self.bad(
                                *at,
                                format!("page {index} outside a guest of {page_count} pages"),
                            ));
                        }
                        let data: &[u8; PAGE_SIZE] = record[13..13 + PAGE_SIZE]
                            .try_into()
                            .map_err(|_| self.bad(*at, "short page record"))?;
                        on_record(Record::Page {
                            round: u32_at(record, 1),
                            index,
                            data,
                        })?;
                        self.pages += 1;
                    } else {
                        let rounds = u32_at(record, 1);
                        let pages = u64_at(record, 5);
                        if pages != self.pages {
                            return Err(self.bad(
                                *at,
                                format!(
                                    "end record counts {pages} pages, the stream held {}",
                                    self.pages
                                ),
                            ));
                        }
                        self.expect = Expect::Ended;
                        on_record(Record::End { rounds, pages })?;
                    }
                    *at += len;
                }
            }
        }
    }

    /// Checks that the stream is complete: header, records and end record, nothing after.
    pub fn finish(&self) -> Result<(), XenError> {
        if self.expect == Expect::Ended && self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.bad(self.buf.len(), "stream ended before its end record"))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq)]
    enum Owned {
        Page(u32, u64, Vec<u8>),
        End(u32, u64),
    }

    fn decode_in_chunks(bytes: &[u8], sizes: &[usize]) -> Result<(Vec<Owned>, Decoder), XenError> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let mut rest = bytes;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes
                .get(i % sizes.len().max(1))
                .copied()
                .unwrap_or(rest.len());
            let n = n.clamp(1, rest.len());
            d.feed(&rest[..n], &mut |r| {
                out.push(match r {
                    Record::Page { round, index, data } => Owned::Page(round, index, data.to_vec()),
                    Record::End { rounds, pages } => Owned::End(rounds, pages),
                });
                Ok(())
            })?;
            rest = &rest[n..];
            i += 1;
        }
        Ok((out, d))
    }

    fn page(fill: u8) -> [u8; PAGE_SIZE] {
        [fill; PAGE_SIZE]
    }

    #[test]
    fn a_stream_reads_back() {
        let mut s = Vec::new();
        encode_header(&mut s, &StreamHeader { page_count: 10 });
        encode_page(&mut s, 1, 3, &page(7));
        encode_page(&mut s, 2, 9, &page(8));
        encode_end(&mut s, 2, 2);
        assert_eq!(s.len(), HEADER_LEN + 2 * PAGE_RECORD_LEN + END_RECORD_LEN);
        let (out, d) = decode_in_chunks(&s, &[1000]).unwrap();
        assert_eq!(d.header(), Some(StreamHeader { page_count: 10 }));
        assert_eq!(
            out,
            vec![
                Owned::Page(1, 3, vec![7; PAGE_SIZE]),
                Owned::Page(2, 9, vec![8; PAGE_SIZE]),
                Owned::End(2, 2)
            ]
        );
        d.finish().unwrap();
    }

    #[test]
    fn truncation_miscount_and_foreign_bytes_are_refused() {
        let mut s = Vec::new();
        encode_header(&mut s, &StreamHeader { page_count: 4 });
        encode_page(&mut s, 1, 0, &page(1));
        let (_, d) = decode_in_chunks(&s, &[4096]).unwrap();
        assert!(d.finish().is_err(), "no end record");

        let mut lost = s.clone();
        encode_end(&mut lost, 1, 2);
        assert!(
            decode_in_chunks(&lost, &[5000]).is_err(),
            "a page went missing"
        );

        let mut outside = Vec::new();
        encode_header(&mut outside, &StreamHeader { page_count: 4 });
        encode_page(&mut outside, 1, 4, &page(1));
        assert!(decode_in_chunks(&outside, &[9000]).is_err());

        let mut trailing = s.clone();
        encode_end(&mut trailing, 1, 1);
        trailing.push(0);
        assert!(decode_in_chunks(&trailing, &[9000]).is_err());

        assert!(decode_in_chunks(b"GET / HTTP/1.1\r\n", &[3]).is_err());
    }

    proptest! {
        /// Any split of a stream into chunks reads the same records.
        #[test]
        fn chunking_does_not_matter(
            pages in proptest::collection::vec((1u32..5, 0u64..64, any::<u8>()), 0..12),
            sizes in proptest::collection::vec(1usize..9000, 1..8),
        ) {
            let mut s = Vec::new();
            encode_header(&mut s, &StreamHeader { page_count: 64 });
            for (round, index, fill) in &pages {
                encode_page(&mut s, *round, *index, &page(*fill));
            }
            encode_end(&mut s, 5, pages.len() as u64);
            let (whole, _) = decode_in_chunks(&s, &[s.len()]).unwrap();
            let (chunked, d) = decode_in_chunks(&s, &sizes).unwrap();
            prop_assert_eq!(&whole, &chunked);
            prop_assert_eq!(whole.len(), pages.len() + 1);
            prop_assert!(d.finish().is_ok());
        }

        /// Flipping any bit of a stream is caught: the stream is refused or incomplete,
        /// and no page with changed contents is ever handed over.
        #[test]
        fn a_flipped_bit_is_never_accepted(
            fills in proptest::collection::vec(any::<u8>(), 1..4),
            bit in any::<proptest::sample::Index>(),
        ) {
            let mut s = Vec::new();
            encode_header(&mut s, &StreamHeader { page_count: 8 });
            for (i, f) in fills.iter().enumerate() {
                encode_page(&mut s, 1, i as u64, &page(*f));
            }
            encode_end(&mut s, 1, fills.len() as u64);
            let i = bit.index(s.len() * 8);
            s[i / 8] ^= 1 << (i % 8);
            match decode_in_chunks(&s, &[777]) {
                Err(_) => {}
                Ok((out, d)) => {
                    prop_assert!(d.finish().is_err());
                    for r in out {
                        if let Owned::Page(_, idx, data) = r {
                            prop_assert_eq!(data, vec![fills[idx as usize]; PAGE_SIZE]);
                        }
                    }
                }
            }
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn garbage_does_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..10000)) {
            let mut with_header = Vec::new();
            encode_header(&mut with_header, &StreamHeader { page_count: 3 });
            with_header.extend_from_slice(&bytes);
            let _ = decode_in_chunks(&bytes, &[13]);
            let _ = decode_in_chunks(&with_header, &[4100]);
        }
    }
}
