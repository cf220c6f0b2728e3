//! kiln's own streaming tar reader: ustar, GNU (`L`/`K` long names, base-256 numbers) and PAX (`x`) headers,
//! with a cap on every size an archive controls (CVE-2022-2879) and the entry boundaries other readers agree on
//! (F6):
//!
//! - a PAX `size` record overrides the header's size, whatever the header says (CVE-2025-62518, CVE-2026-33055);
//! - PAX and GNU long-name headers are consumed with *their own* header size and apply only to the next real
//!   entry, never to each other (GHSA-3cv2-h65g-fgmm); precedence is PAX `path` > GNU `L` > ustar prefix+name;
//! - directories and hardlinks carry no data whatever their size field says (Go and GNU tar agree); a symlink,
//!   FIFO or device with a non-zero size is refused, because there Go reads no data and GNU tar skips it;
//! - global PAX headers (`g`) are consumed and ignored (as containerd does through Go's reader);
//! - GNU sparse entries (F7) are read only when the caller asks for them ([`TarReader::with_sparse`]; the layer
//!   applier does, the import scratch extraction does not): old-GNU `S` headers (map at offset 386, extension
//!   blocks while `isextended` is set, real size at 483) and the PAX formats 0.0 (`GNU.sparse.offset` /
//!   `GNU.sparse.numbytes` repeated), 0.1 (`GNU.sparse.map`) and 1.0 (`GNU.sparse.major=1`, `minor=0`, the map
//!   in decimal lines at the start of the data, padded to a block). The entry takes its real name
//!   (`GNU.sparse.name`, not the `GNUSparseFile.N/…` placeholder) and real size; every map is capped (segments,
//!   map bytes, real size) and checked (ascending, non-overlapping, within the real size, no overflow, data
//!   lengths summing to the stored bytes) before anything is written. An unknown sparse version, or a sparse
//!   entry where sparse reading was not asked for, is refused as unsupported, never silently mis-read;
//!   multi-volume headers are always refused.
//!
//! No `unwrap` on archive data: every malformed field is a [`TarError`] naming the offset.
//!
//! Length: about 600 lines of code and 70 of unit tests; the header state machine (`next_entry`, `real_entry`)
//! stays in one file, with the field parsers in `tar/fields.rs` and the sparse maps in `tar/sparse.rs`.

use std::io::{self, BufRead};

mod fields;
mod sparse;
use fields::{check_checksum, cstr, numeric, pad, parse_pax, pax_time, pax_u64};
use sparse::{check_sparse, pax_sparse, PendingSparse};

/// Caps on archive-controlled sizes.
#[derive(Debug, Clone, Copy)]
pub struct TarLimits {
    pub max_pax_bytes: u64,
    pub max_name_bytes: u64,
    pub max_xattr_bytes: u64,
}

/// Caps on GNU sparse maps ([`TarReader::with_sparse`]).
#[derive(Debug, Clone, Copy)]
pub struct SparseLimits {
    /// Data segments in one entry's map.
    pub max_segments: u64,
    /// Bytes of a format 1.0 map (at the start of the entry's data); 0.x maps are PAX records, under
    /// `max_pax_bytes`, and old-GNU maps are bounded by `max_segments`.
    pub max_map_bytes: u64,
    /// Real (apparent) bytes of all the sparse files of the archive together: holes cost no disk here, but
    /// a later copy that does not keep them would write them out.
    pub max_real_bytes: u64,
}

/// The layout of a sparse file: where its data segments go; everything else up to `real_size` is a hole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseMap {
    pub real_size: u64,
    /// `(offset, length)`, ascending and non-overlapping, each within `real_size`; the lengths sum to the bytes
    /// stored in the archive.
    pub segments: Vec<(u64, u64)>,
}

/// What went wrong reading the archive.
#[derive(Debug)]
pub enum TarError {
    Io(io::Error),
    /// Malformed header or record at `offset`.
    Malformed {
        offset: u64,
        reason: String,
    },
    /// A cap was exceeded: `(which, value, cap)`.
    Limit {
        offset: u64,
        limit: &'static str,
        value: u64,
        cap: u64,
    },
    /// Well-formed but not supported (sparse, multi-volume, unknown type).
    Unsupported {
        offset: u64,
        what: String,
    },
}

impl From<io::Error> for TarError {
    fn from(e: io::Error) -> Self {
        TarError::Io(e)
    }
}

type Result<T> = std::result::Result<T, TarError>;

/// The type of a real entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Regular,
    Hardlink,
    Symlink,
    Char,
    Block,
    Directory,
    Fifo,
}

/// One real entry, with its extended headers folded in.
#[derive(Debug, Clone)]
pub struct Header {
    /// Offset of the entry's own header block in the uncompressed stream.
    pub offset: u64,
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// The file's size (0 for header-only types): for a sparse file its real size, holes included.
    pub size: u64,
    /// A GNU sparse file: its segments are in [`TarReader::sparse_map`], its content comes through
    /// [`TarReader::copy_file_data`].
    pub sparse: bool,
    pub dev_major: u64,
    pub dev_minor: u64,
    /// `SCHILY.xattr.NAME` records, in archive order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A streaming reader of tar entries.
pub struct TarReader<R> {
    r: R,
    limits: TarLimits,
    /// Bytes consumed from `r`.
    offset: u64,
    /// Data bytes of the current entry not yet consumed, and the padding after them.
    remaining: u64,
    padding: u64,
    done: bool,
    /// Set by [`TarReader::with_sparse`]: GNU sparse entries are read within these caps; otherwise refused.
    sparse_limits: Option<SparseLimits>,
    /// Real bytes of the sparse files read so far, against `SparseLimits::max_real_bytes`.
    sparse_real_total: u64,
    /// The current entry's sparse map, until its data is copied.
    sparse: Option<SparseMap>,
}

const BLOCK: usize = 512;

fn malformed(offset: u64, reason: impl Into<String>) -> TarError {
    TarError::Malformed { offset, reason: reason.into() }
}

impl<R: BufRead> TarReader<R> {
    pub fn new(r: R, limits: TarLimits) -> Self {
        TarReader {
            r,
            limits,
            offset: 0,
            remaining: 0,
            padding: 0,
            done: false,
            sparse_limits: None,
            sparse_real_total: 0,
            sparse: None,
        }
    }

    /// Reads GNU sparse entries (F7) within `limits`, instead of refusing them as unsupported.
    pub fn with_sparse(mut self, limits: SparseLimits) -> Self {
        self.sparse_limits = Some(limits);
        self
    }

    /// The current entry's sparse map, if it is a sparse file whose data was not copied yet.
    pub fn sparse_map(&self) -> Option<&SparseMap> {
        self.sparse.as_ref()
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The underlying reader (to drain what follows the end-of-archive marker).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.r
    }

    /// Reads a full block; `Ok(false)` on a clean EOF before the first byte.
    fn read_block(&mut self, buf: &mut [u8; BLOCK]) -> Result<bool> {
        let mut got = 0;
        while got < BLOCK {
            let avail = match self.r.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if avail.is_empty() {
                if got == 0 {
                    return Ok(false);
                }
                return Err(malformed(self.offset, "archive truncated inside a header block"));
            }
            let n = avail.len().min(BLOCK - got);
            buf[got..got + n].copy_from_slice(&avail[..n]);
            self.r.consume(n);
            got += n;
            self.offset += n as u64;
        }
        Ok(true)
    }

    /// Skips `n` bytes of the stream; truncation is an error.
    fn skip(&mut self, mut n: u64) -> Result<()> {
        while n > 0 {
            let avail = self.r.fill_buf()?;
            if avail.is_empty() {
                return Err(malformed(self.offset, "archive truncated inside entry data"));
            }
            let k = (avail.len() as u64).min(n) as usize;
            self.r.consume(k);
            self.offset += k as u64;
            n -= k as u64;
        }
        Ok(())
    }

    /// Reads the whole data of a metadata entry (PAX, long name) of `size` bytes, capped by the caller.
    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(size.min(1 << 20) as usize);
        let mut left = size;
        while left > 0 {
            let avail = self.r.fill_buf()?;
            if avail.is_empty() {
                return Err(malformed(self.offset, "archive truncated inside an extended header"));
            }
            let k = (avail.len() as u64).min(left) as usize;
            out.extend_from_slice(&avail[..k]);
            self.r.consume(k);
            self.offset += k as u64;
            left -= k as u64;
        }
        self.skip(pad(size))?;
        Ok(out)
    }

    /// Passes the current entry's file content to `sink` as `(file offset, bytes)`, ascending, in the reader's
    /// own buffers, then skips the padding: a plain file from offset 0 on; a sparse file's data segments at
    /// their offsets, the holes between and after them (up to [`Header::size`]) never passed.
    pub fn copy_file_data(&mut self, mut sink: impl FnMut(u64, &[u8]) -> io::Result<()>) -> Result<()> {
        let segments = match self.sparse.take() {
            Some(map) => map.segments,
            None => vec![(0, self.remaining)],
        };
        for (start, len) in segments {
            let mut done = 0u64;
            while done < len {
                let avail = self.r.fill_buf()?;
                if avail.is_empty() {
                    return Err(malformed(self.offset, "archive truncated inside file data"));
                }
                let k = (avail.len() as u64).min(len - done).min(self.remaining) as usize;
                if k == 0 {
                    return Err(malformed(self.offset, "sparse map runs past the entry's data"));
                }
                sink(start + done, &avail[..k])?;
                self.r.consume(k);
                self.offset += k as u64;
                self.remaining -= k as u64;
                done += k as u64;
            }
        }
        // The map's lengths were checked to sum to the stored bytes, so nothing is left; skipped if there were.
        let (rem, p) = (std::mem::take(&mut self.remaining), std::mem::take(&mut self.padding));
        self.skip(rem + p)
    }

    /// Passes the current entry's stored data to `sink` in the reader's own buffers (no copy), then skips
    /// padding. For a sparse file that is its data segments back to back: use [`copy_file_data`] to place them.
    ///
    /// [`copy_file_data`]: TarReader::copy_file_data
    pub fn copy_data(&mut self, mut sink: impl FnMut(&[u8]) -> io::Result<()>) -> Result<()> {
        while self.remaining > 0 {
            let avail = self.r.fill_buf()?;
            if avail.is_empty() {
                return Err(malformed(self.offset, "archive truncated inside file data"));
            }
            let k = (avail.len() as u64).min(self.remaining) as usize;
            sink(&avail[..k])?;
            self.r.consume(k);
            self.offset += k as u64;
            self.remaining -= k as u64;
        }
        let p = std::mem::take(&mut self.padding);
        self.skip(p)
    }

    /// The next real entry, or `None` after the end-of-archive marker (or a clean EOF at a block boundary).
    /// Unread data of the previous entry is skipped first.
    pub fn next_entry(&mut self) -> Result<Option<Header>> {
        if self.done {
            return Ok(None);
        }
        let (rem, p) = (std::mem::take(&mut self.remaining), std::mem::take(&mut self.padding));
        self.skip(rem + p)?;
        self.sparse = None;

        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut pax_bytes = 0u64;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut block = [0u8; BLOCK];
        loop {
            let offset = self.offset;
            if !self.read_block(&mut block)? {
                if !pax.is_empty() || long_name.is_some() || long_link.is_some() {
                    return Err(malformed(offset, "archive ends after an extended header"));
                }
                self.done = true;
                return Ok(None);
            }
            if block.iter().all(|&b| b == 0) {
                // End of archive: two zero blocks. A lone zero block followed by a header is refused (Go does too).
                if !self.read_block(&mut block)? || block.iter().all(|&b| b == 0) {
                    if !pax.is_empty() || long_name.is_some() || long_link.is_some() {
                        return Err(malformed(offset, "archive ends after an extended header"));
                    }
                    self.done = true;
                    return Ok(None);
                }
                return Err(malformed(offset, "zero block followed by more headers"));
            }
            check_checksum(&block, offset)?;
            let typ = block[156];
            let hsize = numeric(&block[124..136], offset, "size")?;
            match typ {
                b'x' | b'X' => {
                    pax_bytes += hsize;
                    if pax_bytes > self.limits.max_pax_bytes {
                        return Err(TarError::Limit {
                            offset,
                            limit: "max_pax_bytes",
                            value: pax_bytes,
                            cap: self.limits.max_pax_bytes,
                        });
                    }
                    let body = self.read_meta(hsize)?;
                    parse_pax(&body, offset, &mut pax)?;
                }
                b'g' => {
                    if hsize > self.limits.max_pax_bytes {
                        return Err(TarError::Limit {
                            offset,
                            limit: "max_pax_bytes",
                            value: hsize,
                            cap: self.limits.max_pax_bytes,
                        });
                    }
                    // Global headers are validated and ignored, as containerd (Go archive/tar) does.
                    let body = self.read_meta(hsize)?;
                    parse_pax(&body, offset, &mut Vec::new())?;
                }
                b'L' | b'K' => {
                    if hsize > self.limits.max_name_bytes {
                        return Err(TarError::Limit {
                            offset,
                            limit: "max_name_bytes",
                            value: hsize,
                            cap: self.limits.max_name_bytes,
                        });
                    }
                    let mut body = self.read_meta(hsize)?;
                    while body.last() == Some(&0) {
                        body.pop();
                    }
                    if typ == b'L' {
                        long_name = Some(body);
                    } else {
                        long_link = Some(body);
                    }
                }
                b'S' if self.sparse_limits.is_none() => {
                    return Err(TarError::Unsupported { offset, what: "GNU sparse entry".into() })
                }
                b'V' | b'M' | b'N' => {
                    return Err(TarError::Unsupported {
                        offset,
                        what: format!("GNU multi-volume/volume header type {:?}", typ as char),
                    })
                }
                _ => {
                    let h = self.real_entry(&block, offset, hsize, typ, pax, long_name, long_link)?;
                    return Ok(Some(h));
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn real_entry(
        &mut self,
        block: &[u8; BLOCK],
        offset: u64,
        hsize: u64,
        typ: u8,
        pax: Vec<(Vec<u8>, Vec<u8>)>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<Header> {
        let ustar = &block[257..263] == b"ustar\0";
        let mut path = cstr(&block[0..100]).to_vec();
        if ustar {
            let prefix = cstr(&block[345..500]);
            if !prefix.is_empty() {
                let mut p = prefix.to_vec();
                p.push(b'/');
                p.extend_from_slice(&path);
                path = p;
            }
        }
        if let Some(n) = long_name {
            path = n;
        }
        let mut link = cstr(&block[157..257]).to_vec();
        if let Some(l) = long_link {
            link = l;
        }
        let mut kind = match typ {
            b'0' | b'7' | 0 | b'S' => Kind::Regular,
            b'1' => Kind::Hardlink,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' | b'D' => Kind::Directory,
            b'6' => Kind::Fifo,
            other => {
                return Err(TarError::Unsupported {
                    offset,
                    what: format!("entry type {:?} ({})", other as char, String::from_utf8_lossy(&path)),
                })
            }
        };
        // Old archives mark directories by a trailing slash on a v7 regular entry (Go and GNU tar agree).
        if typ == 0 && path.last() == Some(&b'/') {
            kind = Kind::Directory;
        }
        let mode = (numeric(&block[100..108], offset, "mode")? & 0o7777) as u32;
        let mut uid = numeric(&block[108..116], offset, "uid")?;
        let mut gid = numeric(&block[116..124], offset, "gid")?;
        let mut mtime = i64::try_from(numeric(&block[136..148], offset, "mtime")?)
            .map_err(|_| malformed(offset, "mtime out of range"))?;
        let mut mtime_nsec = 0u32;
        let (mut dev_major, mut dev_minor) = (0, 0);
        if matches!(kind, Kind::Char | Kind::Block) {
            dev_major = numeric(&block[329..337], offset, "devmajor")?;
            dev_minor = numeric(&block[337..345], offset, "devminor")?;
        }
        let mut size = hsize;
        let mut xattrs = Vec::new();
        let mut xattr_bytes = 0u64;
        let mut sparse_records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (k, v) in pax {
            match k.as_slice() {
                b"path" | b"linkpath" if v.is_empty() => {
                    return Err(malformed(offset, "empty pax path or linkpath (readers disagree on its meaning)"))
                }
                b"path" => path = v,
                b"linkpath" => link = v,
                // pax: the size record overrides the header, whatever the header holds (F6, TARmageddon).
                b"size" => size = pax_u64(&v, offset, "size")?,
                b"uid" => uid = pax_u64(&v, offset, "uid")?,
                b"gid" => gid = pax_u64(&v, offset, "gid")?,
                b"mtime" => (mtime, mtime_nsec) = pax_time(&v, offset)?,
                _ if k.starts_with(b"SCHILY.xattr.") => {
                    let name = k[b"SCHILY.xattr.".len()..].to_vec();
                    xattr_bytes += (name.len() + v.len()) as u64;
                    if v.len() as u64 > self.limits.max_xattr_bytes || xattr_bytes > self.limits.max_pax_bytes {
                        return Err(TarError::Limit {
                            offset,
                            limit: "max_xattr_bytes",
                            value: v.len() as u64,
                            cap: self.limits.max_xattr_bytes,
                        });
                    }
                    xattrs.push((name, v));
                }
                _ if k.starts_with(b"GNU.sparse.") => {
                    if self.sparse_limits.is_none() {
                        return Err(TarError::Unsupported { offset, what: "PAX (GNU) sparse entry".into() });
                    }
                    sparse_records.push((k, v));
                }
                // atime, ctime, uname, gname, comment, charset, hdrcharset, SCHILY.dev…: not applied (F9:
                // uname/gname are ignored when uid/gid are supported).
                _ => {}
            }
        }
        // F7: a sparse entry's map is read and checked before the entry is returned (old-GNU extension blocks
        // follow the header; a 1.0 map opens the data, below).
        let sparse = match self.sparse_limits {
            Some(limits) if typ == b'S' || !sparse_records.is_empty() => {
                if kind != Kind::Regular {
                    return Err(malformed(
                        offset,
                        format!("{} entry {:?} carries a sparse map", kind_str(kind), String::from_utf8_lossy(&path)),
                    ));
                }
                if typ == b'S' {
                    if !sparse_records.is_empty() {
                        return Err(malformed(offset, "old-GNU sparse header with PAX GNU.sparse records as well"));
                    }
                    Some(self.old_gnu_sparse(block, offset, &limits)?)
                } else {
                    let (pending, name) = pax_sparse(&sparse_records, offset, &limits)?;
                    if let Some(name) = name {
                        path = name;
                    }
                    Some(pending)
                }
            }
            _ => None,
        };
        if path.len() as u64 > self.limits.max_name_bytes || link.len() as u64 > self.limits.max_name_bytes {
            return Err(TarError::Limit {
                offset,
                limit: "max_name_bytes",
                value: path.len().max(link.len()) as u64,
                cap: self.limits.max_name_bytes,
            });
        }
        // Go's archive/tar reads no data for any header-only type; GNU tar 1.34 skips `size` bytes after a
        // symlink, FIFO or device but not after a directory or hardlink. Where the two disagree, the entry is
        // refused, so no reader can be shown entries another one does not see (F6).
        if size > 0 && matches!(kind, Kind::Symlink | Kind::Fifo | Kind::Char | Kind::Block) {
            return Err(malformed(
                offset,
                format!("{} entry {:?} has a non-zero size ({size})", kind_str(kind), String::from_utf8_lossy(&path)),
            ));
        }
        // Directories and hardlinks carry no data whatever the size field says (Go and GNU tar agree).
        let data = match kind {
            Kind::Regular => size,
            _ if typ == b'D' => size,
            _ => 0,
        };
        self.remaining = data;
        self.padding = pad(data);
        if let (Some(pending), Some(limits)) = (sparse, self.sparse_limits) {
            let (real_size, segments) = match pending {
                PendingSparse::Map(real_size, segments) => (real_size, segments),
                PendingSparse::InData(real_size) => (real_size, self.sparse_map_1x0(offset, &limits)?),
            };
            check_sparse(&segments, real_size, self.remaining, offset, &path)?;
            self.sparse_real_total = self.sparse_real_total.saturating_add(real_size);
            if self.sparse_real_total > limits.max_real_bytes {
                return Err(TarError::Limit {
                    offset,
                    limit: "real size of sparse files",
                    value: self.sparse_real_total,
                    cap: limits.max_real_bytes,
                });
            }
            size = real_size;
            self.sparse = Some(SparseMap { real_size, segments });
        }
        if typ == b'D' {
            // GNU dumpdir: the data lists directory contents; it is skipped.
            let (r, p) = (std::mem::take(&mut self.remaining), std::mem::take(&mut self.padding));
            self.skip(r + p)?;
        }
        Ok(Header {
            offset,
            path,
            link,
            kind,
            mode,
            uid,
            gid,
            mtime,
            mtime_nsec,
            size: if kind == Kind::Regular { size } else { 0 },
            sparse: self.sparse.is_some(),
            dev_major,
            dev_minor,
            xattrs,
        })
    }
}

fn kind_str(k: Kind) -> &'static str {
    match k {
        Kind::Regular => "regular",
        Kind::Hardlink => "hardlink",
        Kind::Symlink => "symlink",
        Kind::Char => "char device",
        Kind::Block => "block device",
        Kind::Directory => "directory",
        Kind::Fifo => "FIFO",
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build fixtures by path
mod tests {
    use super::*;

    const L: TarLimits = TarLimits { max_pax_bytes: 1 << 20, max_name_bytes: 1 << 16, max_xattr_bytes: 1 << 16 };

    #[test]
    fn numeric_fields() {
        assert_eq!(numeric(b"0000644\0", 0, "m").unwrap(), 0o644);
        assert_eq!(numeric(b"   644 \0", 0, "m").unwrap(), 0o644);
        assert_eq!(numeric(b"\0\0\0\0", 0, "m").unwrap(), 0);
        assert_eq!(numeric(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0], 0, "m").unwrap(), 256);
        assert!(numeric(&[0xff, 0xff], 0, "m").is_err());
        assert!(numeric(b"12x4\0", 0, "m").is_err());
    }

    #[test]
    fn pax_records() {
        let mut out = Vec::new();
        parse_pax(b"12 path=abc\n16 size=1234567\n", 0, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert!(parse_pax(b"99 path=abc\n", 0, &mut Vec::new()).is_err());
        assert!(parse_pax(b"x path=abc\n", 0, &mut Vec::new()).is_err());
        // A later record replaces an earlier one; empty values are kept.
        parse_pax(b"8 path=\n", 0, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], (b"path".to_vec(), vec![]));
    }

    #[test]
    fn sparse_0_0_pairs_are_all_kept_in_order() {
        let mut out = Vec::new();
        let body = b"26 GNU.sparse.offset=4096\n28 GNU.sparse.numbytes=4096\n23 GNU.sparse.offset=0\n12 path=abc\n";
        parse_pax(body, 0, &mut out).unwrap();
        let keys: Vec<&[u8]> = out.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, [&b"GNU.sparse.offset"[..], b"GNU.sparse.numbytes", b"GNU.sparse.offset", b"path"]);
    }

    #[test]
    fn sparse_maps_are_checked() {
        assert!(check_sparse(&[(0, 10), (10, 5), (100, 0)], 100, 15, 0, b"f").is_ok());
        assert!(check_sparse(&[], 1 << 40, 0, 0, b"f").is_ok());
        for (segs, real, stored) in [
            (&[(0u64, 10u64), (5, 5)][..], 100, 15),
            (&[(50, 10), (0, 5)], 100, 15),
            (&[(95, 10)], 100, 10),
            (&[(u64::MAX, 1)], u64::MAX, 1),
            (&[(0, 10)], 100, 11),
        ] {
            assert!(matches!(check_sparse(segs, real, stored, 0, b"f"), Err(TarError::Malformed { .. })), "{segs:?}");
        }
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(b"1700000000.5", 0).unwrap(), (1_700_000_000, 500_000_000));
        assert_eq!(pax_time(b"1.123456789123", 0).unwrap(), (1, 123_456_789));
        assert_eq!(pax_time(b"-1.25", 0).unwrap(), (-2, 750_000_000));
        assert!(pax_time(b"1e5", 0).is_err());
    }

    #[test]
    fn empty_archive_and_lone_zero_block() {
        let zero = vec![0u8; 1024];
        let mut r = TarReader::new(&zero[..], L);
        assert!(r.next_entry().unwrap().is_none());
        let mut r = TarReader::new(&[][..], L);
        assert!(r.next_entry().unwrap().is_none());
    }
}
