//! Header fields: octal and base-256 numbers, NUL-terminated strings, the checksum, and PAX records with their
//! numbers and times, each refusing malformed input with the offset.

use super::*;

pub(super) fn pad(n: u64) -> u64 {
    (BLOCK as u64 - n % BLOCK as u64) % BLOCK as u64
}

pub(super) fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(i) => &field[..i],
        None => field,
    }
}

pub(super) fn check_checksum(block: &[u8; BLOCK], offset: u64) -> Result<()> {
    let stored = numeric(&block[148..156], offset, "chksum")?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as u64;
        signed += (b as i8) as i64;
    }
    // Some old tars summed signed bytes; GNU tar and Go accept either.
    if stored == unsigned || stored as i64 == signed {
        Ok(())
    } else {
        Err(malformed(offset, format!("header checksum mismatch (stored {stored}, computed {unsigned})")))
    }
}

/// An octal field (NUL/space padded) or GNU base-256 (high bit of the first byte set; negative refused).
pub(super) fn numeric(field: &[u8], offset: u64, name: &str) -> Result<u64> {
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            if first & 0x40 != 0 {
                return Err(malformed(offset, format!("negative base-256 {name}")));
            }
            let mut v: u64 = (first & 0x3f) as u64;
            for &b in &field[1..] {
                v = v
                    .checked_mul(256)
                    .and_then(|v| v.checked_add(b as u64))
                    .ok_or_else(|| malformed(offset, format!("base-256 {name} overflows 64 bits")))?;
            }
            return Ok(v);
        }
    }
    let s: &[u8] = {
        let t = cstr(field);
        let start = t.iter().position(|&b| b != b' ').unwrap_or(t.len());
        let t = &t[start..];
        let end = t.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
        &t[..end]
    };
    let mut v: u64 = 0;
    for &b in s {
        if !(b'0'..=b'7').contains(&b) {
            return Err(malformed(offset, format!("{name} field is not octal: {:?}", String::from_utf8_lossy(field))));
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add((b - b'0') as u64))
            .ok_or_else(|| malformed(offset, format!("{name} overflows 64 bits")))?;
    }
    Ok(v)
}

/// Parses `"%d %s=%s\n"` records; a later record for a keyword replaces an earlier one. Empty values are kept
/// (an empty xattr value is legitimate); POSIX's "empty value deletes the keyword" is not applied because Go's
/// reader does not apply it either — an empty `path`, `linkpath` or number is refused by the caller instead.
pub(super) fn parse_pax(mut body: &[u8], offset: u64, out: &mut Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
    while !body.is_empty() {
        // Trailing NUL padding is tolerated (some writers pad the block).
        if body.iter().all(|&b| b == 0) {
            break;
        }
        let sp = body.iter().position(|&b| b == b' ').ok_or_else(|| malformed(offset, "pax record without length"))?;
        let len_s = &body[..sp];
        if len_s.is_empty() || len_s.len() > 20 || !len_s.iter().all(u8::is_ascii_digit) {
            return Err(malformed(offset, "pax record length is not decimal"));
        }
        let len: usize = std::str::from_utf8(len_s)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| malformed(offset, "pax record length is not decimal"))?;
        if len <= sp + 1 || len > body.len() || body[len - 1] != b'\n' {
            return Err(malformed(offset, "pax record length does not match its content"));
        }
        let rec = &body[sp + 1..len - 1];
        let eq = rec.iter().position(|&b| b == b'=').ok_or_else(|| malformed(offset, "pax record without '='"))?;
        let (k, v) = (&rec[..eq], &rec[eq + 1..]);
        if k.is_empty() {
            return Err(malformed(offset, "pax record with an empty keyword"));
        }
        // GNU sparse 0.0 repeats these two keywords, one pair per segment, in order: they are all kept.
        if k != b"GNU.sparse.offset" && k != b"GNU.sparse.numbytes" {
            out.retain(|(ok, _)| ok.as_slice() != k);
        }
        out.push((k.to_vec(), v.to_vec()));
        body = &body[len..];
    }
    Ok(())
}

pub(super) fn pax_u64(v: &[u8], offset: u64, name: &str) -> Result<u64> {
    std::str::from_utf8(v)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            malformed(offset, format!("pax {name} is not a decimal number: {:?}", String::from_utf8_lossy(v)))
        })
}

/// `[-]SECONDS[.FRACTION]` → (seconds, nanoseconds), fraction truncated to 9 digits.
pub(super) fn pax_time(v: &[u8], offset: u64) -> Result<(i64, u32)> {
    let bad = || malformed(offset, format!("pax mtime is malformed: {:?}", String::from_utf8_lossy(v)));
    let s = std::str::from_utf8(v).map_err(|_| bad())?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: i64 = int.parse().map_err(|_| bad())?;
    let mut ns: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        ns += (b - b'0') as u32 * 10u32.pow(8 - i as u32);
    }
    if neg {
        // -1.25 means 1.25 s before the epoch: (-2, 0.75 s).
        if ns > 0 {
            return Ok((-secs - 1, 1_000_000_000 - ns));
        }
        return Ok((-secs, 0));
    }
    Ok((secs, ns))
}
