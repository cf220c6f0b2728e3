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

    /// Builds and compresses into a layer blob with its media type and DiffID.
    pub fn layer(&self, compression: Compression) -> Layer {
        Layer::from_tar(self.build(), compression)
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
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
