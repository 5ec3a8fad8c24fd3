//! XenAPI on the wire: the XML-RPC and JSON-RPC codecs, typed request parsing, an
//! HTTP(S) server and a client.
//!
//! This crate translates; it never decides. It turns bytes into a [`Call`] (and a
//! [`Request`] with class and message split out), hands that to a [`Handler`] supplied by
//! the daemon, and turns the handler's [`Value`] or [`XenApiError`] back into bytes in
//! the caller's protocol. It must never hold pool policy: which classes and messages
//! exist, who may call them, and what they do belong to `xenpool-core` and the daemon.
//! It deliberately does not depend on `xenpool-core`; the daemon glues the two.
//!
//! Wire behaviour follows xapi so that unmodified clients (the `XenAPI` Python module,
//! Xen Orchestra's `xen-api`, XenCenter) work: compact XML with the `{Status, Value}`
//! envelope, JSON-RPC results as raw values, exact `Content-Type` headers, and the
//! `HOST_IS_SLAVE` redirect.
//!
//! # Layout
//! - [`value`]: [`Value`], the wire value model, and its JSON mapping; [`EncodedValue`],
//!   a value already encoded for one protocol.
//! - [`writer`]: [`ValueWriter`], streaming a value straight to bytes
//!   ([`XmlWriter`](xml::XmlWriter), [`JsonWriter`](json::JsonWriter)).
//! - [`xml`]: XML-RPC encoding (compact, xapi's shapes) and tolerant decoding.
//! - [`json`]: JSON-RPC 1.0/2.0 requests and responses in xapi's shapes.
//! - [`request`]: [`Call`], [`Request`] (`Async.`/class/message) and [`ParamReader`].
//! - [`error`]: [`RpcError`], the crate's error, and [`XenApiError`], a wire failure.
//! - [`server`]: [`serve`], the [`Handler`] trait, [`CallContext`], [`CallClass`] and
//!   [`ServerLimits`].
//! - [`tls`]: the self-signed server certificate kept in the data directory.
//! - [`client`]: [`Client`], which follows `HOST_IS_SLAVE` redirects by itself.

#![deny(missing_docs)]

pub mod client;
pub mod error;
pub mod json;
pub mod request;
pub mod server;
pub mod tls;
pub mod value;
pub mod writer;
pub mod xml;

pub use client::{Client, ClientBuilder};
pub use error::{RpcError, XenApiError, HOST_IS_SLAVE, TOO_MANY_PENDING_TASKS};
pub use json::JsonVersion;
pub use json::JsonWriter;
pub use request::{Call, ParamReader, Request};
pub use server::{
    serve, CallClass, CallContext, Handler, HttpAnswer, HttpGet, HttpPut, Protocol, PutBody,
    ServerLimits,
};
pub use tls::load_or_create_certificate;
pub use value::{EncodedValue, Encoding, Value};
pub use writer::ValueWriter;
pub use xml::XmlWriter;
