//! The crate's error enum and the XenAPI failure carried on the wire.

use std::fmt;

/// A XenAPI failure as it travels on the wire: `ErrorDescription = [code, params…]`.
///
/// The codes are XenAPI's (upper-case, e.g. `HANDLE_INVALID`); this crate only builds the
/// handful that the protocol layer itself raises. Everything else comes from the caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct XenApiError {
    /// The error code, e.g. `SESSION_INVALID`.
    pub code: String,
    /// The parameters, in the order the XenAPI reference lists them.
    pub params: Vec<String>,
}

/// The code of the redirect a member answers control calls with.
pub const HOST_IS_SLAVE: &str = "HOST_IS_SLAVE";

/// The code xapi answers when it refuses to let one more call wait on the server
/// (`message_forwarding.ml` raises it once too many calls queue for a lock); the server
/// answers it when the long-poll budget is spent, and handlers may for their own caps.
pub const TOO_MANY_PENDING_TASKS: &str = "TOO_MANY_PENDING_TASKS";

impl XenApiError {
    /// A failure with this code and parameters.
    pub fn new<P: Into<String>>(
        code: impl Into<String>,
        params: impl IntoIterator<Item = P>,
    ) -> Self {
        XenApiError {
            code: code.into(),
            params: params.into_iter().map(Into::into).collect(),
        }
    }

    /// `MESSAGE_METHOD_UNKNOWN [method]`.
    pub fn method_unknown(method: &str) -> Self {
        Self::new("MESSAGE_METHOD_UNKNOWN", [method])
    }

    /// `MESSAGE_PARAMETER_COUNT_MISMATCH [method, expected, received]`.
    pub fn parameter_count_mismatch(method: &str, expected: usize, received: usize) -> Self {
        Self::new(
            "MESSAGE_PARAMETER_COUNT_MISMATCH",
            [
                method.to_owned(),
                expected.to_string(),
                received.to_string(),
            ],
        )
    }

    /// `SESSION_INVALID [ref]`.
    pub fn session_invalid(session: &str) -> Self {
        Self::new("SESSION_INVALID", [session])
    }

    /// `HANDLE_INVALID [class, ref]`.
    pub fn handle_invalid(class: &str, reference: &str) -> Self {
        Self::new("HANDLE_INVALID", [class, reference])
    }

    /// `INTERNAL_ERROR [message]`.
    pub fn internal_error(message: impl Into<String>) -> Self {
        Self::new("INTERNAL_ERROR", [message.into()])
    }

    /// `FIELD_TYPE_ERROR [field]`: a parameter had the wrong wire type.
    pub fn field_type_error(field: &str) -> Self {
        Self::new("FIELD_TYPE_ERROR", [field])
    }

    /// `TOO_MANY_PENDING_TASKS []`: no more calls may wait on the server (xapi's shape
    /// carries no parameters).
    pub fn too_many_pending_tasks() -> Self {
        Self::new(TOO_MANY_PENDING_TASKS, Vec::<String>::new())
    }

    /// `HOST_IS_SLAVE [coordinator address]`: the redirect a member answers control calls with.
    pub fn host_is_slave(coordinator: &str) -> Self {
        Self::new(HOST_IS_SLAVE, [coordinator])
    }

    /// `[code, params…]` as one list, the shape of `ErrorDescription`.
    pub fn description(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.params.len() + 1);
        out.push(self.code.clone());
        out.extend(self.params.iter().cloned());
        out
    }

    /// Builds a failure from an `ErrorDescription` list. An empty list becomes an
    /// `INTERNAL_ERROR` rather than a failure with no code.
    pub fn from_description(mut items: Vec<String>) -> Self {
        if items.is_empty() {
            return Self::internal_error("empty error description");
        }
        let code = items.remove(0);
        XenApiError {
            code,
            params: items,
        }
    }
}

impl fmt::Display for XenApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(", self.code)?;
        for (i, p) in self.params.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(p)?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for XenApiError {}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The peer answered with a XenAPI failure.
    #[error("XenAPI failure: {0}")]
    Api(#[from] XenApiError),
    /// An XML-RPC document could not be decoded.
    #[error("malformed XML-RPC: {0}")]
    Xml(String),
    /// A JSON-RPC document could not be decoded.
    #[error("malformed JSON-RPC: {0}")]
    Json(String),
    /// A [`ValueWriter`](crate::ValueWriter) was driven out of order (a member name
    /// outside a struct, an unclosed array, a second top-level value...).
    #[error("value writer misused: {0}")]
    WriterMisuse(&'static str),
    /// A response did not have the shape XenAPI responses have.
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// The server answered with a non-success HTTP status.
    #[error("HTTP status {status}")]
    HttpStatus {
        /// The status code.
        status: u16,
    },
    /// The HTTP client failed (connect, TLS, read, write).
    #[error("HTTP client error")]
    Http(#[source] reqwest::Error),
    /// A URL could not be parsed or rewritten.
    #[error("invalid URL {url}: {reason}")]
    Url {
        /// The URL text.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// Too many `HOST_IS_SLAVE` redirects were followed for one call.
    #[error("gave up after {0} HOST_IS_SLAVE redirects")]
    TooManyRedirects(usize),
    /// Certificate or TLS configuration problem.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Reading or writing certificate files, or socket setup.
    #[error("I/O error on {what}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl RpcError {
    /// The XenAPI failure inside, if this is one.
    pub fn api(&self) -> Option<&XenApiError> {
        match self {
            RpcError::Api(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        RpcError::Io {
            what: what.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_description() {
        let e = XenApiError::parameter_count_mismatch("VM.start", 3, 1);
        assert_eq!(
            e.to_string(),
            "MESSAGE_PARAMETER_COUNT_MISMATCH(VM.start, 3, 1)"
        );
        assert_eq!(
            e.description(),
            vec!["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.start", "3", "1"]
        );
        assert_eq!(XenApiError::from_description(e.description()), e);
        assert_eq!(XenApiError::from_description(vec![]).code, "INTERNAL_ERROR");
    }
}
