//! `connect(address)`: a tonic channel to kilnd over its Unix socket, for the CLI and tests.
//!
//! May use: `api`, `config`.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::error::ErrorKind;

/// Errors connecting to kilnd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Address(#[from] crate::config::Error),
    #[error("connecting to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Address(_) => ErrorKind::InvalidArgument,
            Error::Connect { .. } => ErrorKind::FailedPrecondition,
        }
    }
}

/// Connects to kilnd at `address` (`unix:///path` or `/path`).
pub async fn connect(address: &str) -> Result<Channel, Error> {
    let path = crate::config::socket_path(address)?;
    let target = path.clone();
    // The URI is required by tonic but unused: every connection goes to the socket.
    Endpoint::from_static("http://kilnd.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let target = target.clone();
            async move { tokio::net::UnixStream::connect(target).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|source| Error::Connect { path, source })
}
