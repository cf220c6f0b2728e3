//! The hosts one pull may read from: the reference's registry's mirrors (`registry.hosts."H".mirrors`), in
//! order, then the registry itself, each with its own client — its protocol (plain HTTP only for hosts set
//! `insecure`, and for loopback ones that have no `ca_file`: configuring a CA says the host speaks TLS), its
//! extra trusted CAs (`ca_file`, added to the system's roots for that host alone, which is why each host has
//! its own client rather than one client trusting every configured CA), and its credentials from the auth
//! file (a mirror's by the mirror's name), or for the registry itself the request's when it carried some
//! ([`RegistrySettings::request_credentials`]: a caller's secret goes to the host the caller named, never to a
//! mirror the daemon's configuration adds). `Remote::document` picks the first host that serves the top
//! manifest ([`Hosts::choose`]); every later request of the pull (children, blobs) goes to that one, as
//! Docker's mirrors do (a mirror that has the manifest but not a blob fails the pull rather than mixing
//! hosts mid-image).
//!
//! A mirror is asked with the upstream's repository path (`/v2/REPO/…`, plus distribution's `?ns=UPSTREAM`),
//! through `oci-client`'s mirror support ([`Parsed::set_mirror_registry`]), so its tokens are scoped and
//! cached per mirror and repository, and redirects keep credentials only on the host they were for.
//!
//! May use: `sys` (reading CA files), `error`.

use std::path::Path;

use base64::Engine as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use oci_spec::distribution::Reference as Parsed;

use super::auth::{self, Credentials};
use super::reference::{self, RegistryRef};
use super::{Error, RegistrySettings, Result};
use crate::sys;

/// One host a pull may read from.
pub(super) struct Endpoint {
    /// `host[:port]`, as configured (the registry's own name for the registry itself).
    pub(super) host: String,
    /// A mirror of the reference's registry (not the registry itself).
    pub(super) mirror: bool,
    pub(super) client: oci_client::Client,
    pub(super) credentials: Credentials,
    /// For manifest requests, which kiln sends itself to cap the body it reads (`oci-client` reads a
    /// manifest response whole): built as `client`'s own (the same roots, `ca_file`, timeouts, user agent).
    http: reqwest::Client,
    plain: bool,
    /// The `Authorization` value for this pull's repository once learnt (`Some(None)`: none is needed).
    authorization: tokio::sync::Mutex<Option<Option<String>>>,
}

/// A registry's error answer to `url` as the client's error, with what the registry says read no further than
/// 4 KiB (its body is untrusted and may not end).
async fn error_answer(mut res: reqwest::Response, url: String) -> OciDistributionError {
    let code = res.status().as_u16();
    let mut message = Vec::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        message.extend_from_slice(&chunk);
        if message.len() >= 4096 {
            message.truncate(4096);
            break;
        }
    }
    match code {
        401 => OciDistributionError::UnauthorizedError { url },
        code => {
            OciDistributionError::ServerError { code, url, message: String::from_utf8_lossy(&message).into_owned() }
        }
    }
}

/// A blob response's body, as it arrives.
pub(super) type BlobBody = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = std::io::Result<bytes::Bytes>> + Send>>;

/// A manifest request that failed: as the client's own failures, or a body over the cap.
pub(super) enum ManifestFailure {
    Client(OciDistributionError),
    /// The registry announced or sent this many bytes (at least), over the cap.
    TooLarge(u64),
}

impl From<OciDistributionError> for ManifestFailure {
    fn from(e: OciDistributionError) -> Self {
        ManifestFailure::Client(e)
    }
}

impl From<reqwest::Error> for ManifestFailure {
    fn from(e: reqwest::Error) -> Self {
        ManifestFailure::Client(OciDistributionError::RequestError(e))
    }
}

/// The mirrors, then the registry; the one chosen serves the rest of the pull.
pub(super) struct Hosts {
    list: Vec<Endpoint>,
    /// Index into `list` of the host requests go to (atomic so that a [`super::Remote`] stays `Sync`).
    chosen: AtomicUsize,
}

impl std::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<(&str, &Credentials)> = self.list.iter().map(|e| (e.host.as_str(), &e.credentials)).collect();
        f.debug_struct("Hosts").field("hosts", &hosts).field("chosen", &self.chosen).finish()
    }
}

/// The certificates of the PEM file `path` (one or more `BEGIN CERTIFICATE` blocks), for `host`.
fn ca_certificates(host: &str, path: &Path) -> Result<Vec<Certificate>> {
    let bad = |reason: String| Error::CaFile { registry: host.to_owned(), path: path.to_path_buf(), reason };
    let bytes = sys::host::read(path).map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| bad("not a PEM file (not UTF-8)".into()))?;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut certs = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let end = after.find(END).ok_or_else(|| bad("a certificate has no END line".into()))? + END.len();
        // Each block alone: the client parses one certificate per entry, and only when it is built, so the
        // body is checked here to name the file: base64 of a DER SEQUENCE.
        let pem = &after[..end];
        let body: String = pem[BEGIN.len()..pem.len() - END.len()].split_whitespace().collect();
        let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap_or_default();
        if der.first() != Some(&0x30) {
            return Err(bad(format!("certificate {} does not parse", certs.len() + 1)));
        }
        certs.push(Certificate { encoding: CertificateEncoding::Pem, data: pem.as_bytes().to_vec() });
        rest = &after[end..];
    }
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(certs)
}

impl Hosts {
    /// A client per host (nothing is sent yet).
    pub(super) fn build(reference: &RegistryRef, settings: &RegistrySettings) -> Result<Hosts> {
        let upstream = reference.registry();
        let mirrors = settings.mirrors.get(upstream).map(Vec::as_slice).unwrap_or_default();
        let mut list = Vec::new();
        for (host, mirror) in mirrors.iter().map(|m| (m.as_str(), true)).chain([(upstream, false)]) {
            let ca_file = settings.ca_files.get(host);
            let plain =
                settings.insecure.iter().any(|h| h == host) || (reference::is_loopback(host) && ca_file.is_none());
            let extra_root_certificates = match ca_file {
                Some(path) => ca_certificates(host, path)?,
                None => vec![],
            };
            let config = ClientConfig {
                protocol: if plain { ClientProtocol::Http } else { ClientProtocol::Https },
                extra_root_certificates,
                connect_timeout: Some(settings.connect_timeout),
                read_timeout: Some(settings.read_timeout),
                user_agent: concat!("kiln/", env!("CARGO_PKG_VERSION")),
                ..Default::default()
            };
            let http = {
                let mut b = reqwest::Client::builder()
                    .connect_timeout(settings.connect_timeout)
                    .read_timeout(settings.read_timeout)
                    .user_agent(config.user_agent);
                let mut certs = Vec::new();
                for c in &config.extra_root_certificates {
                    let cert = reqwest::Certificate::from_pem(&c.data).map_err(|e| match ca_file {
                        Some(path) => {
                            Error::CaFile { registry: host.to_owned(), path: path.clone(), reason: e.to_string() }
                        }
                        None => Error::Client {
                            registry: host.to_owned(),
                            reference: reference.full(),
                            detail: e.to_string(),
                        },
                    })?;
                    certs.push(cert);
                }
                if !certs.is_empty() {
                    b = b.tls_certs_merge(certs);
                }
                b.build().map_err(|e| Error::Client {
                    registry: host.to_owned(),
                    reference: reference.full(),
                    detail: crate::error::report(&e),
                })?
            };
            let client = oci_client::Client::try_from(config).map_err(|e| match ca_file {
                // The certificates are parsed only now.
                Some(path) => Error::CaFile { registry: host.to_owned(), path: path.clone(), reason: e.to_string() },
                None => Error::Client { registry: host.to_owned(), reference: reference.full(), detail: e.to_string() },
            })?;
            let credentials = match (&settings.request_credentials, mirror) {
                (Some(c), false) => c.clone(),
                _ => auth::lookup(settings.auth_file.as_deref(), host)?,
            };
            list.push(Endpoint {
                host: host.to_owned(),
                mirror,
                client,
                credentials,
                http,
                plain,
                authorization: tokio::sync::Mutex::new(None),
            });
        }
        Ok(Hosts { list, chosen: AtomicUsize::new(0) })
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// Sends the requests that follow to host `i` (of [`Hosts::len`]).
    pub(super) fn choose(&self, i: usize) {
        self.chosen.store(i.min(self.list.len() - 1), Ordering::Relaxed);
    }

    /// The host requests go to.
    pub(super) fn current(&self) -> &Endpoint {
        &self.list[self.chosen.load(Ordering::Relaxed).min(self.list.len() - 1)]
    }

    /// `target` (named by the upstream registry) as the current host is asked for it.
    fn aim(&self, target: &Parsed) -> Parsed {
        let e = self.current();
        let mut t = target.clone();
        if e.mirror {
            t.set_mirror_registry(e.host.clone());
        }
        t
    }

    /// GETs the manifest or index `target` names from the current host, reading at most `limit` bytes of
    /// body: a `Content-Length` over it is refused before the body is read, and a body that grows past it is
    /// dropped there. Authentication is the client's (its challenge handling, its token cache, which the blob
    /// requests that follow then use); the request and the reading of the body are kiln's.
    pub(super) async fn pull_manifest(
        &self,
        target: &Parsed,
        accept: &[&str],
        limit: u64,
    ) -> std::result::Result<bytes::Bytes, ManifestFailure> {
        let e = self.current();
        let aimed = self.aim(target);
        let authorization = Self::authorization(e, &aimed, false).await?;
        let registry = aimed.resolve_registry();
        let what = aimed.digest().or(aimed.tag()).unwrap_or("latest");
        let ns = aimed.namespace().map(|n| format!("?ns={n}")).unwrap_or_default();
        let scheme = if e.plain { "http" } else { "https" };
        let url = format!("{scheme}://{registry}/v2/{}/manifests/{what}{ns}", aimed.repository());
        let mut req = e.http.get(&url).header(reqwest::header::ACCEPT, accept.join(", "));
        if let Some(a) = authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        let mut res = req.send().await?;
        let status = res.status();
        if !status.is_success() {
            return Err(error_answer(res, url).await.into());
        }
        if let Some(len) = res.content_length().filter(|&l| l > limit) {
            return Err(ManifestFailure::TooLarge(len));
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(ManifestFailure::TooLarge((body.len() + chunk.len()) as u64));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.into())
    }

    /// The `Authorization` value for `aimed`'s repository on `e`: learnt once through the client (its
    /// challenge handling; its token cache, which its own requests use), or again with `fresh` (a token that
    /// expired during a long pull).
    async fn authorization(
        e: &Endpoint,
        aimed: &Parsed,
        fresh: bool,
    ) -> std::result::Result<Option<String>, OciDistributionError> {
        let mut known = e.authorization.lock().await;
        if let (Some(a), false) = (known.as_ref(), fresh) {
            return Ok(a.clone());
        }
        let token = e.client.auth(aimed, &e.credentials.auth, RegistryOperation::Pull).await?;
        let a = match (token, &e.credentials.auth) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Basic(user, password)) => {
                let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(format!("Basic {pair}"))
            }
            (None, _) => None,
        };
        *known = Some(a.clone());
        Ok(a)
    }

    /// GETs blob `digest` of `target`'s repository from the current host, from byte `offset` on (always with
    /// `Range`, `bytes=0-` first); returns the body and whether it is the whole blob (a registry that ignores
    /// the range answers 200). The body is not hashed here: the store hashes every blob. An error answer's
    /// body is read no further than 4 KiB; a 401 (a token that expired during a long pull) is answered once
    /// with a fresh token. Redirects (to blob storage) are followed, credentials dropped across hosts.
    pub(super) async fn pull_blob(
        &self,
        target: &Parsed,
        digest: &str,
        offset: u64,
    ) -> std::result::Result<(BlobBody, bool), OciDistributionError> {
        let e = self.current();
        let aimed = self.aim(target);
        let ns = aimed.namespace().map(|n| format!("?ns={n}")).unwrap_or_default();
        let scheme = if e.plain { "http" } else { "https" };
        let url = format!("{scheme}://{}/v2/{}/blobs/{digest}{ns}", aimed.resolve_registry(), aimed.repository());
        let mut fresh = false;
        loop {
            let mut req = e.http.get(&url).header(reqwest::header::RANGE, format!("bytes={offset}-"));
            if let Some(a) = Self::authorization(e, &aimed, fresh).await? {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            let res = req.send().await?;
            let status = res.status().as_u16();
            match status {
                200 | 206 => {
                    let body = tokio_stream::StreamExt::map(res.bytes_stream(), |r| r.map_err(std::io::Error::other));
                    return Ok((Box::pin(body), status == 200));
                }
                401 if !fresh => fresh = true,
                _ => return Err(error_answer(res, url).await),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixture files are written by path
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn mirrors_come_first_in_order_each_with_its_own_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let auth = dir.path().join("auth.json");
        std::fs::write(&auth, r#"{"auths": {"m1.local:5000": {"username": "u", "password": "p"}}}"#).unwrap();
        let reference = RegistryRef::parse("r.example/app:v1").unwrap();
        let mirrors = vec!["m1.local:5000".to_owned(), "127.0.0.1:5001".to_owned()];
        let settings = RegistrySettings {
            auth_file: Some(auth),
            mirrors: [("r.example".to_owned(), mirrors)].into_iter().collect(),
            ..Default::default()
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let hosts = Hosts::build(&reference, &settings).unwrap();
        let names: Vec<(&str, bool)> = hosts.list.iter().map(|e| (e.host.as_str(), e.mirror)).collect();
        assert_eq!(names, [("m1.local:5000", true), ("127.0.0.1:5001", true), ("r.example", false)]);
        assert!(
            hosts.list[0].credentials.origin.contains("auths.\"m1.local:5000\""),
            "{:?}",
            hosts.list[0].credentials
        );
        assert!(hosts.list[2].credentials.origin.contains("no entry for r.example"));
        assert_eq!(hosts.current().host, "m1.local:5000");
        hosts.choose(1);
        assert_eq!(hosts.aim(reference.parsed()).resolve_registry(), "127.0.0.1:5001");
        hosts.choose(2);
        assert_eq!(hosts.aim(reference.parsed()).resolve_registry(), "r.example");
        // Another registry has no mirrors.
        let other = Hosts::build(&RegistryRef::parse("o.example/app").unwrap(), &settings).unwrap();
        assert_eq!(other.len(), 1);
    }

    #[test]
    fn request_credentials_replace_the_auth_files_for_the_registry_alone() {
        let dir = tempfile::tempdir().unwrap();
        let auth = dir.path().join("auth.json");
        let text = r#"{"auths": {"m1.local:5000": {"username": "u", "password": "p"}, "r.example": {"username": "f", "password": "p"}}}"#;
        std::fs::write(&auth, text).unwrap();
        let settings = RegistrySettings {
            auth_file: Some(auth),
            request_credentials: Some(Credentials::from_request("alice", "pw-s3cret-9")),
            mirrors: [("r.example".to_owned(), vec!["m1.local:5000".to_owned()])].into_iter().collect(),
            ..Default::default()
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let hosts = Hosts::build(&RegistryRef::parse("r.example/app:v1").unwrap(), &settings).unwrap();
        assert!(hosts.list[0].credentials.origin.contains("auths.\"m1.local:5000\""), "{hosts:?}");
        assert_eq!(hosts.list[1].credentials.origin, "the request's credentials (user \"alice\")");
        assert!(!format!("{hosts:?}").contains("s3cret"), "{hosts:?}");
    }

    #[test]
    fn a_ca_file_must_hold_certificates_and_errors_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        for (text, reason) in [
            ("", "holds no PEM certificate"),
            ("-----BEGIN CERTIFICATE-----\nAAAA\n", "has no END line"),
            ("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n", "does not parse"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = ca_certificates("h:1", &path).unwrap_err();
            assert!(e.to_string().contains(reason) && e.to_string().contains("ca.pem"), "{e}");
            assert!(e.to_string().contains("registry.hosts.\"h:1\".ca_file"), "{e}");
            assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        }
        let e = ca_certificates("h:1", &dir.path().join("absent.pem")).unwrap_err();
        assert!(e.to_string().contains("absent.pem"), "{e}");
    }

    #[test]
    fn when_every_host_fails_the_kind_is_the_registrys() {
        let unreachable = Error::Unreachable { registry: "m".into(), detail: "refused".into() };
        let not_found = Error::NotFound {
            registry: "r".into(),
            reference: "r/a:v1".into(),
            what: "manifest".into(),
            detail: "".into(),
        };
        let e =
            Error::EveryHost { registry: "r".into(), reference: "r/a:v1".into(), tried: vec![unreachable, not_found] };
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let text = e.to_string();
        assert!(text.contains("1) registry m: cannot reach it") && text.contains("; 2) registry r: r/a:v1"), "{text}");
    }
}
