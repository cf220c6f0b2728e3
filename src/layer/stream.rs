//! The first stage of the pipeline: decompression, the DiffID and the expanded-bytes cap, on one thread; the
//! compressed size and digest are checked by the store's verifying reader underneath. Chunks go to the tar
//! stage through a bounded channel, so memory stays bounded whatever the layer's size.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};

use crate::digest::{self, Digest, Hasher};
use crate::image::Compression;

use super::{Error, Limits};

/// Bytes per chunk handed between the stages.
pub(crate) const CHUNK: usize = 256 << 10;
/// Chunks in flight: CHUNK × (DEPTH + 2) bounds the pipeline's buffers (1.5 MiB).
pub(crate) const DEPTH: usize = 4;

enum Decoder<R: Read> {
    Plain(R),
    Gzip(Box<flate2::read::MultiGzDecoder<R>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
}

impl<R: Read> Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }

    /// Reads the compressed input to EOF, so the store's reader checks size and digest even when the
    /// decompressor stopped early (trailing bytes are part of the blob).
    fn drain_inner(&mut self) -> io::Result<u64> {
        match self {
            Decoder::Plain(r) => io::copy(r, &mut io::sink()),
            Decoder::Gzip(r) => io::copy(r.get_mut(), &mut io::sink()),
            Decoder::Zstd(r) => io::copy(r.get_mut(), &mut io::sink()),
        }
    }
}

/// What the first stage produced.
pub(crate) struct Produced {
    pub diff_id: Digest,
    pub expanded: u64,
    /// True when the tar stage hung up before the end (its own error is the one to report).
    pub aborted: bool,
}

fn read_error(layer: &str, e: io::Error) -> Error {
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

/// Decompresses `reader`, hashes the uncompressed stream and sends it in chunks. `layer` names the layer in
/// errors (its digest). Returns after EOF of both the decompressed and the compressed streams.
#[allow(clippy::too_many_arguments)]
pub(crate) fn produce<R: Read>(
    reader: R,
    compression: Compression,
    expected_diff_id: &Digest,
    layer: &str,
    limits: &Limits,
    cancel: Option<&AtomicBool>,
    tx: SyncSender<Vec<u8>>,
    free: Receiver<Vec<u8>>,
) -> Result<Produced, Error> {
    let algorithm = expected_diff_id.algorithm().map_err(|source| Error::Digest { layer: layer.to_owned(), source })?;
    let mut dec = match compression {
        Compression::None => Decoder::Plain(reader),
        Compression::Gzip => Decoder::Gzip(Box::new(flate2::read::MultiGzDecoder::new(reader))),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(reader)
                .map_err(|source| Error::Decompress { layer: layer.to_owned(), source })?;
            // A frame declaring a window over the cap is refused instead of allocated (zstd window bomb).
            d.window_log_max(limits.max_zstd_window_log)
                .map_err(|source| Error::Decompress { layer: layer.to_owned(), source })?;
            Decoder::Zstd(d)
        }
    };
    let mut hasher = Hasher::new(algorithm);
    let mut expanded = 0u64;
    let mut aborted = false;
    let result: Result<(), Error> = (|| {
        loop {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(Error::Cancelled);
            }
            let mut buf = match free.try_recv() {
                Ok(b) => b,
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => Vec::with_capacity(CHUNK),
            };
            buf.resize(CHUNK, 0);
            let n = loop {
                match dec.read(&mut buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(read_error(layer, e)),
                }
            };
            if n == 0 {
                break;
            }
            expanded += n as u64;
            // layer.md F4: expanded bytes are capped (decompression bombs, CVE-2017-14992).
            if expanded > limits.max_expanded_bytes {
                return Err(Error::LimitExceeded {
                    layer: layer.to_owned(),
                    limit: "max_expanded_bytes",
                    value: expanded,
                    cap: limits.max_expanded_bytes,
                });
            }
            hasher.update(&buf[..n]);
            buf.truncate(n);
            if tx.send(buf).is_err() {
                aborted = true;
                return Ok(());
            }
        }
        // Trailing bytes after the compressed stream are drained, so they are covered by the blob digest.
        dec.drain_inner().map_err(|e| read_error(layer, e))?;
        Ok(())
    })();
    drop(tx);
    if let Err(e) = result {
        // A decompression error on tampered content is reported as the digest mismatch it really is.
        if matches!(e, Error::Decompress { .. } | Error::LimitExceeded { .. }) {
            if let Err(d) = dec.drain_inner() {
                if let Error::Digest { layer, source } = read_error(layer, d) {
                    return Err(Error::Digest { layer, source });
                }
            }
        }
        return Err(e);
    }
    if aborted {
        return Ok(Produced { diff_id: expected_diff_id.clone(), expanded, aborted });
    }
    let diff_id = hasher.finish();
    // config.md: rootfs.diff_ids[i] MUST be the digest of the uncompressed layer (F3).
    if &diff_id != expected_diff_id {
        return Err(Error::DiffIdMismatch {
            layer: layer.to_owned(),
            expected: expected_diff_id.clone(),
            actual: diff_id,
        });
    }
    Ok(Produced { diff_id, expanded, aborted })
}

/// The tar stage's view of the channel: a `BufRead` over the chunks, giving spent buffers back for reuse.
pub(crate) struct ChanReader<'a> {
    rx: Receiver<Vec<u8>>,
    free: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    cancel: Option<&'a AtomicBool>,
}

impl<'a> ChanReader<'a> {
    pub(crate) fn new(rx: Receiver<Vec<u8>>, free: SyncSender<Vec<u8>>, cancel: Option<&'a AtomicBool>) -> Self {
        ChanReader { rx, free, cur: Vec::new(), pos: 0, cancel }
    }

    /// Consumes everything left, so the first stage hashes the whole stream (bytes after the tar's end are
    /// part of the DiffID).
    pub(crate) fn drain(&mut self) {
        self.cur.clear();
        self.pos = 0;
        while let Ok(b) = self.rx.recv() {
            let _ = self.free.try_send(b);
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
        while self.pos >= self.cur.len() {
            if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
            }
            match self.rx.recv() {
                Ok(b) => {
                    let old = std::mem::replace(&mut self.cur, b);
                    self.pos = 0;
                    if old.capacity() > 0 {
                        let _ = self.free.try_send(old);
                    }
                }
                // The sender is gone: EOF (or the first stage failed; its error is reported instead).
                Err(_) => {
                    self.cur.clear();
                    self.pos = 0;
                    return Ok(&[]);
                }
            }
        }
        Ok(&self.cur[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.cur.len());
    }
}
