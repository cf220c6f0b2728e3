//! `kiln image pull` through a real kilnd against real registries (Debian's `docker-registry`, distribution
//! 2.8) set up the three ways this file is about:
//!
//! - **Bearer tokens**: distribution's `auth: token:` against a token issuer written here (a std-threads HTTP
//!   server on 127.0.0.1). It checks basic credentials (`alice`), grants the scopes asked for, and answers
//!   `{"token": JWT, "expires_in": 300}`. What distribution 2.8 wants of the JWT (`registry/auth/token`): RS256
//!   (or ES256…) signed, `iss` equal to the config's `issuer`, `aud` to its `service`, `exp`/`nbf` around now,
//!   and an `access` list of `{type: repository, name, actions}`; the signing key is trusted either through an
//!   `x5c` header whose chain verifies against `rootcertbundle`, or through a `kid` equal to libtrust's key ID
//!   (a base32 fingerprint of the public key) of a certificate in that bundle, or through a `jwk` header. The
//!   issuer here sends `x5c` with its self-signed certificate, which is the whole `rootcertbundle` (Go's
//!   verifier accepts a leaf that is itself a root). Key and certificate come from `openssl` at test time;
//!   signing is `ring`'s.
//! - **Mirrors**: `[registry.hosts."UPSTREAM"] mirrors = [...]`, tried in order, then the registry.
//! - **TLS with a custom CA**: a registry serving HTTPS (`http: tls:`) with a certificate from a test CA made
//!   by `openssl`; kilnd trusts it through `ca_file` (which also makes a loopback host use HTTPS).
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::daemon::{path_str, Kilnd};
use common::layer::{Compression, LayerBuilder};
use common::layout::*;
use common::registry::{self, Options, Registry};
use serde_json::{json, Value};

const SERVICE: &str = "kiln-test-registry";
const ISSUER: &str = "kiln-test-issuer";

fn ready() -> bool {
    common::require_root()
        && common::require_tool(registry::BINARY)
        && common::require_tool("skopeo")
        && common::require_tool("openssl")
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn openssl(args: &[&str]) {
    let o = Command::new("openssl").args(args).output().expect("openssl");
    assert!(o.status.success(), "openssl {args:?}: {}", common::output(&o));
}

/// A layout in `dir` with a two-layer image for this host under `v1`, layer text `text`.
/// A new RSA key at `key` and a certificate for it, signed by itself, for `subject`, at `cert` (PEM).
fn self_signed(subject: &str, key: &Path, cert: &Path) {
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        subject,
        "-keyout",
        path_str(key),
        "-out",
        path_str(cert),
    ]);
}

fn layout(dir: &Path, text: &str) {
    let a = LayerBuilder::new().dir("etc", 0o755).file("etc/which", text.as_bytes(), 0o644).layer(Compression::Gzip);
    let b = LayerBuilder::new().dir("opt", 0o755).file("opt/more", b"second layer", 0o644).layer(Compression::Gzip);
    let spec = ImageSpec::with_layers(vec![a, b]).platform("linux", host_arch(), None);
    single_image(dir, &spec, "v1");
}

fn auth_file(dir: &Path, host: &str, user_password: &str) -> PathBuf {
    let path = dir.join("auth.json");
    std::fs::write(
        &path,
        format!(r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}}}"#, common::base64(user_password.as_bytes())),
    )
    .unwrap();
    path
}

// ---- the token issuer ----

/// A token request as the issuer saw it.
#[derive(Debug, Clone)]
struct TokenRequest {
    user: Option<String>,
    scopes: Vec<String>,
    granted: bool,
}

struct TokenIssuer {
    realm: String,
    cert_pem: PathBuf,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut outb = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => outb.push(v),
                    Err(_) => outb.extend_from_slice(&b[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                outb.push(b' ');
                i += 1;
            }
            c => {
                outb.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&outb).into_owned()
}

impl TokenIssuer {
    /// Makes an RSA key and a self-signed certificate in `dir`, and serves tokens for `user:password` on a free
    /// port until the test ends (the listener thread is detached).
    fn start(dir: &Path, user: &str, password: &str) -> TokenIssuer {
        let key_pem = dir.join("issuer-key.pem");
        let cert_pem = dir.join("issuer-cert.pem");
        let key_der = dir.join("issuer-key.der");
        let cert_der = dir.join("issuer-cert.der");
        self_signed("/CN=kiln token issuer", &key_pem, &cert_pem);
        openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            path_str(&key_pem),
            "-outform",
            "DER",
            "-out",
            path_str(&key_der),
        ]);
        openssl(&["x509", "-in", path_str(&cert_pem), "-outform", "DER", "-out", path_str(&cert_der)]);
        let key = ring::signature::RsaKeyPair::from_pkcs8(&std::fs::read(&key_der).unwrap()).expect("RSA key");
        let x5c = common::base64(&std::fs::read(&cert_der).unwrap());

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let basic = format!("Basic {}", common::base64(format!("{user}:{password}").as_bytes()));
        let key = Arc::new(key);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (key, x5c, seen, basic) = (key.clone(), x5c.clone(), seen.clone(), basic.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let mut authorization = None;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = h.split_once(':') {
                            if name.eq_ignore_ascii_case("authorization") {
                                authorization = Some(value.trim().to_owned());
                            }
                        }
                    }
                    let query = target.split_once('?').map_or("", |(_, q)| q);
                    let scopes: Vec<String> = query
                        .split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .filter(|(k, _)| *k == "scope")
                        .map(|(_, v)| percent_decode(v))
                        .collect();
                    let user = authorization.as_deref().and_then(|a| a.strip_prefix("Basic ")).and_then(|c| {
                        let text = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(c).ok()?).ok()?;
                        text.split_once(':').map(|(u, _)| u.to_owned())
                    });
                    let granted = authorization.as_deref() == Some(basic.as_str());
                    seen.lock().unwrap().push(TokenRequest { user, scopes: scopes.clone(), granted });
                    let response = if granted {
                        let body = json!({"token": jwt(&key, &x5c, &scopes), "expires_in": 300}).to_string();
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: \
                             close\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        let body = r#"{"details":"bad credentials"}"#;
                        format!(
                            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                             Connection: close\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    let _ = conn.write_all(response.as_bytes());
                });
            }
        });
        TokenIssuer { realm, cert_pem, requests }
    }

    /// The registry's `auth:` section for this issuer.
    fn registry_auth(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm,
            self.cert_pem.display()
        )
    }

    fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().unwrap().clone()
    }
}

/// A JWT granting `scopes` (`repository:NAME:ACTIONS`), RS256-signed, the certificate in `x5c`.
fn jwt(key: &ring::signature::RsaKeyPair, x5c: &str, scopes: &[String]) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let access: Vec<Value> = scopes
        .iter()
        .filter_map(|s| {
            let (kind, rest) = s.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = json!({
        "iss": ISSUER, "sub": "alice", "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now - 10,
        "jti": format!("{now}-{}", scopes.len()), "access": access,
    });
    let signing_input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(&ring::signature::RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), signing_input.as_bytes(), &mut sig)
        .unwrap();
    format!("{signing_input}.{}", b64url(&sig))
}

/// A token issuer in `dir` for alice:pw, and a registry that trusts it (alice may push).
fn token_registry(dir: &Path) -> (TokenIssuer, Registry) {
    let issuer = TokenIssuer::start(dir, "alice", "pw");
    let reg = Registry::start_opts(Options {
        auth: Some(issuer.registry_auth()),
        push_credentials: Some(("alice", "pw")),
        ..Default::default()
    });
    (issuer, reg)
}

#[test]
fn a_token_protected_registry_pulls_with_the_auth_file_and_refuses_anonymous_and_wrong_credentials() {
    if !ready() {
        return;
    }
    let work = common::scratch();
    let (issuer, reg) = token_registry(work.path());
    let src = common::scratch();
    layout(src.path(), "token one");
    reg.push_with(src.path(), "v1", "private/app:v1", &[]);
    let src2 = common::scratch();
    layout(src2.path(), "token two");
    reg.push_with(src2.path(), "v1", "private/app:v2", &[]);
    let name = format!("{}/private/app:v1", reg.host);
    let pushed = issuer.requests().len();
    assert!(pushed > 0, "skopeo pushed without asking the issuer: {}", reg.log());

    // Anonymous: the registry's challenge sends kilnd to the issuer, which refuses; the pull is denied,
    // naming the registry, the reference and that no credentials were configured.
    let k = Kilnd::start(&[]);
    let o = k.kiln(&["image", "pull", &name]);
    assert!(!o.status.success(), "{}", common::output(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&reg.host) && err.contains(&name) && err.contains("anonymous"), "{err}");
    assert!(err.contains("denied"), "{err}");
    assert!(issuer.requests()[pushed..].iter().all(|r| r.user.is_none() && !r.granted), "{:?}", issuer.requests());
    drop(k);

    // With the right credentials: one token for the repository serves the whole pull (manifest, config and
    // both layers): the client's token cache.
    let dir = common::scratch();
    let file = auth_file(dir.path(), &reg.host, "alice:pw");
    let k = Kilnd::start_with_config(&format!("[registry]\nauth_file = \"{}\"\n", file.display()), &[]);
    let before = issuer.requests().len();
    let o = k.kiln(&["image", "pull", &name]);
    assert!(o.status.success(), "{}\n--- registry log:\n{}", common::output(&o), reg.log());
    let asked = &issuer.requests()[before..];
    assert_eq!(asked.len(), 1, "one token per pull: {asked:?}");
    assert!(asked[0].granted && asked[0].user.as_deref() == Some("alice"), "{asked:?}");
    assert_eq!(asked[0].scopes, ["repository:private/app:pull"], "{asked:?}");
    // A second pull (another image) asks again: tokens are not kept across pulls (a client per pull).
    let o = k.kiln(&["image", "pull", &format!("{}/private/app:v2", reg.host)]);
    assert!(o.status.success(), "{}", common::output(&o));
    assert_eq!(issuer.requests().len(), before + 2, "{:?}", issuer.requests());

    // Wrong password: the issuer refuses; the error names the registry, the reference and the auth file entry.
    std::fs::write(
        &file,
        format!(r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#, reg.host, common::base64(b"alice:wrong")),
    )
    .unwrap();
    let other = format!("{}/private/app:other", reg.host);
    let o = k.kiln(&["image", "pull", &other]);
    assert!(!o.status.success(), "{}", common::output(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&reg.host) && err.contains(&other) && err.contains(path_str(&file)), "{err}");
    assert!(err.contains("denied"), "{err}");
    assert!(issuer.requests().last().is_some_and(|r| !r.granted && r.user.as_deref() == Some("alice")));
}

/// A `host:port` on 127.0.0.1 where nothing listens (bound, then closed).
fn dead_host() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = l.local_addr().unwrap().to_string();
    drop(l);
    host
}

/// A `host:port` on 127.0.0.1 that answers every request `503 Service Unavailable` (a broken mirror).
fn unavailable_host() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let body = "down for maintenance";
            let _ = write!(
                conn,
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    host
}

#[test]
fn mirrors_are_tried_in_order_then_the_registry_and_every_failure_is_named() {
    if !ready() {
        return;
    }
    let empty = Registry::start();
    let full = Registry::start();
    let src = common::scratch();
    layout(src.path(), "mirrored");
    full.push_with(src.path(), "v1", "team/app:v1", &[]);
    // The image is named by an upstream that is down: only a mirror can serve it.
    let upstream = dead_host();
    let down = dead_host();
    let broken = unavailable_host();
    let name = format!("{upstream}/team/app:v1");
    let config = format!(
        "[registry.hosts.\"{upstream}\"]\nmirrors = [\"{down}\", \"{broken}\", \"{}\", \"{}\"]\n",
        empty.host, full.host
    );
    let k = Kilnd::start_with_config(&config, &[]);
    let o = k.kiln(&["image", "pull", &name]);
    assert!(o.status.success(), "{}", common::output(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("fetched {name}")), "{}", common::output(&o));
    // The empty mirror was asked for the manifest (and said 404); the full one served manifest and blobs.
    assert!(empty.log().contains("/v2/team/app/manifests/v1"), "{}", empty.log());
    assert!(full.log().contains("\"GET /v2/team/app/manifests/v1"), "{}", full.log());
    assert!(full.log().contains("\"GET /v2/team/app/blobs/sha256:"), "{}", full.log());
    assert!(!empty.log().contains("/blobs/"), "{}", empty.log());
    let index: Value = serde_json::from_slice(&std::fs::read(k.content().join("index.json")).unwrap()).unwrap();
    assert!(index["manifests"].as_array().unwrap().iter().any(|d| d["annotations"][REF_NAME] == name.as_str()));
    drop(k);

    // Every host fails: the error names each one, in order, with its failure; the upstream's (refused) last.
    let config = format!("[registry.hosts.\"{upstream}\"]\nmirrors = [\"{down}\", \"{broken}\", \"{}\"]\n", empty.host);
    let k = Kilnd::start_with_config(&config, &[]);
    let o = k.kiln(&["image", "pull", &name]);
    assert!(!o.status.success(), "{}", common::output(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let at = |s: &str| err.find(s).unwrap_or_else(|| panic!("{s} not in {err}"));
    assert!(at(&format!("1) registry {down}")) < at(&format!("2) registry {broken}")), "{err}");
    assert!(at(&format!("2) registry {broken}")) < at(&format!("3) registry {}", empty.host)), "{err}");
    assert!(at(&format!("3) registry {}", empty.host)) < at(&format!("4) registry {upstream}")), "{err}");
    assert!(err.contains("not found") && err.contains("cannot reach") && err.contains("HTTP 503"), "{err}");

    // A registry with mirrors that it serves itself, when the mirrors lack it.
    let config = format!("[registry.hosts.\"{}\"]\nmirrors = [\"{down}\", \"{}\"]\n", full.host, empty.host);
    let k = Kilnd::start_with_config(&config, &[]);
    let o = k.kiln(&["image", "pull", &format!("{}/team/app:v1", full.host)]);
    assert!(o.status.success(), "{}", common::output(&o));
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`: `(ca.pem, cert.pem, key.pem)`.
fn test_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let (ca_key, ca, key, csr, cert, ext) =
        (p("ca-key.pem"), p("ca.pem"), p("key.pem"), p("csr.pem"), p("cert.pem"), p("ext"));
    self_signed(&format!("/CN={name} test CA"), &ca_key, &ca);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        path_str(&key),
        "-out",
        path_str(&csr),
    ]);
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
        .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        path_str(&csr),
        "-CA",
        path_str(&ca),
        "-CAkey",
        path_str(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        path_str(&ext),
        "-out",
        path_str(&cert),
    ]);
    (ca, cert, key)
}

#[test]
fn a_tls_registry_is_trusted_through_its_ca_file_and_refused_with_another_ca() {
    if !ready() {
        return;
    }
    let work = common::scratch();
    let (ca, cert, key) = test_ca(work.path(), "good");
    let (other_ca, _, _) = test_ca(work.path(), "other");
    let reg = Registry::start_opts(Options { tls: Some((cert, key)), ..Default::default() });
    let src = common::scratch();
    layout(src.path(), "tls");
    reg.push_with(src.path(), "v1", "team/app:v1", &[]);
    let name = format!("{}/team/app:v1", reg.host);

    let with_ca = |ca: &Path| format!("[registry.hosts.\"{}\"]\nca_file = \"{}\"\n", reg.host, ca.display());
    let k = Kilnd::start_with_config(&with_ca(&ca), &[]);
    let o = k.kiln(&["image", "pull", &name]);
    assert!(o.status.success(), "{}\n--- registry log:\n{}", common::output(&o), reg.log());
    drop(k);

    // A CA that did not sign it: a TLS error naming the registry.
    let k = Kilnd::start_with_config(&with_ca(&other_ca), &[]);
    let o = k.kiln(&["image", "pull", &name]);
    assert!(!o.status.success(), "{}", common::output(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("registry {}: TLS failed", reg.host)), "{err}");
    drop(k);

    // No ca_file: a loopback registry is spoken to in plain HTTP, which a TLS one refuses; told as a TLS
    // failure whose hint names the ca_file key.
    let k = Kilnd::start(&[]);
    let o = k.kiln(&["image", "pull", &name]);
    assert!(!o.status.success(), "{}", common::output(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("registry {}: TLS failed", reg.host)) && err.contains("ca_file"), "{err}");
    drop(k);

    // A ca_file that is not a certificate: refused before anything is sent, naming the file and the key.
    let bad = work.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let k = Kilnd::start_with_config(&with_ca(&bad), &[]);
    let o = k.kiln(&["image", "pull", &name]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(path_str(&bad)) && err.contains("ca_file"), "{}", common::output(&o));
}

// ---- per-request credentials (`Images.Pull`'s `credentials`, `kiln image pull --creds`) ----

fn request_creds(user: &str, password: &str) -> Option<kiln::api::v1::RegistryCredentials> {
    Some(kiln::api::v1::RegistryCredentials {
        username: user.into(),
        password: password.into(),
        identity_token: String::new(),
    })
}

/// `Images.Pull` of `name` (no unpack) with `credentials`, to its end: the final message, or the status.
fn grpc_pull(
    k: &Kilnd,
    name: &str,
    credentials: Option<kiln::api::v1::RegistryCredentials>,
) -> Result<kiln::api::v1::PullProgress, tonic::Status> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let ch = kiln::client::connect(&k.address()).await.unwrap();
        let mut c = kiln::api::v1::images_client::ImagesClient::new(ch);
        let req =
            kiln::api::v1::PullImageRequest { reference: name.into(), platform: None, no_unpack: true, credentials };
        let mut s = c.pull(req).await?.into_inner();
        loop {
            match s.message().await? {
                Some(m) if m.done => return Ok(m),
                Some(_) => {}
                None => panic!("Images.Pull of {name}: the stream ended without a final message"),
            }
        }
    })
}

#[test]
fn per_request_credentials_pull_from_a_basic_auth_registry_and_override_the_auth_file() {
    if !ready() || !common::require_tool("htpasswd") {
        return;
    }
    let reg = Registry::start_with(Some(("kiln", "s3cret")));
    let src = common::scratch();
    layout(src.path(), "per request");
    for tag in ["v1", "v2", "v3", "v4"] {
        reg.push_with(src.path(), "v1", &format!("private/app:{tag}"), &[]);
    }
    let name = |tag: &str| format!("{}/private/app:{tag}", reg.host);

    // No auth file: the request's credentials are all there is.
    let k = Kilnd::start(&[]);
    let got = grpc_pull(&k, &name("v1"), request_creds("kiln", "s3cret")).expect("pull with the request's credentials");
    assert!(got.fetched && got.ref_name == name("v1"), "{got:?}");
    assert!(k.store_entry(&name("v1")).is_some(), "{}", k.index_json());

    // A wrong password: denied, naming the registry, the reference and that the credentials were the request's
    // (and the user), never the password.
    let e = grpc_pull(&k, &name("v2"), request_creds("kiln", "wrong-pw")).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let msg = e.message();
    assert!(msg.contains(&reg.host) && msg.contains(&name("v2")) && msg.contains("denied"), "{msg}");
    assert!(msg.contains("the request's credentials (user \"kiln\")") && !msg.contains("wrong-pw"), "{msg}");
    assert!(k.store_entry(&name("v2")).is_none());

    // Half a pair, or a field over 4 KiB: refused before anything is sent, naming the field.
    let e = grpc_pull(&k, &name("v2"), request_creds("kiln", "")).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("credentials.password"), "{e:?}");
    let e = grpc_pull(&k, &name("v2"), request_creds("kiln", &"x".repeat(4097))).unwrap_err();
    assert!(e.code() == tonic::Code::InvalidArgument && e.message().contains("credentials.password"), "{e:?}");
    // Every field empty is no credentials: anonymous, as without the field.
    let e = grpc_pull(&k, &name("v2"), request_creds("", "")).unwrap_err();
    assert!(e.code() == tonic::Code::PermissionDenied && e.message().contains("anonymous"), "{e:?}");

    // Already in the store: nothing is fetched, and the credentials (wrong here) are not looked at.
    let got = grpc_pull(&k, &name("v1"), request_creds("kiln", "wrong-pw")).expect("present image");
    assert!(!got.fetched, "{got:?}");
    // Neither password reached kilnd's log.
    assert!(!k.log().contains("s3cret") && !k.log().contains("wrong-pw"), "{}", k.log());
    drop(k);

    // An auth file whose entry is wrong: it alone is refused; the request's credentials win over it.
    let dir = common::scratch();
    let file = auth_file(dir.path(), &reg.host, "kiln:wrong");
    let k = Kilnd::start_with_config(&format!("[registry]\nauth_file = \"{}\"\n", file.display()), &[]);
    let e = grpc_pull(&k, &name("v2"), None).unwrap_err();
    assert!(e.code() == tonic::Code::PermissionDenied && e.message().contains(path_str(&file)), "{e:?}");
    let got = grpc_pull(&k, &name("v2"), request_creds("kiln", "s3cret")).expect("request's credentials win");
    assert!(got.fetched, "{got:?}");

    // The CLI: `--creds USER:PASSWORD` (unpacking while it downloads), and `--creds USER` with the password on
    // stdin.
    let o = k.kiln(&["image", "pull", "--creds", "kiln:s3cret", &name("v3")]);
    assert!(o.status.success(), "{}", common::output(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("fetched {}", name("v3"))), "{}", common::output(&o));
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["--address", &k.address(), "image", "pull", "--no-unpack", "--creds", "kiln", &name("v4")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln");
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", common::output(&o));
    assert!(k.store_entry(&name("v4")).is_some(), "{}", k.index_json());
    // No password on stdin (the tests' stdin is empty): an error saying how to give it.
    let o = k.kiln(&["image", "pull", "--creds", "kiln", &name("v5")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--creds kiln: no password"), "{}", common::output(&o));
    assert!(!k.log().contains("s3cret"), "{}", k.log());
}

/// A token from `issuer` for pulling `repository`, asked for as `user:password` (what a caller that got an
/// identity token elsewhere would hold).
fn issued_token(issuer: &TokenIssuer, user_password: &str, repository: &str) -> String {
    let url = issuer.realm.strip_prefix("http://").unwrap();
    let (host, path) = url.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET /{path}?service={SERVICE}&scope=repository:{repository}:pull HTTP/1.1\r\nHost: {host}\r\nAuthorization: \
         Basic {}\r\nConnection: close\r\n\r\n",
        common::base64(user_password.as_bytes())
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    v["token"].as_str().unwrap_or_else(|| panic!("no token: {answer}")).to_owned()
}

#[test]
fn per_request_credentials_and_identity_tokens_work_with_a_token_registry() {
    if !ready() {
        return;
    }
    let work = common::scratch();
    let (issuer, reg) = token_registry(work.path());
    let src = common::scratch();
    layout(src.path(), "token per request");
    for tag in ["v1", "v2"] {
        reg.push_with(src.path(), "v1", &format!("private/app:{tag}"), &[]);
    }
    let name = |tag: &str| format!("{}/private/app:{tag}", reg.host);
    let k = Kilnd::start(&[]);

    // User and password go to the issuer the challenge names; one token serves the pull.
    let before = issuer.requests().len();
    let got = grpc_pull(&k, &name("v1"), request_creds("alice", "pw")).expect("pull with the request's credentials");
    assert!(got.fetched, "{got:?}");
    let asked = &issuer.requests()[before..];
    assert!(asked.len() == 1 && asked[0].granted && asked[0].user.as_deref() == Some("alice"), "{asked:?}");

    // Refused by the issuer: denied, saying whose credentials.
    let e = grpc_pull(&k, &name("v2"), request_creds("alice", "nope")).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("the request's credentials (user \"alice\")") && e.message().contains(&reg.host));

    // An identity token the registry accepts is sent as it is: the issuer is not asked.
    let token = issued_token(&issuer, "alice:pw", "private/app");
    let before = issuer.requests().len();
    let creds = kiln::api::v1::RegistryCredentials { identity_token: token.clone(), ..Default::default() };
    let got = grpc_pull(&k, &name("v2"), Some(creds)).expect("pull with an identity token");
    assert!(got.fetched, "{got:?}");
    assert_eq!(issuer.requests().len(), before, "{:?}", issuer.requests());
    // A token with a user: refused, naming the fields.
    let creds = kiln::api::v1::RegistryCredentials {
        username: "alice".into(),
        identity_token: token.clone(),
        ..Default::default()
    };
    let e = grpc_pull(&k, &name("v2"), Some(creds)).unwrap_err();
    assert!(e.code() == tonic::Code::InvalidArgument && e.message().contains("credentials.identity_token"), "{e:?}");
    assert!(!k.log().contains(&token), "{}", k.log());
}
