//! The stages before the tar reader, each on its own thread, joined by bounded channels of reused buffers, so
//! that the inflate has its thread to itself (issue 15) and the other work runs beside it:
//!
//! ```text
//!  read ──compressed──▶ inflate ──tar bytes──▶ hash ──tar bytes──▶ tar (the caller's thread: `apply.rs`)
//!  store's verifying      gzip (ISA-L or           the DiffID
//!  reader: size and       zlib-rs) or zstd;
//!  digest at EOF          expanded-bytes cap
//! ```
//!
//! An uncompressed layer skips the inflate stage (the read stage applies the cap). The inflate, hash and tar
//! stages share one pool of buffers (hash passes each buffer on, tar gives it back), and the read and inflate
//! stages another, so memory stays at `(POOL_READ + POOL_TAR) × CHUNK` (2.75 MiB) whatever the layer's size,
//! and nothing is allocated or zeroed per chunk once the pools are full.
//!
//! A stage stops when its consumer hangs up (the tar stage failed: its error is the one reported), and the
//! errors of earlier stages win over later ones: a tampered blob shows as the digest mismatch it is, not as
//! the bad gzip or tar it also makes. To get there, a stage that fails on its input drains its input channel,
//! so the read stage reaches EOF and the verifying reader checks the digest.

use std::io::{self, BufRead, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::OnceLock;

use crate::digest::{self, Digest, Hasher};
use crate::image::Compression;

use super::{Error, Limits};

/// Bytes per buffer handed between stages.
pub(crate) const CHUNK: usize = 256 << 10;
/// Buffers waiting in each channel.
const DEPTH: usize = 2;
/// Buffers in one pool: those in its channels plus one in each stage's hand.
const POOL_READ: usize = DEPTH + 2;
const POOL_TAR: usize = 2 * DEPTH + 3;

/// Which library inflates gzip layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GzipBackend {
    /// Intel's ISA-L (igzip), when kiln was built with it (`cfg(kiln_isal)`): the faster (bench/RESULTS.md).
    Isal,
    /// zlib-rs through flate2: pure Rust, always built in.
    ZlibRs,
}

impl GzipBackend {
    pub fn name(self) -> &'static str {
        match self {
            GzipBackend::Isal => "isa-l",
            GzipBackend::ZlibRs => "zlib-rs",
        }
    }
}

/// The gzip backend this process uses, chosen once: ISA-L when built in, unless `KILN_GZIP=zlib-rs` chose the
/// pure-Rust one (an operator who wants no C on the path of hostile bytes, or a benchmark comparing the two).
/// Any other value, or `isa-l` in a build without it, is named in a warning and the default is used.
pub fn gzip_backend() -> GzipBackend {
    static BACKEND: OnceLock<GzipBackend> = OnceLock::new();
    *BACKEND.get_or_init(|| {
        let built = if cfg!(kiln_isal) { GzipBackend::Isal } else { GzipBackend::ZlibRs };
        let Some(want) = std::env::var_os("KILN_GZIP") else { return built };
        match want.to_str() {
            Some("zlib-rs") => GzipBackend::ZlibRs,
            Some("isa-l") if built == GzipBackend::Isal => GzipBackend::Isal,
            _ => {
                tracing::warn!(
                    value = %want.to_string_lossy(),
                    using = built.name(),
                    "KILN_GZIP is not \"zlib-rs\" or \"isa-l\" (or names an inflater this build lacks): ignored"
                );
                built
            }
        }
    })
}

/// A buffer handed between stages: `buf` keeps its CHUNK length for its whole life (zeroed once, when made),
/// and `len` says how much of it holds data, so reusing it costs no `memset`.
struct Chunk {
    buf: Box<[u8]>,
    len: usize,
}

impl Chunk {
    fn data(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Fills the chunk from `r` up to CHUNK bytes or EOF; returns the byte count.
    fn fill<R: Read + ?Sized>(&mut self, r: &mut R) -> io::Result<usize> {
        self.len = 0;
        while self.len < self.buf.len() {
            match r.read(&mut self.buf[self.len..]) {
                Ok(0) => break,
                Ok(k) => self.len += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(self.len)
    }
}

/// The sending end of a link: chunks come from its pool (made while the pool is not full, then only reused).
struct Sender {
    tx: SyncSender<Chunk>,
    free: Receiver<Chunk>,
    made: usize,
    pool: usize,
}

impl Sender {
    /// A chunk to fill, or None when the consumer hung up.
    fn chunk(&mut self) -> Option<Chunk> {
        match self.free.try_recv() {
            Ok(c) => Some(c),
            Err(TryRecvError::Empty) if self.made < self.pool => {
                self.made += 1;
                Some(Chunk { buf: vec![0; CHUNK].into_boxed_slice(), len: 0 })
            }
            Err(_) => self.free.recv().ok(),
        }
    }

    /// False when the consumer hung up.
    fn send(&self, c: Chunk) -> bool {
        self.tx.send(c).is_ok()
    }
}

fn link(pool: usize) -> (Sender, Receiver<Chunk>, SyncSender<Chunk>) {
    let (tx, rx) = sync_channel(DEPTH);
    let (free_tx, free_rx) = sync_channel(pool);
    (Sender { tx, free: free_rx, made: 0, pool }, rx, free_tx)
}

/// What a [`ChanReader`] fails with once the apply is cancelled (not `Interrupted`, which readers retry).
#[derive(Debug, thiserror::Error)]
#[error("cancelled")]
pub(crate) struct CancelledRead;

/// The read failed because the apply was cancelled.
pub(crate) fn is_cancel(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<CancelledRead>())
}

fn read_error(layer: &str, e: io::Error) -> Error {
    if is_cancel(&e) {
        return Error::Cancelled;
    }
    if let Some(f) = e.get_ref().and_then(|i| i.downcast_ref::<crate::error::SourceFailed>()) {
        return Error::Source { layer: layer.to_owned(), kind: f.kind, reason: f.message.clone() };
    }
    match digest::Error::from_io(&e) {
        Some(_) => match e.into_inner().and_then(|b| b.downcast::<digest::Error>().ok()) {
            Some(d) => Error::Digest { layer: layer.to_owned(), source: *d },
            None => Error::Decompress { layer: layer.to_owned(), source: io::Error::other("verification failed") },
        },
        None => Error::Decompress { layer: layer.to_owned(), source: e },
    }
}

fn cancelled(cancel: Option<&AtomicBool>) -> bool {
    cancel.is_some_and(|c| c.load(Ordering::Relaxed))
}

/// How a stage ended without an error of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Its input ended and everything went on.
    Done,
    /// Its consumer hung up first.
    Aborted,
}

fn cap_error(layer: &str, value: u64, limits: &Limits) -> Error {
    // layer.md F4: expanded bytes are capped (decompression bombs, CVE-2017-14992).
    Error::LimitExceeded { layer: layer.to_owned(), limit: "max_expanded_bytes", value, cap: limits.max_expanded_bytes }
}

/// The read stage: the blob as stored, in chunks. `cap` (an uncompressed layer) bounds its size; past it the
/// rest is still read, unsent, so the verifying reader reports a tampered blob as such.
fn read_stage<R: Read>(
    mut reader: R,
    layer: &str,
    cap: Option<&Limits>,
    cancel: Option<&AtomicBool>,
    mut out: Sender,
) -> Result<End, Error> {
    let mut total = 0u64;
    loop {
        if cancelled(cancel) {
            return Err(Error::Cancelled);
        }
        let Some(mut b) = out.chunk() else { return Ok(End::Aborted) };
        let n = b.fill(&mut reader).map_err(|e| read_error(layer, e))?;
        if n == 0 {
            return Ok(End::Done);
        }
        total += n as u64;
        if let Some(limits) = cap.filter(|l| total > l.max_expanded_bytes) {
            drop(out);
            io::copy(&mut reader, &mut io::sink()).map_err(|e| read_error(layer, e))?;
            return Err(cap_error(layer, total, limits));
        }
        if !out.send(b) {
            return Ok(End::Aborted);
        }
    }
}

/// A gzip stream of one or more members, inflated by ISA-L (sys::isal), with flate2's `MultiGzDecoder`
/// semantics (a differential test holds them together): members follow each other to the end of the input,
/// anything else there is an error, an empty input is an error, and a header with reserved flag bits set is
/// refused (RFC 1952 2.3.1, as zlib does; ISA-L alone ignores them).
#[cfg(kiln_isal)]
struct IsalGz<R: BufRead> {
    inner: R,
    member: crate::sys::isal::Member,
    /// Input of the current member was taken (EOF now is a truncated stream).
    started: bool,
    members: u64,
    /// A member's first bytes when they straddle two input buffers (to check its flags first).
    head: Vec<u8>,
    head_pos: usize,
}

#[cfg(kiln_isal)]
impl<R: BufRead> IsalGz<R> {
    fn new(inner: R, member: crate::sys::isal::Member) -> Self {
        IsalGz { inner, member, started: false, members: 0, head: Vec::new(), head_pos: 0 }
    }

    /// At a member's start: false at a clean end of the stream; an error for reserved flags or an empty stream.
    fn start_member(&mut self) -> io::Result<bool> {
        const FLG: usize = 3;
        let input = self.inner.fill_buf()?;
        if input.is_empty() {
            if self.members == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "empty gzip stream"));
            }
            return Ok(false);
        }
        let flags = match input.get(FLG) {
            Some(f) => Some(*f),
            None => {
                // Gather the first bytes; ISA-L is given them before the rest (and reports a truncation).
                self.head.clear();
                while self.head.len() <= FLG {
                    let b = self.inner.fill_buf()?;
                    if b.is_empty() {
                        break;
                    }
                    let n = b.len().min(FLG + 1 - self.head.len());
                    self.head.extend_from_slice(&b[..n]);
                    self.inner.consume(n);
                }
                self.head_pos = 0;
                self.head.get(FLG).copied()
            }
        };
        if flags.is_some_and(|f| f & 0xe0 != 0) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "invalid gzip header: reserved flags set"));
        }
        self.started = true;
        self.members += 1;
        Ok(true)
    }
}

#[cfg(kiln_isal)]
impl<R: BufRead> Read for IsalGz<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.started && !self.start_member()? {
                return Ok(0);
            }
            let from_head = self.head_pos < self.head.len();
            let input = if from_head { &self.head[self.head_pos..] } else { self.inner.fill_buf()? };
            let eof = input.is_empty();
            let step = self.member.inflate(input, out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if from_head {
                self.head_pos += step.consumed;
            } else {
                self.inner.consume(step.consumed);
            }
            if step.finished {
                self.member.reset();
                self.started = false;
            }
            if step.produced > 0 {
                return Ok(step.produced);
            }
            if step.finished {
                continue;
            }
            if eof {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "gzip stream ends inside a member"));
            }
            if step.consumed == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "gzip inflate made no progress"));
            }
        }
    }
}

/// The decompressor the inflate stage reads through, over the read stage's chunks.
fn decoder<'a, R: BufRead + 'a>(
    compression: Compression,
    gzip: GzipBackend,
    input: R,
    layer: &str,
    limits: &Limits,
) -> Result<Box<dyn Read + 'a>, Error> {
    Ok(match compression {
        Compression::None => Box::new(input),
        Compression::Gzip => match gzip {
            #[cfg(kiln_isal)]
            GzipBackend::Isal => {
                let member = crate::sys::isal::Member::new().ok_or(Error::Internal {
                    layer: layer.to_owned(),
                    reason: "ISA-L inflate state allocation failed",
                })?;
                Box::new(IsalGz::new(input, member))
            }
            _ => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        },
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|source| Error::Decompress { layer: layer.to_owned(), source })?;
            // A frame declaring a window over the cap is refused instead of allocated (zstd window bomb).
            d.window_log_max(limits.max_zstd_window_log)
                .map_err(|source| Error::Decompress { layer: layer.to_owned(), source })?;
            Box::new(d)
        }
    })
}

/// The inflate stage. On its own failure it drains its input, so the read stage still reaches EOF and checks
/// the digest (whose failure is then the one reported).
fn inflate_stage(
    compression: Compression,
    mut input: ChanReader<'_>,
    layer: &str,
    limits: &Limits,
    cancel: Option<&AtomicBool>,
    out: Sender,
) -> Result<End, Error> {
    let result = match decoder(compression, gzip_backend(), &mut input, layer, limits) {
        Ok(mut dec) => inflate_chunks(&mut dec, layer, limits, cancel, out),
        Err(e) => Err(e),
    };
    // Trailing bytes after the compressed stream (or what a failure left) are read too, so the blob's
    // digest covers them.
    if !matches!(result, Ok(End::Aborted) | Err(Error::Cancelled)) {
        input.drain();
    }
    result
}

fn inflate_chunks(
    dec: &mut dyn Read,
    layer: &str,
    limits: &Limits,
    cancel: Option<&AtomicBool>,
    mut out: Sender,
) -> Result<End, Error> {
    let mut expanded = 0u64;
    loop {
        if cancelled(cancel) {
            return Err(Error::Cancelled);
        }
        let Some(mut b) = out.chunk() else { return Ok(End::Aborted) };
        let n = b.fill(dec).map_err(|e| read_error(layer, e))?;
        if n == 0 {
            return Ok(End::Done);
        }
        expanded += n as u64;
        if expanded > limits.max_expanded_bytes {
            return Err(cap_error(layer, expanded, limits));
        }
        if !out.send(b) {
            return Ok(End::Aborted);
        }
    }
}

/// The hash stage: the DiffID over everything the tar stage is given, passed on buffer by buffer.
fn hash_stage(input: Receiver<Chunk>, out: SyncSender<Chunk>, mut hasher: Hasher) -> (Digest, u64, End) {
    let mut expanded = 0u64;
    for b in input.iter() {
        hasher.update(b.data());
        expanded += b.len as u64;
        if out.send(b).is_err() {
            return (hasher.finish(), expanded, End::Aborted);
        }
    }
    (hasher.finish(), expanded, End::Done)
}

/// What the stages before the tar reader produced.
pub(crate) struct Produced {
    pub diff_id: Digest,
    pub expanded: u64,
}

/// Runs the stages over `reader` (the blob as stored) and `consume` (the tar stage) on the calling thread, with
/// the tar bytes through a [`ChanReader`]. `consume` must read to the end on success (`ChanReader::drain`), so
/// the hash covers bytes after the tar's end. Errors: the earliest stage's wins; then the tar stage's; then a
/// DiffID mismatch.
pub(crate) fn run<R, T>(
    reader: R,
    compression: Compression,
    expected_diff_id: &Digest,
    layer: &str,
    limits: &Limits,
    cancel: Option<&AtomicBool>,
    consume: impl FnOnce(&mut ChanReader<'_>) -> Result<T, Error>,
) -> Result<(T, Produced), Error>
where
    R: Read + Send,
{
    let algorithm = expected_diff_id.algorithm().map_err(|source| Error::Digest { layer: layer.to_owned(), source })?;
    let plain = compression == Compression::None;
    let (read_out, read_rx, read_free) = link(if plain { POOL_TAR } else { POOL_READ });
    let (stages, consumed) = std::thread::scope(|s| {
        let read = std::thread::Builder::new()
            .name("kiln-read".into())
            .spawn_scoped(s, move || read_stage(reader, layer, plain.then_some(limits), cancel, read_out));
        // The hash stage's input: the read stage's chunks (plain) or the inflate stage's.
        let (inflate, hash_rx, tar_free) = if plain {
            (None, read_rx, read_free)
        } else {
            let (inf_out, inf_rx, inf_free) = link(POOL_TAR);
            let input = ChanReader::new(read_rx, read_free, cancel);
            let h = std::thread::Builder::new()
                .name("kiln-inflate".into())
                .spawn_scoped(s, move || inflate_stage(compression, input, layer, limits, cancel, inf_out));
            (Some(h), inf_rx, inf_free)
        };
        let (hash_tx, tar_rx) = sync_channel(DEPTH);
        let hash = std::thread::Builder::new()
            .name("kiln-hash".into())
            .spawn_scoped(s, move || hash_stage(hash_rx, hash_tx, Hasher::new(algorithm)));
        let mut chan = ChanReader::new(tar_rx, tar_free, cancel);
        let consumed = consume(&mut chan);
        drop(chan);
        let read = join(read, layer).and_then(|r| r);
        let inflate = match inflate {
            None => Ok(End::Done),
            Some(h) => join(h, layer).and_then(|r| r),
        };
        let hash = join(hash, layer);
        ((read, inflate, hash), consumed)
    });
    let (read, inflate, hash) = stages;
    let read = read?;
    let inflate = inflate?;
    let value = consumed?;
    let (diff_id, expanded, hashed) = hash?;
    if read == End::Aborted || inflate == End::Aborted || hashed == End::Aborted {
        return Err(Error::Internal { layer: layer.to_owned(), reason: "tar stage stopped early without an error" });
    }
    // config.md: rootfs.diff_ids[i] MUST be the digest of the uncompressed layer (F3).
    if &diff_id != expected_diff_id {
        return Err(Error::DiffIdMismatch {
            layer: layer.to_owned(),
            expected: expected_diff_id.clone(),
            actual: diff_id,
        });
    }
    Ok((value, Produced { diff_id, expanded }))
}

/// A stage's result: a thread that could not start (its closure, and so its channels, are dropped: the other
/// stages see an early end) or panicked is an internal error.
fn join<T>(h: io::Result<std::thread::ScopedJoinHandle<'_, T>>, layer: &str) -> Result<T, Error> {
    match h {
        Ok(h) => {
            h.join().map_err(|_| Error::Internal { layer: layer.to_owned(), reason: "a pipeline thread panicked" })
        }
        Err(_) => Err(Error::Internal { layer: layer.to_owned(), reason: "a pipeline thread could not be started" }),
    }
}

/// The consuming view of a link: a `BufRead` over its chunks, giving spent ones back to the pool.
pub(crate) struct ChanReader<'a> {
    rx: Receiver<Chunk>,
    free: SyncSender<Chunk>,
    cur: Option<Chunk>,
    pos: usize,
    cancel: Option<&'a AtomicBool>,
}

impl<'a> ChanReader<'a> {
    fn new(rx: Receiver<Chunk>, free: SyncSender<Chunk>, cancel: Option<&'a AtomicBool>) -> Self {
        ChanReader { rx, free, cur: None, pos: 0, cancel }
    }

    fn give_back(&mut self) {
        if let Some(c) = self.cur.take() {
            // The pool's channel holds every chunk of the pool: this never finds it full.
            let _ = self.free.try_send(c);
        }
        self.pos = 0;
    }

    /// Consumes everything left, so the earlier stages see the whole stream (bytes after the tar's end are
    /// part of the DiffID, bytes after the compressed stream part of the blob).
    pub(crate) fn drain(&mut self) {
        self.give_back();
        while let Ok(c) = self.rx.recv() {
            let _ = self.free.try_send(c);
        }
    }
}

impl Read for ChanReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChanReader<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.cur.as_ref().is_none_or(|c| self.pos >= c.len) {
            if cancelled(self.cancel) {
                return Err(io::Error::other(CancelledRead));
            }
            self.give_back();
            match self.rx.recv() {
                Ok(c) => self.cur = Some(c),
                // The sender is gone: EOF (or an earlier stage failed; its error is reported instead).
                Err(_) => return Ok(&[]),
            }
        }
        Ok(self.cur.as_ref().map_or(&[][..], |c| &c.data()[self.pos..]))
    }

    fn consume(&mut self, amt: usize) {
        let len = self.cur.as_ref().map_or(0, |c| c.len);
        self.pos = (self.pos + amt).min(len);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A member with every optional header field (FEXTRA, FNAME, FCOMMENT, FHCRC).
    fn gzip_full_header(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::GzBuilder::new()
            .extra(b"ex".to_vec())
            .filename("layer.tar")
            .comment("a comment")
            .mtime(7)
            .write(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        let mut v = e.finish().unwrap();
        // flate2 writes no header CRC: set FHCRC and insert CRC-16 of the header (RFC 1952 2.3.1).
        let hlen = 10 + 2 + 2 + b"layer.tar\0".len() + b"a comment\0".len();
        v[3] |= 0x02;
        let crc = crc32(&v[..hlen]);
        v.splice(hlen..hlen, (crc as u16).to_le_bytes());
        v
    }

    fn crc32(b: &[u8]) -> u32 {
        let mut h = flate2::Crc::new();
        h.update(b);
        h.sum()
    }

    fn inflate(backend: GzipBackend, input: &[u8]) -> Result<Vec<u8>, String> {
        let mut d = decoder(Compression::Gzip, backend, input, "l", &Limits::default()).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        d.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Data that compresses into several deflate blocks, with matches across them.
    fn sample(n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        let mut x = 0x9e3779b9u32;
        while v.len() < n {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if x % 3 == 0 {
                v.extend_from_slice(b"usr/share/doc/ kiln layer ");
            } else {
                v.push((x >> 24) as u8);
            }
        }
        v.truncate(n);
        v
    }

    /// The cases the two backends must agree on: everything that decodes must decode to the same bytes, and
    /// whatever one refuses the other refuses.
    fn cases() -> Vec<(String, Vec<u8>)> {
        let data = sample(600_000);
        let one = gzip(&data);
        let mut cases = vec![
            ("one member".to_owned(), one.clone()),
            ("empty input".to_owned(), Vec::new()),
            ("empty member".to_owned(), gzip(b"")),
            ("all header fields and FHCRC".to_owned(), gzip_full_header(&data)),
            ("three members".to_owned(), [gzip(&data[..1000]), gzip(b""), gzip(&data[1000..])].concat()),
            ("trailing garbage".to_owned(), [one.clone(), b"garbage!".to_vec()].concat()),
            ("trailing zeros".to_owned(), [one.clone(), vec![0; 512]].concat()),
            ("not gzip".to_owned(), data[..4096].to_vec()),
        ];
        let mut bad_crc = one.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 1;
        cases.push(("bad CRC-32".to_owned(), bad_crc));
        let mut bad_size = one.clone();
        bad_size[n - 1] ^= 1;
        cases.push(("bad ISIZE".to_owned(), bad_size));
        let mut bad_hcrc = gzip_full_header(b"x");
        bad_hcrc[10 + 2 + 2 + 10 + 10] ^= 0xff;
        cases.push(("bad header CRC".to_owned(), bad_hcrc));
        let mut bad_method = one.clone();
        bad_method[2] = 7;
        cases.push(("method 7".to_owned(), bad_method));
        let mut reserved_flag = one.clone();
        reserved_flag[3] |= 0x80;
        cases.push(("reserved flag".to_owned(), reserved_flag.clone()));
        cases.push(("reserved flag in member 2".to_owned(), [gzip(b"abc"), reserved_flag].concat()));
        for cut in [1, 2, 9, 10, 11, 100, n / 2, n - 8, n - 4, n - 1] {
            cases.push((format!("cut at {cut}"), one[..cut].to_vec()));
        }
        for at in [12, 40, 1000, n / 3, n / 2] {
            let mut flipped = one.clone();
            flipped[at] ^= 0x55;
            cases.push((format!("byte {at} flipped"), flipped));
        }
        cases
    }

    #[cfg(kiln_isal)]
    #[test]
    fn isal_and_zlib_rs_agree_on_valid_and_broken_gzip() {
        let mut differ = Vec::new();
        for (name, input) in cases() {
            let isal = inflate(GzipBackend::Isal, &input);
            let rust = inflate(GzipBackend::ZlibRs, &input);
            match (&isal, &rust) {
                (Ok(a), Ok(b)) => assert!(a == b, "{name}: different output"),
                (Err(_), Err(_)) => {}
                _ => differ.push(format!(
                    "{name}: isa-l {:?} vs zlib-rs {:?}",
                    isal.map(|v| v.len()),
                    rust.map(|v| v.len())
                )),
            }
        }
        assert!(differ.is_empty(), "{differ:#?}");
    }

    /// Seeded random damage to gzip streams (flips, insertions, deletions, cuts, members joined): ISA-L and
    /// zlib-rs must agree on every one. `KILN_GZIP_MUTATIONS` sets the count (the long run in the closing note).
    #[cfg(kiln_isal)]
    #[test]
    fn isal_and_zlib_rs_agree_on_randomly_damaged_gzip() {
        let n: u64 = std::env::var("KILN_GZIP_MUTATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
        let bases =
            [gzip(&sample(20_000)), [gzip(&sample(3000)), gzip(b"tail")].concat(), gzip_full_header(&sample(900))];
        let mut x = 0x2545f4914f6cdd1du64;
        let mut rnd = move |m: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m.max(1) as u64) as usize
        };
        let mut differ = Vec::new();
        for i in 0..n {
            let mut v = bases[i as usize % bases.len()].clone();
            for _ in 0..1 + rnd(3) {
                let at = rnd(v.len());
                match rnd(6) {
                    0 | 1 => v[at] ^= 1 << rnd(8),
                    2 => v.insert(at, rnd(256) as u8),
                    3 => {
                        let end = (at + 1 + rnd(16)).min(v.len());
                        v.drain(at..end);
                    }
                    4 => v.truncate(at),
                    _ => v.extend_from_slice(&gzip(&sample(rnd(500)))),
                }
                if v.is_empty() {
                    break;
                }
            }
            let (a, b) = (inflate(GzipBackend::Isal, &v), inflate(GzipBackend::ZlibRs, &v));
            let same = match (&a, &b) {
                (Ok(a), Ok(b)) => a == b,
                (Err(_), Err(_)) => true,
                _ => false,
            };
            if !same {
                differ.push(format!("case {i}: isa-l {:?} vs zlib-rs {:?}", a.map(|v| v.len()), b.map(|v| v.len())));
            }
        }
        assert!(differ.is_empty(), "{} of {n} differ: {:#?}", differ.len(), &differ[..differ.len().min(10)]);
    }

    /// A reader that sets `cancel` after `after` bytes and then keeps giving bytes forever.
    struct Endless<'a> {
        left: usize,
        cancel: &'a AtomicBool,
    }
    impl Read for Endless<'_> {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            if self.left == 0 {
                self.cancel.store(true, Ordering::Relaxed);
            }
            let n = b.len().min(self.left.max(1 << 16));
            self.left = self.left.saturating_sub(n);
            b[..n].fill(0);
            Ok(n)
        }
    }

    /// Every stage stops on a cancel, whichever one is waiting: an endless blob, gzip or plain, with a tar
    /// stage that reads everything.
    #[test]
    fn a_cancel_stops_every_stage_of_an_endless_stream() {
        let diff = Digest::sha256(b"");
        for compression in [Compression::None, Compression::Zstd, Compression::Gzip] {
            let cancel = AtomicBool::new(false);
            let input: Box<dyn Read + Send> = match compression {
                // Compressed: 64 MiB of zeros, cancelled before the start (the plain case cancels mid-stream).
                Compression::Gzip => {
                    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    e.write_all(&vec![0; 64 << 20]).unwrap();
                    let z = e.finish().unwrap();
                    cancel.store(true, Ordering::Relaxed);
                    Box::new(io::Cursor::new(z))
                }
                Compression::Zstd => {
                    let z = zstd::encode_all(&vec![0u8; 64 << 20][..], 1).unwrap();
                    cancel.store(true, Ordering::Relaxed);
                    Box::new(io::Cursor::new(z))
                }
                Compression::None => Box::new(Endless { left: 8 << 20, cancel: &cancel }),
            };
            let r = run(input, compression, &diff, "l", &Limits::default(), Some(&cancel), |c| {
                io::copy(c, &mut io::sink()).map_err(|e| read_error("l", e))?;
                Ok(())
            });
            assert!(matches!(r, Err(Error::Cancelled)), "{compression:?}: {:?}", r.err());
        }
    }

    /// The tar stage failing early is the error reported, and the earlier stages stop (no hang on a full
    /// channel), for a blob far larger than the pipeline's buffers.
    #[test]
    fn the_tar_stage_failing_early_stops_the_earlier_stages() {
        let data = sample(8 << 20);
        let z = gzip(&data);
        let diff = Digest::sha256(&data);
        for (compression, blob) in [(Compression::Gzip, z), (Compression::None, data.clone())] {
            let r: Result<((), Produced), Error> =
                run(io::Cursor::new(blob), compression, &diff, "l", &Limits::default(), None, |c| {
                    let mut b = [0u8; 1000];
                    c.read_exact(&mut b).unwrap();
                    Err(Error::Tar { layer: "l".into(), offset: 0, reason: "bad".into() })
                });
            assert!(matches!(r, Err(Error::Tar { .. })), "{compression:?}");
            // And the whole stream read: the DiffID is checked, and a wrong one named.
            let wrong = Digest::sha256(b"other");
            let r = run(io::Cursor::new(data.clone()), Compression::None, &wrong, "l", &Limits::default(), None, |c| {
                c.drain();
                Ok(())
            });
            assert!(matches!(r, Err(Error::DiffIdMismatch { .. })));
        }
    }

    /// The expanded-bytes cap holds for compressed and plain layers (F4).
    #[test]
    fn expanded_bytes_are_capped() {
        let data = vec![0u8; 3 << 20];
        let limits = Limits { max_expanded_bytes: 1 << 20, ..Limits::default() };
        let diff = Digest::sha256(&data);
        for (compression, blob) in [(Compression::Gzip, gzip(&data)), (Compression::None, data.clone())] {
            let r = run(io::Cursor::new(blob), compression, &diff, "l", &limits, None, |c| {
                c.drain();
                Ok(())
            });
            assert!(matches!(r, Err(Error::LimitExceeded { .. })), "{compression:?}: {:?}", r.err());
        }
    }

    #[test]
    fn gzip_cases_decode_or_fail_as_expected() {
        let backend = gzip_backend();
        for (name, input) in cases() {
            let got = inflate(backend, &input);
            let valid = ["one member", "empty member", "all header fields and FHCRC", "three members"];
            let got = got.map(|v| v.len());
            assert_eq!(got.is_ok(), valid.contains(&name.as_str()), "{name} with {}: {got:?}", backend.name());
        }
        assert_eq!(inflate(backend, &gzip(&sample(70_000))).unwrap(), sample(70_000));
    }

    /// Output smaller than one member, in many reads: each read makes progress and the result is whole.
    #[test]
    fn gzip_in_small_reads_and_small_input_chunks() {
        struct Trickle<'a>(&'a [u8], usize);
        impl Read for Trickle<'_> {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                let n = self.1.min(self.0.len()).min(b.len());
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let data = sample(300_000);
        let z = [gzip(&data[..1]), gzip(&data[1..])].concat();
        let mut flagged = z.clone();
        let second = gzip(&data[..1]).len();
        flagged[second + 3] |= 0x20;
        for backend in [gzip_backend(), GzipBackend::ZlibRs] {
            for step in [1, 2, 3, 7, 4096] {
                // The second member's reserved flag is seen however its header is split.
                let input = io::BufReader::with_capacity(step, Trickle(&flagged, step));
                let mut d = decoder(Compression::Gzip, backend, input, "l", &Limits::default()).unwrap();
                assert!(d.read_to_end(&mut Vec::new()).is_err(), "{} with {step}-byte input", backend.name());
                let input = io::BufReader::with_capacity(step, Trickle(&z, step));
                let mut d = decoder(Compression::Gzip, backend, input, "l", &Limits::default()).unwrap();
                let mut out = Vec::new();
                let mut buf = [0u8; 333];
                loop {
                    let n = d.read(&mut buf).unwrap_or_else(|e| panic!("{} step {step}: {e}", backend.name()));
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&buf[..n]);
                }
                assert!(out == data, "{} with {step}-byte input", backend.name());
            }
        }
    }
}
