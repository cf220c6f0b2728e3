//! A registry blob as a [`std::io::Read`], for the store's verified `put_blob`.
//!
//! May use: `cancel`.

use bytes::Bytes;
use tokio_stream::{Stream, StreamExt};

use super::{Error, Remote};
use crate::cancel::Cancel;
use crate::store::Descriptor;

/// A blob as a [`std::io::Read`]: the request is sent on the first read (so a blob the store has costs no
/// request), each read waits for the next chunk on the remote's runtime. A failure of the request is kept in
/// `failure`, typed, for [`Remote::blob`] to return instead of the store's I/O error.
pub(super) struct BlobRead<'a> {
    remote: &'a Remote,
    desc: &'a Descriptor,
    cancel: &'a Cancel,
    stream: Option<std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>>,
    chunk: Bytes,
    received: u64,
    pub(super) failure: Option<Error>,
}

impl<'a> BlobRead<'a> {
    pub(super) fn new(remote: &'a Remote, desc: &'a Descriptor, cancel: &'a Cancel) -> BlobRead<'a> {
        BlobRead { remote, desc, cancel, stream: None, chunk: Bytes::new(), received: 0, failure: None }
    }

    fn fail(&mut self, e: Error) -> std::io::Error {
        let io = std::io::Error::other(e.to_string());
        self.failure = Some(e);
        io
    }
}

impl std::io::Read for BlobRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let remote = self.remote;
        let what = format!("blob {}", self.desc.digest);
        if self.stream.is_none() {
            let target = remote.reference.at(&self.desc.digest);
            let digest = self.desc.digest.to_string();
            let fetch = remote.client.pull_blob_stream(&target, digest.as_str());
            let got = match remote.wait(fetch, self.cancel) {
                None => return Err(self.fail(remote.cancelled(self.cancel))),
                Some(r) => r,
            };
            match got {
                Ok(s) => self.stream = Some(s.stream),
                Err(e) => return Err(self.fail(remote.error(&what, e))),
            }
        }
        while self.chunk.is_empty() {
            let Some(stream) = self.stream.as_mut() else { return Ok(0) };
            let next = match remote.wait(stream.next(), self.cancel) {
                None => return Err(self.fail(remote.cancelled(self.cancel))),
                Some(n) => n,
            };
            match next {
                None => return Ok(0),
                Some(Ok(b)) => {
                    self.received += b.len() as u64;
                    self.chunk = b;
                }
                // The client checks the digest too, and says so at the end of the stream: the store's own
                // check (with its typed error) sees the same bytes end here.
                Some(Err(e)) if e.get_ref().is_some_and(|i| i.is::<oci_client::errors::DigestError>()) => {
                    self.stream = None;
                    return Ok(0);
                }
                Some(Err(e)) => {
                    let err = match e.get_ref().and_then(|i| i.downcast_ref::<reqwest::Error>()) {
                        Some(r) => remote.request_error(r),
                        None => Error::Unreachable {
                            registry: remote.reference.registry().to_owned(),
                            detail: format!("{what}: {e}"),
                        },
                    };
                    return Err(self.fail(err));
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}
