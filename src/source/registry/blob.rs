//! A registry blob as a [`std::io::Read`] (and [`crate::store::Resumable`]), for the store's verified
//! `put_blob_resuming`, that survives a cut. The requests are kiln's own (`Hosts::pull_blob`: the client's
//! authorization, an error answer read no further than 4 KiB), each asking for a range (`bytes=0-` first); the
//! bytes are hashed once, by the store. When a
//! response fails part way (a reset, a close before its end) or a request is answered 429/5xx, the next
//! request asks for the rest with `Range: bytes=N-`, N being the bytes already handed to the store (which has
//! written them to its ingest file); a 206 continues the file, and the store's digest still covers the whole.
//! A registry that ignores the range answers 200 with the whole blob: its first N bytes are dropped, as the
//! ones already written, and the digest over the whole file decides whether the two responses agreed. Waits
//! between requests follow `transfer.rs`'s policy. A stall (no bytes for the read timeout) ends the blob at
//! once, with [`Error::Stalled`].
//!
//! May use: `cancel`.

use bytes::Bytes;
use oci_client::errors::OciDistributionError;
use tokio_stream::StreamExt;

use super::transfer::{backoff, retryable, MAX_ATTEMPTS, MAX_REQUESTS};
use super::{Error, Remote};
use crate::cancel::Cancel;
use crate::store::Descriptor;

type ByteStream = super::hosts::BlobBody;

/// A blob as a [`std::io::Read`]: the request is sent on the first read (so a blob the store has costs no
/// request), each read waits for the next chunk on the remote's runtime. A failure of the request is kept in
/// `failure`, typed, for [`Remote::blob`] to return instead of the store's I/O error.
pub(super) struct BlobRead<'a> {
    remote: &'a Remote,
    desc: &'a Descriptor,
    cancel: &'a Cancel,
    stream: Option<ByteStream>,
    chunk: Bytes,
    /// Bytes handed to the store so far: where a resumed request starts.
    received: u64,
    /// Bytes still to drop from a whole (200) answer to a ranged request.
    skip: u64,
    /// Requests sent, and failures since the last byte arrived.
    requests: u32,
    failures: u32,
    /// Whether the stream reached its end (or the client's digest verdict).
    ended: bool,
    pub(super) failure: Option<Error>,
}

/// Why a request or a read failed: worth another request, or not.
enum Failed {
    Retry(Error),
    Fatal(Error),
}

impl<'a> BlobRead<'a> {
    pub(super) fn new(remote: &'a Remote, desc: &'a Descriptor, cancel: &'a Cancel) -> BlobRead<'a> {
        BlobRead {
            remote,
            desc,
            cancel,
            stream: None,
            chunk: Bytes::new(),
            received: 0,
            skip: 0,
            requests: 0,
            failures: 0,
            ended: false,
            failure: None,
        }
    }

    fn fail(&mut self, e: Error) -> std::io::Error {
        let io = std::io::Error::other(e.to_string());
        self.failure = Some(e);
        io
    }

    fn what(&self) -> String {
        format!("blob {}", self.desc.digest)
    }

    fn stalled(&self) -> Error {
        Error::Stalled {
            registry: self.remote.reference.registry().to_owned(),
            reference: self.remote.reference.full(),
            what: self.what(),
            secs: self.remote.read_timeout.as_secs(),
        }
    }

    /// A failed read of the body: a timeout is a stall; anything else (a reset, a close before the end) is a
    /// cut, worth resuming.
    fn body_error(&self, e: &std::io::Error) -> Failed {
        let r = e.get_ref().and_then(|i| i.downcast_ref::<reqwest::Error>());
        if r.is_some_and(|r| r.is_timeout()) {
            return Failed::Fatal(self.stalled());
        }
        let detail = match r {
            Some(r) => crate::error::report(r),
            None => e.to_string(),
        };
        Failed::Retry(Error::Unreachable {
            registry: self.remote.reference.registry().to_owned(),
            detail: format!("{}: cut after {} bytes: {detail}", self.what(), self.received),
        })
    }

    /// Sends the request for the bytes from `received` on.
    fn open(&mut self) -> Result<ByteStream, Failed> {
        let remote = self.remote;
        let target = remote.reference.at(&self.desc.digest);
        let digest = self.desc.digest.to_string();
        let what = self.what();
        self.requests += 1;
        let classify = |e: OciDistributionError| match e {
            OciDistributionError::RequestError(r) if r.is_timeout() && !r.is_connect() => Failed::Fatal(self.stalled()),
            e => {
                let e = remote.error(&what, e);
                if retryable(&e) {
                    Failed::Retry(e)
                } else {
                    Failed::Fatal(e)
                }
            }
        };
        let cancelled = || Failed::Fatal(remote.cancelled(self.cancel));
        let fetch = remote.client.pull_blob(&target, digest.as_str(), self.received);
        let (body, whole) = remote.wait(fetch, self.cancel).ok_or_else(cancelled)?.map_err(classify)?;
        if whole {
            if self.received > 0 {
                tracing::debug!(blob = %self.desc.digest, "the registry ignored Range; reading the whole again");
            }
            self.skip = self.received;
        } else if self.received > 0 {
            tracing::debug!(blob = %self.desc.digest, from = self.received, "resuming with Range");
        }
        Ok(body)
    }

    /// After a failure worth retrying: waits its backoff, or says why not to try again.
    fn before_retry(&mut self, e: Error) -> Result<(), Error> {
        self.stream = None;
        self.skip = 0;
        self.failures += 1;
        if self.failures >= MAX_ATTEMPTS || self.requests >= MAX_REQUESTS {
            return Err(Error::GaveUp {
                registry: self.remote.reference.registry().to_owned(),
                reference: self.remote.reference.full(),
                what: self.what(),
                attempts: self.requests,
                last: Box::new(e),
            });
        }
        let wait = backoff(self.failures);
        tracing::info!(blob = %self.desc.digest, error = %e, ?wait, "retrying a blob request");
        match self.remote.wait(async { tokio::time::sleep(wait).await }, self.cancel) {
            Some(()) => Ok(()),
            None => Err(self.remote.cancelled(self.cancel)),
        }
    }

    /// The next chunk of the blob, resuming across cuts; empty at its end.
    fn next_chunk(&mut self) -> Result<Bytes, Error> {
        loop {
            // Every byte is in (none is asked for: a registry answers an empty range with a 416).
            if self.ended || self.received >= self.desc.size {
                return Ok(Bytes::new());
            }
            if self.stream.is_none() {
                match self.open() {
                    Ok(s) => self.stream = Some(s),
                    Err(Failed::Fatal(e)) => return Err(e),
                    Err(Failed::Retry(e)) => {
                        self.before_retry(e)?;
                        continue;
                    }
                }
            }
            let Some(stream) = self.stream.as_mut() else { continue };
            let next =
                self.remote.wait(stream.next(), self.cancel).ok_or_else(|| self.remote.cancelled(self.cancel))?;
            match next {
                // A response that ends short of the blob's size was cut (a close without an error).
                None if self.received < self.desc.size => {
                    let e = Error::Unreachable {
                        registry: self.remote.reference.registry().to_owned(),
                        detail: format!("{}: the response ended after {} bytes", self.what(), self.received),
                    };
                    self.before_retry(e)?;
                }
                None => {
                    self.ended = true;
                }
                Some(Ok(mut b)) => {
                    let drop = self.skip.min(b.len() as u64);
                    self.skip -= drop;
                    let _ = b.split_to(drop as usize);
                    if !b.is_empty() {
                        self.failures = 0;
                        self.received += b.len() as u64;
                        crate::metrics::global().registry_bytes(b.len() as u64);
                        return Ok(b);
                    }
                }
                // The client checks the digest too, and says so at the end of the stream: the store's own
                // check (with its typed error) sees the same bytes end here.
                Some(Err(e)) if e.get_ref().is_some_and(|i| i.is::<oci_client::errors::DigestError>()) => {
                    self.ended = true;
                }
                Some(Err(e)) => match self.body_error(&e) {
                    Failed::Fatal(e) => return Err(e),
                    Failed::Retry(e) => self.before_retry(e)?,
                },
            }
        }
    }
}

impl crate::store::Resumable for BlobRead<'_> {
    /// The store has `offset` bytes of the blob (from this process or an earlier one): the next request asks
    /// for the rest.
    fn restart_at(&mut self, offset: u64) {
        self.stream = None;
        self.chunk = Bytes::new();
        self.received = offset;
        self.skip = 0;
        self.failures = 0;
        self.ended = false;
        self.failure = None;
    }
}

impl std::io::Read for BlobRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.chunk.is_empty() {
            match self.next_chunk() {
                Ok(b) => self.chunk = b,
                Err(e) => return Err(self.fail(e)),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}
