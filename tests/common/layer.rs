//! `LayerBuilder`: tar layers written in code, including hostile ones (`..` names, absolute names, raw
//! link targets, PAX records), compressed with gzip, zstd or not at all.
//!
//! ```ignore
//! LayerBuilder::new().file("etc/motd", b"hi", 0o644).symlink("lib", "usr/lib").whiteout("old").opaque("etc")
//! ```

use std::io::Write;

use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone)]
pub enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Hardlink(String),
    Fifo,
    Char(u32, u32),
    Block(u32, u32),
    /// Bytes written verbatim into the stream (hostile or hand-made headers).
    Raw(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// PAX records written before this entry (e.g. `SCHILY.xattr.user.x`, `mtime`).
    pub pax: Vec<(String, Vec<u8>)>,
}

/// Builds an uncompressed tar stream entry by entry, names written byte-exact (no sanitising).
#[derive(Debug, Clone, Default)]
pub struct LayerBuilder {
    pub entries: Vec<Entry>,
}

impl LayerBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn entry(mut self, path: &str, kind: Kind, mode: u32) -> Self {
        self.entries.push(Entry { path: path.into(), kind, mode, uid: 0, gid: 0, mtime: 1_700_000_000, pax: vec![] });
        self
    }

    pub fn file(self, path: &str, content: &[u8], mode: u32) -> Self {
        self.entry(path, Kind::File(content.to_vec()), mode)
    }

    pub fn dir(self, path: &str, mode: u32) -> Self {
        self.entry(path, Kind::Dir, mode)
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.entry(path, Kind::Symlink(target.into()), 0o777)
    }

    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.entry(path, Kind::Hardlink(target.into()), 0o644)
    }

    pub fn fifo(self, path: &str) -> Self {
        self.entry(path, Kind::Fifo, 0o644)
    }

    pub fn char_device(self, path: &str, major: u32, minor: u32) -> Self {
        self.entry(path, Kind::Char(major, minor), 0o666)
    }

    pub fn block_device(self, path: &str, major: u32, minor: u32) -> Self {
        self.entry(path, Kind::Block(major, minor), 0o660)
    }

    /// Raw bytes appended to the stream as they are (use [`write_entry`] and [`pax_record`] to make them).
    pub fn raw(self, bytes: Vec<u8>) -> Self {
        self.entry("", Kind::Raw(bytes), 0)
    }

    /// A GNU sparse file entry in `format`, as GNU tar writes it (see [`sparse_entry`]).
    pub fn sparse(
        self,
        format: SparseFormat,
        name: &str,
        real_size: u64,
        segments: &[(u64, u64)],
        data: &[u8],
    ) -> Self {
        self.raw(sparse_entry(format, name, real_size, segments, data))
    }

    /// `.wh.NAME` next to `path`'s basename.
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, base) = match path.rsplit_once('/') {
            Some((d, b)) => (format!("{d}/"), b),
            None => (String::new(), path),
        };
        self.file(&format!("{dir}.wh.{base}"), b"", 0o644)
    }

    /// `DIR/.wh..wh..opq`.
    pub fn opaque(self, dir: &str) -> Self {
        let dir = dir.trim_end_matches('/');
        let p = if dir.is_empty() { ".wh..wh..opq".to_string() } else { format!("{dir}/.wh..wh..opq") };
        self.file(&p, b"", 0o644)
    }

    /// Sets the owner of the last entry.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        if let Some(e) = self.entries.last_mut() {
            e.uid = uid;
            e.gid = gid;
        }
        self
    }

    /// Sets the mtime of the last entry.
    pub fn mtime(mut self, mtime: u64) -> Self {
        if let Some(e) = self.entries.last_mut() {
            e.mtime = mtime;
        }
        self
    }

    /// Adds a PAX record to the last entry.
    pub fn pax(mut self, key: &str, value: &[u8]) -> Self {
        if let Some(e) = self.entries.last_mut() {
            e.pax.push((key.into(), value.to_vec()));
        }
        self
    }

    /// Adds an xattr to the last entry (as `SCHILY.xattr.NAME`).
    pub fn xattr(self, name: &str, value: &[u8]) -> Self {
        self.pax(&format!("SCHILY.xattr.{name}"), value)
    }

    /// The uncompressed tar stream, ending with two zero blocks.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.entries {
            if let Kind::Raw(bytes) = &e.kind {
                out.extend_from_slice(bytes);
                continue;
            }
            if !e.pax.is_empty() {
                let mut body = Vec::new();
                for (k, v) in &e.pax {
                    body.extend_from_slice(&pax_record(k, v));
                }
                write_entry(&mut out, "PaxHeaders/x", b'x', 0o644, 0, 0, 0, "", &body, (0, 0));
            }
            let name_bytes = e.path.as_bytes();
            if name_bytes.len() > 100 {
                let mut long = name_bytes.to_vec();
                long.push(0);
                write_entry(&mut out, "././@LongLink", b'L', 0o644, 0, 0, 0, "", &long, (0, 0));
            }
            let (typ, data, link, dev): (u8, &[u8], &str, (u32, u32)) = match &e.kind {
                Kind::File(d) => (b'0', d, "", (0, 0)),
                Kind::Dir => (b'5', b"", "", (0, 0)),
                Kind::Symlink(t) => (b'2', b"", t, (0, 0)),
                Kind::Hardlink(t) => (b'1', b"", t, (0, 0)),
                Kind::Fifo => (b'6', b"", "", (0, 0)),
                Kind::Char(a, b) => (b'3', b"", "", (*a, *b)),
                Kind::Block(a, b) => (b'4', b"", "", (*a, *b)),
                Kind::Raw(_) => unreachable!(),
            };
            if link.len() > 100 {
                let mut long = link.as_bytes().to_vec();
                long.push(0);
                write_entry(&mut out, "././@LongLink", b'K', 0o644, 0, 0, 0, "", &long, (0, 0));
            }
            write_entry(&mut out, &e.path, typ, e.mode, e.uid, e.gid, e.mtime, link, data, dev);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    /// The tar stream without the two zero blocks that end it (to append raw bytes after).
    pub fn build_open(&self) -> Vec<u8> {
        let mut t = self.build();
        t.truncate(t.len() - 1024);
        t
    }

    /// Builds and compresses into a layer blob with its media type and DiffID.
    pub fn layer(&self, compression: Compression) -> Layer {
        Layer::from_tar(self.build(), compression)
    }
}

pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "%d %s=%s\n" where the length counts itself.
    let base = key.len() + value.len() + 3;
    let mut len = base + base.to_string().len();
    if len.to_string().len() + base != len {
        len = base + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    let b = s.as_bytes();
    let start = b.len().saturating_sub(width);
    field[..width].copy_from_slice(&b[start..]);
    field[width] = 0;
}

/// Writes one ustar header (names truncated to the field, byte-exact) and its padded data.
#[allow(clippy::too_many_arguments)]
pub fn write_entry(
    out: &mut Vec<u8>,
    name: &str,
    typ: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: &str,
    data: &[u8],
    dev: (u32, u32),
) {
    let mut h = [0u8; 512];
    let n = name.as_bytes();
    h[..n.len().min(100)].copy_from_slice(&n[..n.len().min(100)]);
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], uid);
    octal(&mut h[116..124], gid);
    octal(&mut h[124..136], data.len() as u64);
    octal(&mut h[136..148], mtime);
    h[156] = typ;
    let l = link.as_bytes();
    h[157..157 + l.len().min(100)].copy_from_slice(&l[..l.len().min(100)]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], dev.0 as u64);
    octal(&mut h[337..345], dev.1 as u64);
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    octal(&mut h[148..155], sum);
    h[155] = b' ';
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

/// The GNU sparse formats (GNU tar's `--format=gnu`, and `--format=posix --sparse-version=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseFormat {
    /// Type `S` header: the map at offset 386 (4 entries), extension blocks of 21, real size at 483.
    OldGnu,
    /// PAX `GNU.sparse.size`, `GNU.sparse.numblocks`, then `GNU.sparse.offset`/`numbytes` pairs.
    Pax00,
    /// PAX `GNU.sparse.map=off,len,…` and `GNU.sparse.name`; the ustar name is a `GNUSparseFile.0/` placeholder.
    Pax01,
    /// PAX `GNU.sparse.major=1`, `minor=0`, `name`, `realsize`; the map opens the data in decimal lines.
    Pax10,
}

/// A 12-byte numeric field: octal when it fits, GNU base-256 otherwise.
fn numeric12(field: &mut [u8], value: u64) {
    if value < 8u64.pow(11) {
        octal(field, value);
    } else {
        field.fill(0);
        field[0] = 0x80;
        field[4..12].copy_from_slice(&value.to_be_bytes());
    }
}

/// The format 1.0 map as GNU tar writes it at the start of the data: decimal lines, padded to a block.
pub fn sparse_map_1x0(segments: &[(u64, u64)]) -> Vec<u8> {
    let mut map = format!("{}\n", segments.len());
    for (o, l) in segments {
        map.push_str(&format!("{o}\n{l}\n"));
    }
    let mut map = map.into_bytes();
    map.resize(map.len().div_ceil(512) * 512, 0);
    map
}

/// One GNU sparse file entry: `segments` are `(offset, length)` and `data` their contents back to back.
/// Nothing is checked, so hostile maps (overlapping, past the real size, lengths that do not add up) can be
/// written.
pub fn sparse_entry(format: SparseFormat, name: &str, real_size: u64, segments: &[(u64, u64)], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match format {
        SparseFormat::OldGnu => {
            let mut h = [0u8; 512];
            h[..name.len().min(100)].copy_from_slice(&name.as_bytes()[..name.len().min(100)]);
            octal(&mut h[100..108], 0o644);
            octal(&mut h[108..116], 0);
            octal(&mut h[116..124], 0);
            numeric12(&mut h[124..136], data.len() as u64);
            octal(&mut h[136..148], 1_700_000_000);
            h[156] = b'S';
            h[257..265].copy_from_slice(b"ustar  \0");
            let entry = |field: &mut [u8], (o, l): (u64, u64)| {
                numeric12(&mut field[..12], o);
                numeric12(&mut field[12..24], l);
            };
            let (first, rest) = segments.split_at(segments.len().min(4));
            for (i, s) in first.iter().enumerate() {
                entry(&mut h[386 + i * 24..386 + (i + 1) * 24], *s);
            }
            h[482] = u8::from(!rest.is_empty());
            numeric12(&mut h[483..495], real_size);
            h[148..156].copy_from_slice(b"        ");
            let sum: u64 = h.iter().map(|&b| b as u64).sum();
            octal(&mut h[148..155], sum);
            h[155] = b' ';
            out.extend_from_slice(&h);
            let chunks: Vec<&[(u64, u64)]> = rest.chunks(21).collect();
            for (n, chunk) in chunks.iter().enumerate() {
                let mut b = [0u8; 512];
                for (i, s) in chunk.iter().enumerate() {
                    entry(&mut b[i * 24..(i + 1) * 24], *s);
                }
                b[504] = u8::from(n + 1 < chunks.len());
                out.extend_from_slice(&b);
            }
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        SparseFormat::Pax00 => {
            let mut records: Vec<(String, Vec<u8>)> = vec![
                ("GNU.sparse.size".into(), real_size.to_string().into_bytes()),
                ("GNU.sparse.numblocks".into(), segments.len().to_string().into_bytes()),
            ];
            for (o, l) in segments {
                records.push(("GNU.sparse.offset".into(), o.to_string().into_bytes()));
                records.push(("GNU.sparse.numbytes".into(), l.to_string().into_bytes()));
            }
            let recs: Vec<(&str, &[u8])> = records.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            out.extend_from_slice(&pax_header(&recs));
            write_entry(&mut out, name, b'0', 0o644, 0, 0, 1_700_000_000, "", data, (0, 0));
        }
        SparseFormat::Pax01 => {
            let map: Vec<String> = segments.iter().flat_map(|(o, l)| [o.to_string(), l.to_string()]).collect();
            let (size, blocks, map) = (real_size.to_string(), segments.len().to_string(), map.join(","));
            out.extend_from_slice(&pax_header(&[
                ("GNU.sparse.size", size.as_bytes()),
                ("GNU.sparse.numblocks", blocks.as_bytes()),
                ("GNU.sparse.name", name.as_bytes()),
                ("GNU.sparse.map", map.as_bytes()),
            ]));
            let placeholder = format!("GNUSparseFile.0/{}", name.rsplit('/').next().unwrap_or(name));
            write_entry(&mut out, &placeholder, b'0', 0o644, 0, 0, 1_700_000_000, "", data, (0, 0));
        }
        SparseFormat::Pax10 => {
            let real = real_size.to_string();
            out.extend_from_slice(&pax_header(&[
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.name", name.as_bytes()),
                ("GNU.sparse.realsize", real.as_bytes()),
            ]));
            let mut body = sparse_map_1x0(segments);
            body.extend_from_slice(data);
            let placeholder = format!("GNUSparseFile.0/{}", name.rsplit('/').next().unwrap_or(name));
            write_entry(&mut out, &placeholder, b'0', 0o644, 0, 0, 1_700_000_000, "", &body, (0, 0));
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// A layer blob ready to be written into a layout.
#[derive(Debug, Clone)]
pub struct Layer {
    pub media_type: String,
    pub blob: Vec<u8>,
    /// `sha256:…` of the uncompressed tar.
    pub diff_id: String,
}

impl Layer {
    pub fn from_tar(tar: Vec<u8>, compression: Compression) -> Layer {
        let diff_id = sha256(&tar);
        let (media_type, blob) = match compression {
            Compression::None => ("application/vnd.oci.image.layer.v1.tar", tar),
            Compression::Gzip => ("application/vnd.oci.image.layer.v1.tar+gzip", gzip(&tar)),
            Compression::Zstd => ("application/vnd.oci.image.layer.v1.tar+zstd", zstd(&tar)),
        };
        Layer { media_type: media_type.into(), blob, diff_id }
    }

    /// The same blob announced under another media type (Docker, non-distributable…).
    pub fn with_media_type(mut self, media_type: &str) -> Layer {
        self.media_type = media_type.into();
        self
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    let h = Sha256::digest(bytes);
    let mut s = String::from("sha256:");
    for b in h.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(bytes, 3).expect("zstd")
}

/// A PAX extended header (`x`) block with its records, ready to go before an entry.
pub fn pax_header(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        body.extend_from_slice(&pax_record(k, v));
    }
    let mut out = Vec::new();
    write_entry(&mut out, "PaxHeaders/x", b'x', 0o644, 0, 0, 0, "", &body, (0, 0));
    out
}

/// Gzip with each part as its own member (multi-member, like pigz or concatenated layers).
pub fn gzip_members(parts: &[&[u8]]) -> Vec<u8> {
    parts.iter().flat_map(|p| gzip(p)).collect()
}

/// zstd with each part as its own frame, and a skippable frame between every two (zstd:chunked style).
pub fn zstd_frames(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            // Skippable frame: magic 0x184D2A5?, little-endian 4-byte length, payload.
            out.extend_from_slice(&0x184D2A50u32.to_le_bytes());
            out.extend_from_slice(&5u32.to_le_bytes());
            out.extend_from_slice(b"kiln!");
        }
        out.extend_from_slice(&zstd(p));
    }
    out
}

// ---- Applying layers in tests -------------------------------------------------------------------------------

/// Applies an uncompressed tar onto `root` with its own sha256 as DiffID.
pub fn apply_tar(
    tar: &[u8],
    root: &std::path::Path,
    opts: &kiln::layer::Options,
) -> kiln::layer::Result<kiln::layer::Stats> {
    let diff_id = kiln::digest::Digest::sha256(tar);
    kiln::layer::apply(std::io::Cursor::new(tar.to_vec()), kiln::image::Compression::None, &diff_id, "test", opts, root)
}

/// Applies a (possibly compressed) blob with an explicit DiffID.
pub fn apply_blob(
    blob: &[u8],
    compression: kiln::image::Compression,
    diff_id: &str,
    root: &std::path::Path,
    opts: &kiln::layer::Options,
) -> kiln::layer::Result<kiln::layer::Stats> {
    let diff_id = kiln::digest::Digest::parse(diff_id).expect("diff id");
    kiln::layer::apply(std::io::Cursor::new(blob.to_vec()), compression, &diff_id, "test", opts, root)
}

/// Reads one xattr without following symlinks (`None` when absent).
pub fn xattr(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 65536];
    // SAFETY: both strings are NUL-terminated; buf is valid for its length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

/// Names of all xattrs of `path` (not following symlinks), sorted.
pub fn xattr_names(path: &std::path::Path) -> Vec<String> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(p) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return vec![] };
    let mut buf = vec![0u8; 65536];
    // SAFETY: p is NUL-terminated; buf is valid for its length.
    let r = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r <= 0 {
        return vec![];
    }
    let mut names: Vec<String> = buf[..r as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into())
        .collect();
    names.sort();
    names
}

/// A line per object under `root` (not following symlinks; the root itself left out): type, mode, owner,
/// size, content hash or link target or device numbers, link count, mtime (seconds, not for symlinks, when
/// `with_mtime`), and every xattr with its value: the [`super::tree::walk`] view for comparing layer
/// application results.
pub fn describe(root: &std::path::Path, with_mtime: bool) -> std::collections::BTreeMap<String, String> {
    use super::tree::FileKind;
    super::tree::walk(root)
        .into_iter()
        .filter(|(rel, _)| !rel.is_empty())
        .map(|(rel, e)| {
            let what = match &e.kind {
                FileKind::Dir => "dir".to_string(),
                FileKind::Symlink => format!("symlink -> {}", e.link.as_deref().unwrap_or("")),
                FileKind::File => format!("file {} {}", e.size, e.sha256.as_deref().unwrap_or("")),
                FileKind::Fifo => "fifo".into(),
                FileKind::Char => format!("char {}", e.rdev.unwrap_or(0)),
                FileKind::Block => format!("block {}", e.rdev.unwrap_or(0)),
                FileKind::Socket => "other".into(),
                FileKind::Unstatable(err) => format!("unstatable ({err})"),
            };
            let mut line = format!("{what} mode={:o} uid={} gid={}", e.mode, e.uid, e.gid);
            if e.kind == FileKind::File {
                line.push_str(&format!(" nlink={}", e.nlink.unwrap_or(0)));
            }
            if with_mtime && e.kind != FileKind::Symlink {
                line.push_str(&format!(" mtime={}", e.mtime.unwrap_or(0)));
            }
            for (n, v) in &e.xattrs {
                line.push_str(&format!(" xattr:{n}={}", String::from_utf8_lossy(v)));
            }
            (rel, line)
        })
        .collect()
}

/// [`describe`] of an unpacked rootfs: `/dev`, `/proc` and `/sys`, made by rootfs hygiene at unpack time, are
/// described without their mtime (the clock's), so two unpacks of one image compare equal.
pub fn describe_rootfs(root: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let mut tree = describe(root, true);
    for made in ["dev", "proc", "sys"] {
        if let Some(line) = tree.get_mut(made) {
            *line = line.split(" mtime=").next().unwrap_or_default().to_owned();
        }
    }
    tree
}

/// A directory of canary files *outside* a root: hostile layers must leave it exactly as it was.
pub struct Canary {
    pub dir: std::path::PathBuf,
    before: std::collections::BTreeMap<String, String>,
}

impl Canary {
    /// Makes `base/outside` with a few files, a subdirectory and a file named like common targets.
    pub fn new(base: &std::path::Path) -> Canary {
        let dir = base.join("outside");
        std::fs::create_dir_all(dir.join("etc/cron.d")).expect("mkdir");
        std::fs::write(dir.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").expect("write");
        std::fs::write(dir.join("etc/shadow"), b"root:*:1::::::\n").expect("write");
        std::fs::write(dir.join("victim"), b"do not touch").expect("write");
        let before = describe(&dir, true);
        Canary { dir, before }
    }

    /// The canary dir as an absolute path string (for link targets).
    pub fn path(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    /// Panics if anything under the canary dir changed.
    pub fn assert_untouched(&self) {
        assert!(self.dir.is_dir(), "canary dir is gone");
        assert_eq!(describe(&self.dir, true), self.before, "files outside the root changed");
    }
}

/// Incompressible bytes (xorshift), so a gzip layer is about as large as its file.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
