//! One error classification for the whole crate. Every module has its own `Error` enum whose variants name
//! the digest, path or field involved, and a `kind()` that maps it to an [`ErrorKind`]. The server maps
//! `ErrorKind` to a gRPC code in exactly one place; the CLI maps it to an exit status.

/// What kind of failure an error is, independent of the module that raised it (containerd's `errdefs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A named thing (blob, image, ref, user, snapshot, bundle) does not exist.
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// The caller's input is malformed (bad reference, bad platform string, bad id).
    InvalidArgument,
    /// The input is well-formed but the state does not allow the operation (not a runnable image, no match).
    FailedPrecondition,
    /// Well-formed input that kiln does not implement (unknown digest algorithm, unknown media type).
    Unsupported,
    /// Stored content is wrong: digest or size mismatch, malformed document, hostile archive.
    Corrupt,
    /// A cap on untrusted input was exceeded.
    ResourceExhausted,
    /// A failure of the machine (I/O, syscalls) rather than of the input.
    Internal,
    /// A remote service (a registry) refused the credentials, or access with them.
    PermissionDenied,
    /// A remote service (a registry) cannot be reached: unknown host, refused connection, TLS, 5xx.
    Unavailable,
    /// The work was stopped because its caller went away or its deadline passed (see [`crate::Cancel`]).
    Cancelled,
}

impl ErrorKind {
    /// A short stable name, used in logs and the CLI's JSON errors.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::Internal => "internal",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload of an I/O error saying the bytes could not be had at all — their source failed (a download
/// that stopped) — with that failure's kind, so that a reader's caller (the layer applier) does not take it for
/// bad content.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SourceFailed {
    pub kind: ErrorKind,
    pub message: String,
}

/// One line for an error and its causes, for the binaries: each cause is added only when the message so
/// far does not already say it (kiln's errors usually carry their source in their own text).
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    report_lines(e).replace('\n', " ")
}

/// [`report`] keeping the line breaks of the messages (a TOML error's excerpt with its caret).
pub fn report_lines(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// An error that knows its [`ErrorKind`]: every module's `Error`. The server turns one into a gRPC status in
/// one function (`server::status_of`), the CLI into an exit status, without each call site naming the kind.
pub trait Classified: std::error::Error {
    fn kind(&self) -> ErrorKind;
}

/// Implements [`Classified`] for module errors through their own `kind()`.
macro_rules! classified {
    ($($t:ty),* $(,)?) => {
        $(impl Classified for $t {
            fn kind(&self) -> ErrorKind {
                <$t>::kind(self)
            }
        })*
    };
}

classified!(
    crate::store::Error,
    crate::image::Error,
    crate::layer::Error,
    crate::snapshot::Error,
    crate::convert::Error,
    crate::bundle::Error,
    crate::source::Error,
    crate::catalog::Error,
    crate::gc::Error,
    crate::facade::Error,
);
