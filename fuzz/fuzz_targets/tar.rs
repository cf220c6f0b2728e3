//! kiln's tar reader over arbitrary bytes, every entry read to its end, under three sets of caps: the layer
//! applier's (production `layer::Limits`, sparse maps read), the archive importer's (no sparse), and tiny
//! caps that a small input can reach. Each cap is asserted to hold on what the reader hands out.
#![no_main]
// libfuzzer-sys's fuzz_target! writes files by path (its own, outside kiln).
#![allow(clippy::disallowed_methods)]

use kiln::layer::tar::{Kind, SparseLimits, TarLimits, TarReader};
use libfuzzer_sys::fuzz_target;

fn read_all(data: &[u8], limits: TarLimits, sparse: Option<SparseLimits>) {
    let mut tr = TarReader::new(data, limits);
    if let Some(s) = sparse {
        tr = tr.with_sparse(s);
    }
    let mut sparse_real = 0u64;
    let mut last_offset = 0u64;
    for _ in 0..100_000 {
        let h = match tr.next_entry() {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) => break,
        };
        assert!(h.offset >= last_offset && tr.offset() <= data.len() as u64, "offsets go forward, within the input");
        last_offset = h.offset;
        assert!(h.path.len() as u64 <= limits.max_name_bytes, "path over max_name_bytes");
        assert!(h.link.len() as u64 <= limits.max_name_bytes, "link over max_name_bytes");
        let mut xattr_total = 0u64;
        for (k, v) in &h.xattrs {
            assert!(v.len() as u64 <= limits.max_xattr_bytes, "xattr value over max_xattr_bytes");
            xattr_total += (k.len() + v.len()) as u64;
        }
        assert!(xattr_total <= limits.max_pax_bytes, "xattrs over max_pax_bytes");
        if h.kind != Kind::Regular {
            assert_eq!(h.size, 0, "a header-only entry has no size");
            assert!(!h.sparse);
        }
        if h.sparse {
            let s = sparse.expect("a sparse entry only when sparse reading was asked for");
            let map = tr.sparse_map().expect("a sparse entry has its map").clone();
            assert_eq!(map.real_size, h.size);
            assert!(map.segments.len() as u64 <= s.max_segments, "sparse map over max_segments");
            let mut end = 0u64;
            for &(off, len) in &map.segments {
                assert!(off >= end, "segments ascending, not overlapping: {:?}", map.segments);
                end = off.checked_add(len).expect("segment end overflows");
                assert!(end <= map.real_size, "segment past the real size");
            }
            sparse_real += map.real_size;
            assert!(sparse_real <= s.max_real_bytes, "sparse real bytes over the cap");
        }
        // Every byte handed out lies within the entry's size, ascending; a plain file's are contiguous.
        let (mut next, mut total) = (0u64, 0u64);
        let size = h.size;
        let sparse_entry = h.sparse;
        let r = tr.copy_file_data(|off, buf| {
            assert!(off >= next, "file data goes forward");
            if !sparse_entry {
                assert_eq!(off, next, "a plain file's data is contiguous");
            }
            next = off + buf.len() as u64;
            total += buf.len() as u64;
            assert!(next <= size, "data past the entry's size");
            Ok(())
        });
        match r {
            Ok(()) if !sparse_entry => assert_eq!(total, size, "a plain file yields exactly its size"),
            Ok(()) => {}
            Err(_) => break,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let prod = kiln::layer::Limits::default();
    // The layer applier's caps (`layer::apply_entries`).
    read_all(
        data,
        TarLimits {
            max_pax_bytes: prod.max_pax_bytes,
            max_name_bytes: prod.max_name_bytes,
            max_xattr_bytes: prod.max_xattr_bytes,
        },
        Some(SparseLimits {
            max_segments: prod.max_sparse_segments,
            max_map_bytes: prod.max_sparse_map_bytes,
            max_real_bytes: prod.max_expanded_bytes,
        }),
    );
    // The archive importer's (`source::archive`): no sparse reading.
    read_all(data, TarLimits { max_pax_bytes: 1 << 20, max_name_bytes: 4096, max_xattr_bytes: 64 << 10 }, None);
    // Caps small enough for a small input to reach.
    read_all(
        data,
        TarLimits { max_pax_bytes: 300, max_name_bytes: 100, max_xattr_bytes: 40 },
        Some(SparseLimits { max_segments: 3, max_map_bytes: 600, max_real_bytes: 5000 }),
    );
});
