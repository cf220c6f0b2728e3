//! GNU sparse maps (F7): old-GNU `S` headers with their extension blocks, and the PAX formats 0.0, 0.1 and
//! 1.0; every map capped and checked before anything is written (see the parent module's documentation).

use super::*;

/// A sparse map as far as the headers give it.
pub(super) enum PendingSparse {
    /// Real size and segments (old GNU, PAX 0.0 and 0.1).
    Map(u64, Vec<(u64, u64)>),
    /// Real size; the map opens the entry's data (PAX 1.0).
    InData(u64),
}

fn sparse_limit(offset: u64, limit: &'static str, value: u64, cap: u64) -> TarError {
    TarError::Limit { offset, limit, value, cap }
}

impl<R: BufRead> TarReader<R> {
    /// The old-GNU sparse map: 4 entries in the header at offset 386, then 21 per extension block for as long
    /// as `isextended` is set (byte 482 of the header, 504 of an extension block); the real size is at 483.
    /// An entry whose offset field starts with NUL ends its block's list (as GNU tar, BSD tar and Go read it).
    pub(super) fn old_gnu_sparse(
        &mut self,
        header: &[u8; BLOCK],
        offset: u64,
        limits: &SparseLimits,
    ) -> Result<PendingSparse> {
        // The star format uses the same type flag with another layout: only the GNU one is read.
        if &header[257..265] != b"ustar  \0" {
            return Err(malformed(offset, "old-GNU sparse (S) header without the GNU magic"));
        }
        let real_size = numeric(&header[483..495], offset, "sparse realsize")?;
        let mut segments: Vec<(u64, u64)> = Vec::new();
        let mut block = *header;
        let (mut start, mut count, mut extended_at) = (386usize, 4usize, 482usize);
        // An extension block holds 21 entries: more blocks than the segment cap needs are refused too.
        let max_blocks = limits.max_segments / 21 + 1;
        let mut blocks = 0u64;
        loop {
            for i in 0..count {
                let e = &block[start + i * 24..start + (i + 1) * 24];
                if e[0] == 0 {
                    break;
                }
                if segments.len() as u64 >= limits.max_segments {
                    return Err(sparse_limit(
                        offset,
                        "max_sparse_segments",
                        segments.len() as u64 + 1,
                        limits.max_segments,
                    ));
                }
                let off = numeric(&e[..12], offset, "sparse offset")?;
                let len = numeric(&e[12..], offset, "sparse numbytes")?;
                segments.push((off, len));
            }
            if block[extended_at] == 0 {
                break;
            }
            blocks += 1;
            if blocks > max_blocks {
                return Err(sparse_limit(offset, "max_sparse_segments (extension headers)", blocks, max_blocks));
            }
            if !self.read_block(&mut block)? {
                return Err(malformed(self.offset, "archive ends inside old-GNU sparse extension headers"));
            }
            (start, count, extended_at) = (0, 21, 504);
        }
        Ok(PendingSparse::Map(real_size, segments))
    }

    /// The format 1.0 map at the start of the data: decimal lines (the segment count, then offset and length
    /// of each), read in whole blocks (the map is padded to one) and capped at `max_map_bytes`.
    pub(super) fn sparse_map_1x0(&mut self, offset: u64, limits: &SparseLimits) -> Result<Vec<(u64, u64)>> {
        let mut buf: Vec<u8> = Vec::new();
        let mut block = [0u8; BLOCK];
        let mut newlines = 0u64;
        let mut needed = 1u64;
        let mut count: Option<u64> = None;
        loop {
            while newlines < needed {
                let value = buf.len() as u64 + BLOCK as u64;
                if value > limits.max_map_bytes {
                    return Err(sparse_limit(offset, "max_sparse_map_bytes", value, limits.max_map_bytes));
                }
                if self.remaining < BLOCK as u64 {
                    return Err(malformed(offset, "sparse map runs past the entry's data"));
                }
                if !self.read_block(&mut block)? {
                    return Err(malformed(self.offset, "archive truncated inside a sparse map"));
                }
                self.remaining -= BLOCK as u64;
                newlines += block.iter().filter(|&&b| b == b'\n').count() as u64;
                buf.extend_from_slice(&block);
            }
            if count.is_some() {
                break;
            }
            let first = buf.split(|&b| b == b'\n').next().unwrap_or_default();
            let n = pax_u64(first, offset, "sparse map segment count")?;
            if n > limits.max_segments {
                return Err(sparse_limit(offset, "max_sparse_segments", n, limits.max_segments));
            }
            count = Some(n);
            needed = 1 + 2 * n;
        }
        let mut tokens = buf.split(|&b| b == b'\n').skip(1);
        let mut segments = Vec::with_capacity(count.unwrap_or(0) as usize);
        for _ in 0..count.unwrap_or(0) {
            let mut next = |what| pax_u64(tokens.next().unwrap_or_default(), offset, what);
            let off = next("sparse map offset")?;
            let len = next("sparse map length")?;
            segments.push((off, len));
        }
        Ok(segments)
    }
}

/// The PAX sparse records of one entry → its pending map and real name (0.1 and 1.0 carry `GNU.sparse.name`).
pub(super) fn pax_sparse(
    records: &[(Vec<u8>, Vec<u8>)],
    offset: u64,
    limits: &SparseLimits,
) -> Result<(PendingSparse, Option<Vec<u8>>)> {
    let get = |key: &[u8]| records.iter().rev().find(|(k, _)| k.as_slice() == key).map(|(_, v)| v.as_slice());
    for (k, _) in records {
        let known: &[&[u8]] = &[
            b"GNU.sparse.major",
            b"GNU.sparse.minor",
            b"GNU.sparse.name",
            b"GNU.sparse.size",
            b"GNU.sparse.realsize",
            b"GNU.sparse.numblocks",
            b"GNU.sparse.map",
            b"GNU.sparse.offset",
            b"GNU.sparse.numbytes",
        ];
        if !known.contains(&k.as_slice()) {
            return Err(TarError::Unsupported {
                offset,
                what: format!("PAX record {:?} (unknown GNU sparse keyword)", String::from_utf8_lossy(k)),
            });
        }
    }
    let name = match get(b"GNU.sparse.name") {
        Some([]) => return Err(malformed(offset, "empty GNU.sparse.name")),
        Some(n) => Some(n.to_vec()),
        None => None,
    };
    let number =
        |key: &'static str| -> Result<Option<u64>> { get(key.as_bytes()).map(|v| pax_u64(v, offset, key)).transpose() };
    let (size, realsize) = (number("GNU.sparse.size")?, number("GNU.sparse.realsize")?);
    if let (Some(a), Some(b)) = (size, realsize) {
        if a != b {
            return Err(malformed(offset, format!("GNU.sparse.size {a} and GNU.sparse.realsize {b} disagree")));
        }
    }
    let version_1 = match (get(b"GNU.sparse.major"), get(b"GNU.sparse.minor")) {
        (None, None) | (Some(b"0"), Some(b"0" | b"1")) => false,
        (Some(b"1"), Some(b"0")) => true,
        (major, minor) => {
            let v = |x: Option<&[u8]>| x.map_or("?".to_string(), |x| String::from_utf8_lossy(x).into_owned());
            return Err(TarError::Unsupported {
                offset,
                what: format!("GNU sparse format version {}.{}", v(major), v(minor)),
            });
        }
    };
    let pairs: Vec<&(Vec<u8>, Vec<u8>)> = records
        .iter()
        .filter(|(k, _)| k.as_slice() == b"GNU.sparse.offset" || k.as_slice() == b"GNU.sparse.numbytes")
        .collect();
    let map = get(b"GNU.sparse.map");
    let numblocks = number("GNU.sparse.numblocks")?;
    if version_1 {
        let real =
            realsize.or(size).ok_or_else(|| malformed(offset, "GNU sparse 1.0 entry without GNU.sparse.realsize"))?;
        if map.is_some() || !pairs.is_empty() || numblocks.is_some() {
            return Err(malformed(offset, "GNU sparse 1.0 entry with a 0.x map in its PAX records"));
        }
        return Ok((PendingSparse::InData(real), name));
    }
    let real = size.or(realsize).ok_or_else(|| malformed(offset, "GNU sparse 0.x entry without GNU.sparse.size"))?;
    let numblocks = numblocks.ok_or_else(|| malformed(offset, "GNU sparse 0.x entry without GNU.sparse.numblocks"))?;
    if numblocks > limits.max_segments {
        return Err(sparse_limit(offset, "max_sparse_segments", numblocks, limits.max_segments));
    }
    let mut segments = Vec::with_capacity(numblocks as usize);
    match map {
        Some(_) if !pairs.is_empty() => {
            return Err(malformed(offset, "both GNU.sparse.map and GNU.sparse.offset/numbytes records"))
        }
        Some(map) => {
            // 0.1: "offset,length,offset,length…" (empty for a file that is one hole).
            let numbers: Vec<&[u8]> = if map.is_empty() { vec![] } else { map.split(|&b| b == b',').collect() };
            if numbers.len() as u64 != 2 * numblocks {
                return Err(malformed(
                    offset,
                    format!(
                        "GNU.sparse.map holds {} numbers, GNU.sparse.numblocks says {numblocks} pairs",
                        numbers.len()
                    ),
                ));
            }
            for pair in numbers.chunks(2) {
                segments.push((
                    pax_u64(pair[0], offset, "GNU.sparse.map offset")?,
                    pax_u64(pair[1], offset, "GNU.sparse.map length")?,
                ));
            }
        }
        None => {
            // 0.0: GNU.sparse.offset and GNU.sparse.numbytes alternate, one pair per segment.
            if pairs.len() as u64 != 2 * numblocks {
                return Err(malformed(
                    offset,
                    format!(
                        "{} GNU.sparse.offset/numbytes records, GNU.sparse.numblocks says {numblocks} pairs",
                        pairs.len()
                    ),
                ));
            }
            for pair in pairs.chunks(2) {
                let (ok, ov) = pair[0];
                let (lk, lv) = pair[1];
                if ok.as_slice() != b"GNU.sparse.offset" || lk.as_slice() != b"GNU.sparse.numbytes" {
                    return Err(malformed(
                        offset,
                        "GNU.sparse.offset and GNU.sparse.numbytes records do not alternate",
                    ));
                }
                segments.push((pax_u64(ov, offset, "GNU.sparse.offset")?, pax_u64(lv, offset, "GNU.sparse.numbytes")?));
            }
        }
    }
    Ok((PendingSparse::Map(real, segments), name))
}

/// F7: a sparse map must describe the file it claims: segments ascending and non-overlapping, each inside
/// the real size without overflow, and their lengths summing to the bytes the archive stores.
pub(super) fn check_sparse(
    segments: &[(u64, u64)],
    real_size: u64,
    stored: u64,
    offset: u64,
    path: &[u8],
) -> Result<()> {
    let bad = |reason: String| malformed(offset, format!("sparse file {:?}: {reason}", String::from_utf8_lossy(path)));
    let mut prev_end = 0u64;
    let mut total = 0u64;
    for (i, &(off, len)) in segments.iter().enumerate() {
        let end = off
            .checked_add(len)
            .ok_or_else(|| bad(format!("segment {i} (offset {off}, length {len}) overflows 64 bits")))?;
        if off < prev_end {
            return Err(bad(format!("segment {i} at offset {off} overlaps or precedes the one ending at {prev_end}")));
        }
        if end > real_size {
            return Err(bad(format!("segment {i} ends at {end}, beyond the real size {real_size}")));
        }
        total += len;
        prev_end = end;
    }
    if total != stored {
        return Err(bad(format!("the map describes {total} data bytes but the entry stores {stored}")));
    }
    Ok(())
}
