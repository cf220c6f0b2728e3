//! Content digests (descriptor.md): parsing, verification while streaming, and ChainIDs.
//!
//! A [`Digest`] is validated once, at parse: the `algorithm ":" encoded` grammar (B2) and, for registered
//! algorithms, their encoding (B3). Nothing builds a path from a digest that has not passed here (A5,
//! CVE-2024-3727). sha256 and sha512 are verified; any other grammatical algorithm parses but can never be
//! verified, so every attempt to use its content fails closed (B4).
//!
//! May use: `error`.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

use crate::error::ErrorKind;

/// Errors from parsing digests and verifying content against them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid digest {value:?}: {reason}")]
    Invalid { value: String, reason: &'static str },
    #[error("digest {0}: algorithm is not supported, content cannot be verified")]
    UnsupportedAlgorithm(Digest),
    #[error("content of {expected}: size mismatch: expected {expected_size} bytes, got {actual_size}{}",
        if *.at_least { " or more" } else { "" })]
    SizeMismatch { expected: Digest, expected_size: u64, actual_size: u64, at_least: bool },
    #[error("content digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid { .. } => ErrorKind::InvalidArgument,
            Error::UnsupportedAlgorithm(_) => ErrorKind::Unsupported,
            Error::SizeMismatch { .. } | Error::DigestMismatch { .. } => ErrorKind::Corrupt,
        }
    }
}

/// A registered, verifiable algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
}

/// A validated `algorithm:encoded` content identifier.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    value: String,
    colon: usize,
}

fn invalid(value: &str, reason: &'static str) -> Error {
    Error::Invalid { value: value.chars().take(200).collect(), reason }
}

/// Encoded lengths of registered algorithms (descriptor.md "Registered algorithms").
fn registered_hex_len(algorithm: &str) -> Option<usize> {
    match algorithm {
        "sha256" | "blake3" => Some(64),
        "sha512" => Some(128),
        _ => None,
    }
}

impl Digest {
    /// Parses and validates a digest string (B2, B3).
    pub fn parse(value: &str) -> Result<Digest, Error> {
        let colon = value.find(':').ok_or_else(|| invalid(value, "missing ':'"))?;
        let (algorithm, encoded) = (&value[..colon], &value[colon + 1..]);
        // descriptor.md: algorithm ::= algorithm-component (algorithm-separator algorithm-component)*
        //                algorithm-component ::= [a-z0-9]+ ; algorithm-separator ::= [+._-]
        let mut last_was_separator = true;
        for c in algorithm.chars() {
            match c {
                'a'..='z' | '0'..='9' => last_was_separator = false,
                '+' | '.' | '_' | '-' if !last_was_separator => last_was_separator = true,
                _ => return Err(invalid(value, "algorithm must match [a-z0-9]+([+._-][a-z0-9]+)*")),
            }
        }
        if last_was_separator {
            return Err(invalid(value, "algorithm must match [a-z0-9]+([+._-][a-z0-9]+)*"));
        }
        // descriptor.md: encoded ::= [a-zA-Z0-9=_-]+
        if encoded.is_empty() || !encoded.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
        {
            return Err(invalid(value, "encoded part must match [a-zA-Z0-9=_-]+"));
        }
        if let Some(len) = registered_hex_len(algorithm) {
            // descriptor.md: sha256/sha512/blake3 encoded MUST be lower-case hex of the exact length (B3).
            if encoded.len() != len || !encoded.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(invalid(value, "encoded part must be lower-case hex of the algorithm's length"));
            }
        }
        Ok(Digest { value: value.to_owned(), colon })
    }

    /// The digest of `bytes` under `algorithm`.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(algorithm);
        h.update(bytes);
        h.finish()
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256(bytes: &[u8]) -> Digest {
        Digest::of(Algorithm::Sha256, bytes)
    }

    pub fn algorithm_str(&self) -> &str {
        &self.value[..self.colon]
    }

    /// The encoded part. It matches `[a-zA-Z0-9=_-]+`, so it is a safe single path component.
    pub fn encoded(&self) -> &str {
        &self.value[self.colon + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// The verifiable algorithm, or `UnsupportedAlgorithm`: content under any other algorithm is never used.
    pub fn algorithm(&self) -> Result<Algorithm, Error> {
        match self.algorithm_str() {
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            _ => Err(Error::UnsupportedAlgorithm(self.clone())),
        }
    }

    /// Checks `bytes` against this digest and an expected size.
    pub fn verify(&self, expected_size: u64, bytes: &[u8]) -> Result<(), Error> {
        let algorithm = self.algorithm()?;
        if bytes.len() as u64 != expected_size {
            return Err(Error::SizeMismatch {
                expected: self.clone(),
                expected_size,
                actual_size: bytes.len() as u64,
                at_least: false,
            });
        }
        let actual = Digest::of(algorithm, bytes);
        if &actual != self {
            return Err(Error::DigestMismatch { expected: self.clone(), actual });
        }
        Ok(())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.value)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.value)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An incremental hash for one verifiable algorithm.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        let (algorithm, encoded) = match self {
            Hasher::Sha256(h) => ("sha256", hex(&h.finalize())),
            Hasher::Sha512(h) => ("sha512", hex(&h.finalize())),
        };
        Digest { colon: algorithm.len(), value: format!("{algorithm}:{encoded}") }
    }
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// A `Read` adapter that hashes while streaming and checks size and digest at EOF (B5, B6).
///
/// It never reads more than `expected_size + 1` bytes from the inner reader, so a blob that is longer than its
/// descriptor says (or a symlink to `/dev/zero`) is rejected without being consumed. A mismatch surfaces as an
/// `io::Error` of kind `InvalidData` whose inner error is a [`digest::Error`](Error); use
/// [`Error::from_io`] to recover it.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Option<Hasher>,
    expected: Digest,
    expected_size: u64,
    read: u64,
    verified: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest, expected_size: u64) -> Result<Self, Error> {
        let hasher = Hasher::new(expected.algorithm()?);
        Ok(VerifyingReader { inner, hasher: Some(hasher), expected, expected_size, read: 0, verified: false })
    }

    /// True once EOF was reached and both size and digest matched.
    pub fn verified(&self) -> bool {
        self.verified
    }

    pub fn expected(&self) -> &Digest {
        &self.expected
    }

    /// Reads to EOF (discarding), so the digest is checked even when the consumer stopped early.
    pub fn drain(&mut self) -> io::Result<u64> {
        io::copy(self, &mut io::sink())
    }

    fn finish(&mut self) -> Result<(), Error> {
        if self.read != self.expected_size {
            return Err(Error::SizeMismatch {
                expected: self.expected.clone(),
                expected_size: self.expected_size,
                actual_size: self.read,
                at_least: self.read > self.expected_size,
            });
        }
        if let Some(h) = self.hasher.take() {
            let actual = h.finish();
            if actual != self.expected {
                return Err(Error::DigestMismatch { expected: self.expected.clone(), actual });
            }
            self.verified = true;
        }
        Ok(())
    }
}

impl Error {
    /// Recovers a digest error carried inside an `io::Error` produced by [`VerifyingReader`].
    pub fn from_io(e: &io::Error) -> Option<&Error> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<Error>())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.verified || buf.is_empty() {
            return Ok(0);
        }
        // Allow one byte past the expected size, so "too long" is seen without reading the whole excess.
        let allowed = (self.expected_size + 1).saturating_sub(self.read);
        let cap = buf.len().min(usize::try_from(allowed).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..cap])?;
        if n == 0 {
            self.finish().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            return Ok(0);
        }
        self.read += n as u64;
        if self.read > self.expected_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                Error::SizeMismatch {
                    expected: self.expected.clone(),
                    expected_size: self.expected_size,
                    actual_size: self.read,
                    at_least: true,
                },
            ));
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// ChainID of a stack of layers (config.md, G1): ChainID(L0) = DiffID(L0);
/// ChainID(L0…Ln) = sha256(ChainID(L0…Ln-1) + " " + DiffID(Ln)). `None` for an empty stack.
pub fn chain_id(diff_ids: &[Digest]) -> Option<Digest> {
    chain_ids(diff_ids).pop()
}

/// The ChainIDs of every prefix of the stack: `chain_ids(d)[i] == chain_id(&d[..=i])`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::sha256(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build fixtures by path
mod tests {
    use super::*;

    const EMPTY_TAR: &str = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

    #[test]
    fn b2_grammar() {
        for bad in ["sha256:", "SHA256:ab", "sha256:ab/cd", ":abc", "sha256", "sha256+:ab", "+sha:ab", "a..b:x"] {
            assert!(Digest::parse(bad).is_err(), "{bad} accepted");
        }
        let d = Digest::parse("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8").unwrap();
        assert_eq!(d.algorithm_str(), "multihash+base58");
        assert_eq!(d.algorithm().unwrap_err().kind(), ErrorKind::Unsupported);
    }

    #[test]
    fn b3_uppercase_hex_rejected() {
        let upper = format!("sha256:{}", "A".repeat(64));
        assert!(Digest::parse(&upper).is_err());
        assert!(Digest::parse(&format!("sha256:{}", "a".repeat(63))).is_err());
        assert!(Digest::parse(&format!("sha512:{}", "a".repeat(64))).is_err());
        assert!(Digest::parse(&format!("sha512:{}", "a".repeat(128))).is_ok());
        assert!(Digest::parse(&format!("blake3:{}", "a".repeat(64))).is_ok());
    }

    #[test]
    fn a5_path_like_digest_rejected() {
        assert!(Digest::parse("sha256:../../etc/passwd").is_err());
        assert!(Digest::parse("../sha256:aa").is_err());
    }

    #[test]
    fn empty_tar_vector() {
        assert_eq!(Digest::sha256(&[0u8; 1024]).as_str(), EMPTY_TAR);
        assert_eq!(
            Digest::sha256(b"{}").as_str(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn g1_chain_id_vectors() {
        let a = Digest::parse("sha256:c6f988f4874bb0add23a778f753c65efe992244e148a1d2ec2a8b664fb66bbd1").unwrap();
        let b = Digest::parse(EMPTY_TAR).unwrap();
        assert_eq!(chain_id(std::slice::from_ref(&a)).unwrap(), a);
        assert_eq!(
            chain_id(&[a.clone(), b.clone()]).unwrap().as_str(),
            "sha256:c3191d32a37d7159b2e30830937d2e30268ad6c375a773a8994911a3aba9b93f"
        );
        let three = [a.clone(), b, a];
        assert_eq!(
            chain_id(&three).unwrap().as_str(),
            "sha256:ce60e381e7c2941cc3c11bc7a60b267bb56a3be80df231da8c523c53af72518b"
        );
        assert_eq!(chain_ids(&three).last(), chain_id(&three).as_ref());
        assert!(chain_id(&[]).is_none());
    }

    #[test]
    fn b6_verifying_reader_size_and_digest() {
        let data = b"hello world".to_vec();
        let d = Digest::sha256(&data);
        let mut ok = VerifyingReader::new(&data[..], d.clone(), 11).unwrap();
        let mut out = Vec::new();
        ok.read_to_end(&mut out).unwrap();
        assert!(ok.verified());

        // Longer than the descriptor says: stops one byte past the size.
        let mut long = VerifyingReader::new(io::repeat(0), d.clone(), 11).unwrap();
        let e = long.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(matches!(Error::from_io(&e), Some(Error::SizeMismatch { at_least: true, .. })));

        let mut short = VerifyingReader::new(&data[..10], d.clone(), 11).unwrap();
        let e = short.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(matches!(Error::from_io(&e), Some(Error::SizeMismatch { actual_size: 10, .. })));

        let mut flipped = data.clone();
        flipped[0] ^= 1;
        let mut bad = VerifyingReader::new(&flipped[..], d.clone(), 11).unwrap();
        let e = bad.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(Error::from_io(&e).unwrap().kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn b4_sha512_verified_and_unknown_fails_closed() {
        let d = Digest::of(Algorithm::Sha512, b"x");
        assert!(d.verify(1, b"x").is_ok());
        assert!(d.verify(1, b"y").is_err());
        let unknown = Digest::parse("foo:abcd").unwrap();
        assert!(VerifyingReader::new(&b""[..], unknown.clone(), 0).is_err());
        assert_eq!(unknown.verify(0, b"").unwrap_err().kind(), ErrorKind::Unsupported);
    }
}
