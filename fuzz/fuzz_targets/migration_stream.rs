//! Feeds arbitrary bytes to the migration stream decoder, as a destination host does with
//! whatever arrives for an incoming VM, split into two chunks at a point the input chooses
//! (records may straddle chunks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(rest.len());
    let mut d = xenpool_xen::stream::Decoder::new();
    let mut pages = 0u64;
    let mut on_record = |_: xenpool_xen::stream::Record<'_>| {
        pages += 1;
        Ok(())
    };
    if d.feed(&rest[..at], &mut on_record).is_ok() {
        let _ = d.feed(&rest[at..], &mut on_record);
    }
    let _ = d.finish();
});
