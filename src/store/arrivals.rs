//! The blobs of one pull in progress, readable while they are written: an unpack that follows a download reads
//! each layer's bytes as they land in the ingest file, instead of waiting for the whole blob, so pull + unpack
//! costs about what the unpack costs.
//!
//! A [`LayoutWriter`](super::LayoutWriter) given an [`Arrivals`] publishes every blob it writes: the ingest
//! file (a second descriptor on it, opened read-only), how many bytes are in it, and how the write ended. The
//! importer says when the documents are in ([`Arrivals::documents_written`]), so the image can be resolved
//! before its layers arrive, and the puller says when nothing more will come ([`Arrivals::close`]).
//!
//! Trust: a follower reads bytes before they are verified. Its reader reports EOF only once the writer has
//! checked the blob's size and digest and renamed it into `blobs/`; if the write fails (a digest mismatch, the
//! registry gone, a cancel), the follower's next read fails with the writer's error. What a follower builds
//! from the bytes must not be kept until its reader reached EOF: the unpacker commits a layer's snapshot only
//! after the applier read the layer to its end, and removes it on error.
//!
//! Memory: nothing is buffered here; the bytes are in the ingest file (the page cache). A blob that another
//! writer (another pull, another tool) adds to the store is found there: a follower looks in the store too,
//! every [`POLL`], until the blob is in one place or the other, or the pull is closed.
//!
//! May use: `digest`, `error`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::{Descriptor, Error, Result, Store};
use crate::digest::Digest;
use crate::error::ErrorKind;

/// How often a waiting follower looks in the store for a blob written by someone else.
const POLL: Duration = Duration::from_millis(100);

/// See the module documentation. Shared (`Arc`) by the writer, the importer and the followers of one pull.
#[derive(Default)]
pub struct Arrivals {
    state: Mutex<State>,
    cv: Condvar,
}

impl std::fmt::Debug for Arrivals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("Arrivals").field("blobs", &st.blobs.len()).field("closed", &st.closed).finish()
    }
}

#[derive(Default)]
struct State {
    blobs: HashMap<Digest, Arc<Growing>>,
    top: Option<Descriptor>,
    /// Why nothing more will arrive (the pull ended: its error, or "the pull is complete").
    closed: Option<String>,
}

/// One blob being written.
struct Growing {
    /// Dropped once the blob is in the store (a finished pull holds no descriptor per blob); followers hold
    /// their own.
    file: Mutex<Option<Arc<File>>>,
    state: Mutex<Grown>,
    cv: Condvar,
    /// The furthest a follower has read (for progress).
    read: AtomicU64,
}

/// How far one blob of a pull is: see [`Arrivals::status`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// Bytes in the ingest file (all of them once it is in the store).
    pub written: u64,
    /// The furthest a follower has read.
    pub read: u64,
}

#[derive(Default)]
struct Grown {
    written: u64,
    /// `Ok`: verified and in `blobs/`; `Err`: why the write failed.
    done: Option<std::result::Result<(), (ErrorKind, String)>>,
}

impl Growing {
    fn lock(&self) -> MutexGuard<'_, Grown> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer's handle on one blob it publishes; dropping it without [`Publishing::end`] reports a failure
/// (the write returned early), so a follower never waits for bytes that will not come.
pub(super) struct Publishing {
    growing: Arc<Growing>,
    ended: bool,
}

impl Publishing {
    /// `total` bytes are in the file now.
    pub(super) fn wrote(&self, total: u64) {
        self.growing.lock().written = total;
        self.growing.cv.notify_all();
    }

    /// The write ended: `Ok` once the blob is verified and renamed into `blobs/`.
    pub(super) fn end(mut self, r: std::result::Result<(), &Error>) {
        self.finish(r.map_err(|e| (e.kind(), crate::error::report(e))));
    }

    fn finish(&mut self, r: std::result::Result<(), (ErrorKind, String)>) {
        self.ended = true;
        let mut g = self.growing.lock();
        if g.done.is_none() {
            g.done = Some(r);
        }
        let complete = matches!(g.done, Some(Ok(())));
        drop(g);
        if complete {
            *self.growing.file.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        self.growing.cv.notify_all();
    }
}

impl Drop for Publishing {
    fn drop(&mut self) {
        if !self.ended {
            self.finish(Err((ErrorKind::Internal, "the write stopped before its end".into())));
        }
    }
}

impl Arrivals {
    pub fn new() -> Arc<Arrivals> {
        Arc::new(Arrivals::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer starts blob `digest` in the ingest file `file` (opened for reading).
    pub(super) fn begin(&self, digest: &Digest, file: File) -> Publishing {
        let growing = Arc::new(Growing {
            file: Mutex::new(Some(Arc::new(file))),
            state: Mutex::new(Grown::default()),
            cv: Condvar::new(),
            read: AtomicU64::new(0),
        });
        // A later write of the same digest (after a failed one) replaces it; followers of the failed one keep
        // theirs and see its error.
        self.lock().blobs.insert(digest.clone(), growing.clone());
        self.cv.notify_all();
        Publishing { growing, ended: false }
    }

    /// The documents of the image are in the store (not yet named by `index.json`): `top` is the manifest or
    /// index the pull will name.
    pub fn documents_written(&self, top: &Descriptor) {
        self.lock().top = Some(top.clone());
        self.cv.notify_all();
    }

    /// Nothing more will arrive: `why` is the pull's end (its error, or that it is complete). Followers still
    /// waiting for a blob fail with it.
    pub fn close(&self, why: &str) {
        let mut st = self.lock();
        if st.closed.is_none() {
            st.closed = Some(why.to_owned());
        }
        drop(st);
        self.cv.notify_all();
    }

    /// How far blob `digest` is, when this pull writes it (`None`: not started, or not this pull's to write).
    pub fn status(&self, digest: &Digest) -> Option<Status> {
        let g = self.lock().blobs.get(digest)?.clone();
        let read = g.read.load(Ordering::Relaxed);
        let st = g.lock();
        Some(Status { written: st.written, read })
    }

    /// Waits for [`documents_written`](Self::documents_written); `None` when the pull closed first.
    pub fn wait_documents(&self) -> Option<Descriptor> {
        let mut st = self.lock();
        loop {
            if let Some(top) = &st.top {
                return Some(top.clone());
            }
            if st.closed.is_some() {
                return None;
            }
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A reader of blob `desc`: from the store when it is there, else following its write as it lands (waiting
    /// for the write to start). Like [`Store::open_blob`]'s, the reader fails at EOF unless the blob is whole
    /// and verified. Fails at once when the pull closed without the blob. The reader calls `on_wait(true)`
    /// when it starts waiting for bytes that have not arrived and `on_wait(false)` before it goes on (or
    /// returns), in pairs.
    pub fn open<'a>(
        self: &Arc<Self>,
        store: &Store,
        desc: &Descriptor,
        on_wait: Box<dyn Fn(bool) + Send + Sync + 'a>,
    ) -> Result<Box<dyn Read + Send + 'a>> {
        let mut st = self.lock();
        loop {
            // A blob whose write is complete is read from the store.
            let writing = st.blobs.get(&desc.digest).and_then(|g| Some((g.clone(), g.file.lock().ok()?.clone()?)));
            if let Some((growing, file)) = writing {
                return Ok(Box::new(Follow {
                    growing,
                    file,
                    pos: 0,
                    size: desc.size,
                    digest: desc.digest.clone(),
                    on_wait,
                    waiting: false,
                }));
            }
            match store.open_blob(desc) {
                Ok(r) => return Ok(Box::new(r)),
                Err(Error::BlobNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            if let Some(why) = &st.closed {
                return Err(Error::NotArrived { digest: desc.digest.clone(), why: why.clone() });
            }
            st = self.cv.wait_timeout(st, POLL).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// A follower's reader; see [`Arrivals::open`].
struct Follow<'a> {
    growing: Arc<Growing>,
    file: Arc<File>,
    pos: u64,
    size: u64,
    digest: Digest,
    on_wait: Box<dyn Fn(bool) + Send + Sync + 'a>,
    /// Between `on_wait(true)` and `on_wait(false)`.
    waiting: bool,
}

impl Follow<'_> {
    fn go_on(&mut self) {
        if std::mem::take(&mut self.waiting) {
            (self.on_wait)(false);
        }
    }
}

impl Drop for Follow<'_> {
    fn drop(&mut self) {
        self.go_on();
    }
}

impl Read for Follow<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let r = self.read_inner(buf);
        // Whatever the outcome, the reader's caller goes on now (outside the lock: going on may wait).
        self.go_on();
        r
    }
}

impl Follow<'_> {
    fn read_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let growing = self.growing.clone();
        let mut g = growing.lock();
        loop {
            if self.pos < g.written {
                let n = (g.written - self.pos).min(buf.len() as u64) as usize;
                drop(g);
                let got = self.file.read_at(&mut buf[..n], self.pos)?;
                if got == 0 {
                    return Err(io::Error::other(format!(
                        "blob {}: the ingest file is shorter than written",
                        self.digest
                    )));
                }
                self.pos += got as u64;
                self.growing.read.fetch_max(self.pos, Ordering::Relaxed);
                return Ok(got);
            }
            match &g.done {
                // Verified by the writer: every byte of it was read here, exactly the declared size.
                Some(Ok(())) if self.pos == self.size => return Ok(0),
                Some(Ok(())) => {
                    return Err(io::Error::other(format!(
                        "blob {}: {} bytes written, {} declared",
                        self.digest, self.pos, self.size
                    )))
                }
                Some(Err((kind, why))) => {
                    let message = format!("blob {}: its download failed: {why}", self.digest);
                    return Err(io::Error::other(crate::error::SourceFailed { kind: *kind, message }));
                }
                None if !self.waiting => {
                    // Told outside the lock (the listener may block), then looked at again.
                    drop(g);
                    self.waiting = true;
                    (self.on_wait)(true);
                    g = growing.lock();
                }
                None => g = growing.cv.wait(g).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::store::{init_layout, LayoutWriter};

    /// A reader that hands out `data` in pieces, each only once the test sends a go-ahead.
    struct Gated {
        data: Vec<u8>,
        pos: usize,
        piece: usize,
        go: mpsc::Receiver<()>,
    }

    impl Read for Gated {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos >= self.data.len() {
                return Ok(0);
            }
            if self.go.recv().is_err() {
                return Err(io::Error::other("the test hung up"));
            }
            let n = self.piece.min(buf.len()).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn setup() -> (tempfile::TempDir, Arc<Arrivals>, LayoutWriter) {
        let d = tempfile::tempdir().unwrap();
        init_layout(d.path()).unwrap();
        let a = Arrivals::new();
        let w = LayoutWriter::open(d.path()).unwrap().with_arrivals(a.clone());
        (d, a, w)
    }

    #[test]
    fn a_follower_reads_the_bytes_as_they_land_and_ends_only_once_the_blob_is_verified() {
        let (_d, arrivals, writer) = setup();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let desc = Descriptor::new("application/octet-stream", Digest::sha256(&data), data.len() as u64);
        let (go, rx) = mpsc::channel();
        let gated = Gated { data: data.clone(), pos: 0, piece: 100_000, go: rx };
        std::thread::scope(|s| {
            let w = s.spawn(|| writer.put_blob(&desc.digest, desc.size, gated));
            go.send(()).unwrap();
            let mut r = arrivals.open(writer.store(), &desc, Box::new(|_| {})).unwrap();
            let mut first = vec![0u8; 100_000];
            r.read_exact(&mut first).unwrap();
            assert_eq!(first, data[..100_000], "the first piece, before the rest was even read");
            assert!(!crate::sys::host::exists(&writer.store().blob_path(&desc.digest)), "not in blobs/ yet");
            go.send(()).unwrap();
            go.send(()).unwrap();
            // The reader's EOF needs the writer's verdict, which needs the source's EOF.
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, data[100_000..]);
            assert_eq!(w.join().unwrap().unwrap(), data.len() as u64);
        });
        assert!(crate::sys::host::exists(&writer.store().blob_path(&desc.digest)));
        // Once in the store, a follower reads it from there.
        let mut again = Vec::new();
        arrivals.open(writer.store(), &desc, Box::new(|_| {})).unwrap().read_to_end(&mut again).unwrap();
        assert_eq!(again, data);
    }

    #[test]
    fn a_blob_whose_digest_does_not_match_fails_its_follower_after_the_last_byte() {
        let (_d, arrivals, writer) = setup();
        let data = vec![7u8; 50_000];
        let desc = Descriptor::new("application/octet-stream", Digest::sha256(b"something else"), data.len() as u64);
        let (go, rx) = mpsc::channel();
        let gated = Gated { data: data.clone(), pos: 0, piece: 50_000, go: rx };
        std::thread::scope(|s| {
            let w = s.spawn(|| writer.put_blob(&desc.digest, desc.size, gated));
            go.send(()).unwrap();
            let mut r = arrivals.open(writer.store(), &desc, Box::new(|_| {})).unwrap();
            let mut got = Vec::new();
            let e = r.read_to_end(&mut got).unwrap_err();
            assert!(e.to_string().contains(desc.digest.as_str()) && e.to_string().contains("download failed"), "{e}");
            assert_eq!(got, data, "every byte was handed on, and still no EOF");
            assert!(w.join().unwrap().is_err());
        });
        assert!(!crate::sys::host::exists(&writer.store().blob_path(&desc.digest)));
    }

    #[test]
    fn a_follower_waits_for_a_write_to_start_and_fails_once_the_pull_is_closed_without_it() {
        let (_d, arrivals, writer) = setup();
        let data = b"late blob".to_vec();
        let desc = Descriptor::new("application/octet-stream", Digest::sha256(&data), data.len() as u64);
        std::thread::scope(|s| {
            let f = s.spawn(|| {
                let mut out = Vec::new();
                arrivals.open(writer.store(), &desc, Box::new(|_| {})).unwrap().read_to_end(&mut out).unwrap();
                out
            });
            std::thread::sleep(Duration::from_millis(150));
            writer.put_blob(&desc.digest, desc.size, &data[..]).unwrap();
            assert_eq!(f.join().unwrap(), data);
        });
        let never = Descriptor::new("application/octet-stream", Digest::sha256(b"never"), 5);
        std::thread::scope(|s| {
            let f = s.spawn(|| arrivals.open(writer.store(), &never, Box::new(|_| {})).map(|_| ()));
            std::thread::sleep(Duration::from_millis(50));
            arrivals.close("registry r.example: gone");
            let e = f.join().unwrap().unwrap_err();
            assert!(matches!(e, Error::NotArrived { .. }) && e.to_string().contains("r.example: gone"), "{e}");
            assert_eq!(e.kind(), ErrorKind::Unavailable);
        });
        assert_eq!(arrivals.wait_documents(), None, "closed before any documents");
    }
}
