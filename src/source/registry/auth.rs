//! Credentials for a registry from a Docker-style `config.json` (`{"auths": {"HOST": {"auth": base64
//! "user:password"}}}`, or `username` and `password` fields), the file `docker login`, `podman login` and
//! `skopeo login --authfile` write. The file is read once per pull, so a `login` takes effect without a
//! restart. Credential helpers (`credsStore`, `credHelpers`) and identity tokens are not read.
//!
//! What a pull authenticates with is recorded as a [`Credentials::origin`], which errors quote: a 401 says
//! whether kilnd tried anonymously (and why), with which entry of which file, or with the credentials the
//! request carried ([`Credentials::from_request`], `Images.Pull`'s `credentials`: the reference's registry
//! only, in place of the file's entry for it; `hosts.rs` applies them).
//!
//! May use: `sys` (reading the file), `error`.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::Error;
use crate::sys;

/// What to authenticate with, and where it came from (for messages).
#[derive(Clone)]
pub struct Credentials {
    pub(super) auth: RegistryAuth,
    pub origin: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret itself.
        f.debug_struct("Credentials").field("origin", &self.origin).finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn anonymous(why: &str) -> Credentials {
        Credentials { auth: RegistryAuth::Anonymous, origin: format!("anonymous ({why})") }
    }

    /// A user and password a request carried (HTTP basic, or sent to the token issuer a `Bearer` challenge
    /// names). The origin names the user, never the password.
    pub fn from_request(username: &str, password: &str) -> Credentials {
        Credentials {
            auth: RegistryAuth::Basic(username.to_owned(), password.to_owned()),
            origin: format!("the request's credentials (user {username:?})"),
        }
    }

    /// A bearer token a request carried, sent as it is (`Authorization: Bearer`) on every request of the pull:
    /// `oci-client` never exchanges it at a token issuer, so an OAuth2 refresh token does not work as one.
    pub fn from_request_token(token: &str) -> Credentials {
        Credentials {
            auth: RegistryAuth::Bearer(token.to_owned()),
            origin: "the request's credentials (an identity token)".to_owned(),
        }
    }
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The host part of an `auths` key: keys may be written as URLs (`https://index.docker.io/v1/`).
fn key_host(key: &str) -> &str {
    let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// The names Docker Hub goes by in `auths`.
fn same_registry(key: &str, registry: &str) -> bool {
    const HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    let host = key_host(key);
    host == registry || (HUB.contains(&host) && HUB.contains(&registry))
}

/// The credentials for `registry` in the file at `path` (`None`: no file configured). A configured file that
/// does not exist means anonymous access, as for `docker`; one that cannot be read or parsed is an error.
pub fn lookup(path: Option<&Path>, registry: &str) -> Result<Credentials, Error> {
    let Some(path) = path else { return Ok(Credentials::anonymous("no registry.auth_file configured")) };
    let text = match sys::host::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Credentials::anonymous(&format!("auth file {} does not exist", path.display())))
        }
        Err(e) => return Err(Error::AuthFile { path: path.to_path_buf(), reason: e.to_string() }),
    };
    let file: AuthFile = serde_json::from_str(&text)
        .map_err(|e| Error::AuthFile { path: path.to_path_buf(), reason: format!("not a config.json: {e}") })?;
    // An exact key first, then one that names the same registry another way.
    let found = file
        .auths
        .iter()
        .find(|(k, _)| k.as_str() == registry)
        .or_else(|| file.auths.iter().find(|(k, _)| same_registry(k, registry)));
    let Some((key, entry)) = found else {
        return Ok(Credentials::anonymous(&format!("no entry for {registry} in {}", path.display())));
    };
    let origin = format!("{} (auths.{key:?})", path.display());
    let bad = |reason: &str| Error::AuthFile { path: path.to_path_buf(), reason: format!("auths.{key:?}: {reason}") };
    let (user, password) = match (&entry.auth, &entry.username, &entry.password) {
        (Some(a), _, _) if !a.is_empty() => {
            let bytes =
                base64::engine::general_purpose::STANDARD.decode(a.trim()).map_err(|_| bad("auth is not base64"))?;
            let text = String::from_utf8(bytes).map_err(|_| bad("auth is not UTF-8"))?;
            let (u, p) = text.split_once(':').ok_or_else(|| bad("auth is not user:password"))?;
            (u.to_owned(), p.to_owned())
        }
        (_, Some(u), Some(p)) => (u.clone(), p.clone()),
        _ => return Ok(Credentials::anonymous(&format!("{origin} holds no auth"))),
    };
    Ok(Credentials { auth: RegistryAuth::Basic(user, password), origin })
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the fixture file is written by path
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_by_host_and_docker_hub_by_any_of_its_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:x");
        let text = format!(
            r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{b64}"}}, "https://index.docker.io/v1/": {{"username": "bob", "password": "pw"}}, "empty.example": {{}}}}}}"#
        );
        std::fs::write(&path, text).unwrap();
        let c = lookup(Some(&path), "127.0.0.1:5000").unwrap();
        assert!(matches!(&c.auth, RegistryAuth::Basic(u, p) if u == "alice" && p == "s3cret:x"));
        assert!(c.origin.contains("auths.\"127.0.0.1:5000\""), "{}", c.origin);
        let c = lookup(Some(&path), "docker.io").unwrap();
        assert!(matches!(&c.auth, RegistryAuth::Basic(u, _) if u == "bob"));
        let c = lookup(Some(&path), "other.example").unwrap();
        assert!(matches!(c.auth, RegistryAuth::Anonymous) && c.origin.contains("no entry for other.example"));
        assert!(lookup(Some(&path), "empty.example").unwrap().origin.contains("holds no auth"));
        assert!(format!("{c:?}").contains("origin"));
        let missing = lookup(Some(&dir.path().join("absent.json")), "x").unwrap();
        assert!(missing.origin.contains("does not exist"));
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(lookup(Some(&path), "x"), Err(Error::AuthFile { .. })));
        assert!(lookup(None, "x").unwrap().origin.contains("no registry.auth_file"));
    }

    #[test]
    fn request_credentials_say_so_and_never_show_the_secret() {
        let c = Credentials::from_request("alice", "hunter2-secret");
        assert!(matches!(&c.auth, RegistryAuth::Basic(u, p) if u == "alice" && p == "hunter2-secret"));
        assert_eq!(c.origin, "the request's credentials (user \"alice\")");
        let t = Credentials::from_request_token("tok-secret");
        assert!(matches!(&t.auth, RegistryAuth::Bearer(b) if b == "tok-secret"));
        for c in [c, t] {
            let shown = format!("{c:?} {c:#?}");
            assert!(!shown.contains("secret") && shown.contains("the request's credentials"), "{shown}");
        }
    }
}
