//! The XenAPI HTTP(S) server: hyper 1, HTTP/1.1 keep-alive, both codecs.
//!
//! Routes, as xapi serves them:
//! - `POST /`, `/RPC2`, `/xmlrpc`: XML-RPC, answered `text/xml`;
//! - `POST /jsonrpc`: JSON-RPC 1.0 and 2.0, answered `application/json`;
//! - `OPTIONS` anything: a CORS preflight answer (browsers talk to `/jsonrpc` directly);
//! - `GET /`: a small page; `GET` of any other path: whatever [`Handler::get`] answers
//!   (by default nothing: 404);
//! - `PUT` of any path: whatever [`Handler::put`] answers, the body streamed to it (xapi
//!   takes disk images this way: `PUT /import_raw_vdi`); by default 404;
//! - anything else: 404.
//!
//! Content types go out exactly as `text/xml` and `application/json` with no charset
//! suffix: Xen Orchestra compares the header byte for byte and falls back to XML-RPC
//! otherwise. Request content types are not checked (clients send all sorts).
//!
//! Every resource a peer can make us spend is bounded by [`ServerLimits`]: connections,
//! calls in flight, request size, and the time to send headers, body and TLS handshake. A
//! handler call runs in its own task, so a client that hangs up does not cancel an
//! operation halfway, and a handler that panics costs that one call an `INTERNAL_ERROR`.
//!
//! Calls are budgeted by their [`CallClass`], which the handler decides: ordinary calls
//! share `max_in_flight`; long-polls, which sit waiting for something to happen, have a
//! budget of their own so that however many are parked, ordinary calls still get slots;
//! and calls the handler has authenticated as coming from a trusted peer have a reserve
//! no client call can take. The server only counts; which calls are which is the
//! handler's business.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request as HttpRequest, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore, TryAcquireError};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::error::XenApiError;
use crate::json::{self, JsonVersion};
use crate::request::Call;
use crate::value::{Encoding, Value};
use crate::xml;

/// The wire protocol a call arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// XML-RPC (`POST /`, `/RPC2`, `/xmlrpc`).
    XmlRpc,
    /// JSON-RPC 1.0 at `/jsonrpc`.
    JsonRpc1,
    /// JSON-RPC 2.0 at `/jsonrpc`.
    JsonRpc2,
}

impl Protocol {
    /// The value syntax of the protocol: what a handler's
    /// [`EncodedValue`](crate::EncodedValue) must be written in.
    pub fn encoding(self) -> Encoding {
        match self {
            Protocol::XmlRpc => Encoding::Xml,
            Protocol::JsonRpc1 | Protocol::JsonRpc2 => Encoding::Json,
        }
    }
}

impl From<JsonVersion> for Protocol {
    fn from(v: JsonVersion) -> Self {
        match v {
            JsonVersion::V1 => Protocol::JsonRpc1,
            JsonVersion::V2 => Protocol::JsonRpc2,
        }
    }
}

/// Where a call came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallContext {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The protocol the call used.
    pub protocol: Protocol,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// What the server calls for every decoded XenAPI call. The handler returns the raw
/// result; the server wraps it in the protocol's envelope.
///
/// A large result can be returned already encoded, as [`Value::Encoded`] written by the
/// [`ValueWriter`](crate::ValueWriter) of [`CallContext::protocol`]'s
/// [`encoding`](Protocol::encoding); the server copies its bytes into the envelope. One
/// encoded for the other protocol is answered with `INTERNAL_ERROR`.
pub trait Handler: Send + Sync + 'static {
    /// Performs one call.
    fn call(
        &self,
        ctx: CallContext,
        call: Call,
    ) -> impl Future<Output = Result<Value, XenApiError>> + Send;

    /// Whether `call` may run on the connection's own task. By default every call runs in a
    /// task of its own, so a client hanging up cannot stop an operation halfway and a panic
    /// costs only that call; a handler can exempt calls that are safe to abandon (reads),
    /// which saves a task hop per call. A panic in an exempted call closes its connection.
    fn run_inline(&self, call: &Call) -> bool {
        let _ = call;
        false
    }

    /// Which budget `call` runs in (see [`CallClass`]); by default every call is
    /// [`CallClass::Ordinary`]. Called on the connection's task for every call, so it
    /// must be cheap.
    fn classify(&self, call: &Call) -> CallClass {
        let _ = call;
        CallClass::Ordinary
    }

    /// Answers a `GET` of a path other than `/` (xapi serves `/rrd_updates`, `/host_rrd`
    /// and the like beside the RPC endpoints); `None`, the default, is a 404. Runs on the
    /// connection's task, outside the call budgets: keep it cheap.
    fn get(&self, request: HttpGet) -> impl Future<Output = Option<HttpAnswer>> + Send {
        let _ = request;
        async { None }
    }

    /// Answers a `PUT` (xapi's `/import_raw_vdi` and the like), reading its body as it
    /// arrives through [`HttpPut::body`]; `None`, the default, is a 404. Runs on the
    /// connection's task within the ordinary call budget. A body left unread closes the
    /// connection after the answer.
    fn put(&self, request: HttpPut) -> impl Future<Output = Option<HttpAnswer>> + Send {
        let _ = request;
        async { None }
    }
}

/// A `PUT` for [`Handler::put`].
#[derive(Debug)]
pub struct HttpPut {
    /// The path, without the query.
    pub path: String,
    /// The query string, without the `?` (empty when there is none).
    pub query: String,
    /// The `Authorization` header, if any and readable.
    pub authorization: Option<String>,
    /// The `Content-Length` header, when the client sent one.
    pub content_length: Option<u64>,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The request body.
    pub body: PutBody,
}

/// The body of a [`HttpPut`], read piece by piece so that a disk image never has to fit
/// in memory.
#[derive(Debug)]
pub struct PutBody {
    inner: Incoming,
    idle_timeout: Duration,
    /// Set once the whole body was read, for the router to know the connection is reusable.
    finished: Arc<AtomicBool>,
}

impl PutBody {
    /// The next piece of the body, `Ok(None)` at its end. Fails when the connection breaks
    /// or the peer sends nothing for [`ServerLimits::body_read_timeout`].
    pub async fn chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            let frame = tokio::time::timeout(self.idle_timeout, self.inner.frame())
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "timed out reading the request body",
                    )
                })?;
            match frame {
                None => {
                    self.finished.store(true, Ordering::Relaxed);
                    return Ok(None);
                }
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                Some(Ok(frame)) => {
                    // Trailers carry no data; keep reading to the end.
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Ok(Some(data));
                        }
                    }
                }
            }
        }
    }
}

/// A `GET` for [`Handler::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGet {
    /// The path, without the query.
    pub path: String,
    /// The query string, without the `?` (empty when there is none).
    pub query: String,
    /// The `Authorization` header, if any and readable.
    pub authorization: Option<String>,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// What [`Handler::get`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// A `WWW-Authenticate` challenge to send (with a 401).
    pub www_authenticate: Option<&'static str>,
}

/// The budget a call runs in, as [`Handler::classify`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallClass {
    /// Runs within [`ServerLimits::max_in_flight`], waiting for a slot when all are taken.
    Ordinary,
    /// Waits for something to happen before it answers (a long-poll such as
    /// `event.from`): runs within [`ServerLimits::max_long_polls`] and never takes an
    /// ordinary slot. When that budget is spent the call is refused at once with
    /// `TOO_MANY_PENDING_TASKS` rather than queued, as queued long-polls would only wait
    /// to wait.
    LongPoll,
    /// A call from a trusted peer (another host of the pool) that the handler has already
    /// authenticated: runs within [`ServerLimits::max_internal_in_flight`], a reserve no
    /// client call can take. Only classify a call this way after checking its
    /// credentials, or any client can spend the reserve.
    Internal,
}

/// Bounds on what peers can make the server spend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest accepted request body; larger ones get 413 and a protocol error, from the
    /// `Content-Length` header alone when it declares more, before any body is read.
    pub max_body_bytes: usize,
    /// Ordinary calls executing at once across all connections; further calls wait.
    pub max_in_flight: usize,
    /// Long-polls ([`CallClass::LongPoll`]) parked at once; further ones are refused
    /// with `TOO_MANY_PENDING_TASKS`. Each holds a connection, so the server keeps this
    /// to at most half of `max_connections`: the other half stays free for clients
    /// making ordinary calls, however many long-polls are parked.
    pub max_long_polls: usize,
    /// Authenticated calls from trusted peers ([`CallClass::Internal`]) executing at
    /// once; further ones wait. Separate from `max_in_flight`, so clients cannot starve
    /// them.
    pub max_internal_in_flight: usize,
    /// Open connections; the listener stops accepting while at the bound.
    pub max_connections: usize,
    /// Time a connection may take to send a request's headers (also closes idle
    /// keep-alive connections).
    pub header_read_timeout: Duration,
    /// Time a request may take to send its body once the headers are in.
    pub body_read_timeout: Duration,
    /// Time a TLS client may take to finish its handshake.
    pub tls_handshake_timeout: Duration,
    /// After shutdown is signalled, how long open connections get to finish.
    pub shutdown_grace: Duration,
    /// When the server closes a connection, how long it keeps reading and dropping what
    /// the peer still sends, so the peer gets to read the last response (see
    /// [`Lingering`]).
    pub lingering_close: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_body_bytes: 16 * 1024 * 1024,
            max_in_flight: 256,
            max_long_polls: 2048,
            max_internal_in_flight: 256,
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            lingering_close: Duration::from_secs(5),
        }
    }
}

struct Shared<H> {
    handler: Arc<H>,
    limits: ServerLimits,
    in_flight: Semaphore,
    long_polls: Semaphore,
    internal: Semaphore,
}

/// Serves XenAPI on `listener` until `shutdown` completes, then stops accepting, lets
/// open connections finish within [`ServerLimits::shutdown_grace`] and returns.
///
/// With `tls`, every connection is TLS; plain HTTP and HTTPS are served by calling this
/// twice on two listeners with the same handler.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Arc<H>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let max_connections = limits.max_connections.max(2);
    let connections = Arc::new(Semaphore::new(max_connections));
    let long_polls = limits.max_long_polls.min(max_connections / 2);
    if long_polls < limits.max_long_polls {
        tracing::warn!(
            max_long_polls = limits.max_long_polls,
            max_connections,
            "long-polls limited to half the connections, so ordinary calls can still connect"
        );
    }
    let shared = Arc::new(Shared {
        handler,
        in_flight: Semaphore::new(limits.max_in_flight.max(1)),
        long_polls: Semaphore::new(long_polls),
        internal: Semaphore::new(limits.max_internal_in_flight.max(1)),
        limits,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);

    loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            connection(stream, peer, acceptor, shared, stop).await;
            drop(permit);
        });
    }

    drop(listener);
    let _ = stop_tx.send(true);
    let grace = shared.limits.shutdown_grace;
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::debug!("connections still open after the shutdown grace period; closing");
        tasks.abort_all();
    }
}

async fn connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    shared: Arc<Shared<H>>,
    stop: watch::Receiver<bool>,
) {
    // Responses are written whole; waiting for more data to coalesce only adds latency.
    let _ = stream.set_nodelay(true);
    let linger = shared.limits.lingering_close;
    let unread = Arc::new(AtomicBool::new(false));
    match acceptor {
        None => {
            let io = TokioIo::new(Lingering::new(stream, linger, unread.clone()));
            serve_http(io, peer, false, unread, shared, stop).await
        }
        Some(acceptor) => {
            let timeout = shared.limits.tls_handshake_timeout;
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let io = TokioIo::new(Lingering::new(tls, linger, unread.clone()));
                    serve_http(io, peer, true, unread, shared, stop).await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn serve_http<I, H>(
    io: I,
    peer: SocketAddr,
    tls: bool,
    unread: Arc<AtomicBool>,
    shared: Arc<Shared<H>>,
    mut stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Handler,
{
    let header_timeout = shared.limits.header_read_timeout;
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        let unread = unread.clone();
        async move { Ok::<_, Infallible>(route(&shared, req, peer, tls, &unread).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A connection's stream that closes the way HTTP servers must when a request was answered
/// without being read whole: on shutdown the write side is closed first, then whatever the
/// peer still sends is read and dropped until it closes too or the time is up. Closing a
/// socket with unread input makes the kernel answer with a reset, and a peer still sending
/// its request (an oversized body answered 413 from its headers) then loses the response
/// it has not read yet. Other closes (idle keep-alive, shutdown) do not wait on the peer.
struct Lingering<S> {
    inner: S,
    linger: Duration,
    /// Set by the router when it answers a request whose body it left unread.
    unread: Arc<AtomicBool>,
    state: LingerState,
}

enum LingerState {
    Open,
    Draining(Pin<Box<tokio::time::Sleep>>),
    Closed,
}

impl<S> Lingering<S> {
    fn new(inner: S, linger: Duration, unread: Arc<AtomicBool>) -> Self {
        Lingering {
            inner,
            linger,
            unread,
            state: LingerState::Open,
        }
    }
}

/// Reads per wake-up while draining, so a fast sender cannot hold a runtime thread.
const DRAIN_READS_PER_POLL: usize = 32;

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Lingering<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                LingerState::Open => {
                    if let Err(e) = ready!(Pin::new(&mut this.inner).poll_shutdown(cx)) {
                        this.state = LingerState::Closed;
                        return Poll::Ready(Err(e));
                    }
                    if !this.unread.load(Ordering::Relaxed) {
                        this.state = LingerState::Closed;
                        continue;
                    }
                    this.state = LingerState::Draining(Box::pin(tokio::time::sleep(this.linger)));
                }
                LingerState::Draining(deadline) => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        this.state = LingerState::Closed;
                        continue;
                    }
                    let mut scratch = [0u8; 8192];
                    for _ in 0..DRAIN_READS_PER_POLL {
                        let mut buf = ReadBuf::new(&mut scratch);
                        match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                            // End of input or an error: the peer is gone either way.
                            Poll::Ready(_) => {
                                this.state = LingerState::Closed;
                                return Poll::Ready(Ok(()));
                            }
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                LingerState::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// A response body: up to three pieces sent one after the other, so that a result encoded
/// ahead by the handler goes out without being copied into the document (see
/// [`xml::response_pieces`]). hyper writes them with the head in one `writev`.
#[derive(Debug, Default)]
struct Body {
    pieces: [Bytes; 3],
    next: usize,
}

impl Body {
    fn remaining(&self) -> &[Bytes] {
        self.pieces.get(self.next..).unwrap_or_default()
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Body {
            pieces: [Bytes::from(bytes), Bytes::new(), Bytes::new()],
            next: 0,
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        while let Some(piece) = this.pieces.get_mut(this.next) {
            this.next += 1;
            if !piece.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(std::mem::take(piece)))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.remaining().iter().all(Bytes::is_empty)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining().iter().map(|p| p.len() as u64).sum())
    }
}

const TEXT_XML: &str = "text/xml";
const APPLICATION_JSON: &str = "application/json";

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Body>,
) -> Response<Body> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("Content-Type, X-Requested-With"),
    );
    r
}

#[derive(Clone, Copy)]
enum Route {
    Xml,
    Json,
}

async fn route<H: Handler>(
    shared: &Shared<H>,
    req: HttpRequest<Incoming>,
    peer: SocketAddr,
    tls: bool,
    unread: &AtomicBool,
) -> Response<Body> {
    let route = match (req.method(), req.uri().path()) {
        (&Method::POST, "/" | "/RPC2" | "/xmlrpc") => Route::Xml,
        (&Method::POST, "/jsonrpc") => Route::Json,
        (&Method::OPTIONS, _) => {
            let mut r = respond(StatusCode::OK, "text/plain", Vec::new());
            r.headers_mut().insert(
                "access-control-allow-methods",
                HeaderValue::from_static("POST, GET, OPTIONS"),
            );
            r.headers_mut()
                .insert("access-control-max-age", HeaderValue::from_static("86400"));
            return r;
        }
        (&Method::GET | &Method::HEAD, "/") => {
            return respond(
                StatusCode::OK,
                "text/html",
                b"<html><head><title>xenpool</title></head><body><p>XenAPI endpoint: XML-RPC at /, JSON-RPC at /jsonrpc.</p></body></html>".to_vec(),
            );
        }
        (&Method::GET, _) => return handler_get(shared, &req, peer, tls).await,
        (&Method::PUT, _) => return handler_put(shared, req, peer, tls, unread).await,
        _ => return respond(StatusCode::NOT_FOUND, "text/plain", b"not found".to_vec()),
    };

    let body = match read_body(shared, req).await {
        Ok(b) => b,
        Err((status, msg)) => {
            let err = Err(XenApiError::internal_error(msg));
            let mut r = match route {
                Route::Xml => respond(status, TEXT_XML, xml::encode_response(&err)),
                Route::Json => respond(
                    status,
                    APPLICATION_JSON,
                    json::encode_response(JsonVersion::V2, &Value::Nil, &err),
                ),
            };
            // The unread remainder of the body would be taken as the next request; it is
            // drained after the response instead (see `Lingering`).
            unread.store(true, Ordering::Relaxed);
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };

    match route {
        Route::Xml => {
            let out = match xml::decode_call(&body) {
                Ok(call) => {
                    let raw = call.method == "system.listMethods";
                    let ctx = CallContext {
                        peer,
                        protocol: Protocol::XmlRpc,
                        tls,
                    };
                    match dispatch(shared, ctx, call).await {
                        Ok(v) if raw => Body::from(xml::encode_raw_response(&v)),
                        result => Body {
                            pieces: xml::response_pieces(result),
                            next: 0,
                        },
                    }
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "undecodable XML-RPC request");
                    Body::from(xml::encode_response(&Err(XenApiError::internal_error(
                        e.to_string(),
                    ))))
                }
            };
            respond(StatusCode::OK, TEXT_XML, out)
        }
        Route::Json => {
            let out = match json::decode_request(&body) {
                Ok(req) => {
                    let ctx = CallContext {
                        peer,
                        protocol: req.version.into(),
                        tls,
                    };
                    let result = dispatch(shared, ctx, req.call).await;
                    json::encode_response(req.version, &req.id, &result)
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e.error, "undecodable JSON-RPC request");
                    let err = Err(XenApiError::internal_error(e.error.to_string()));
                    json::encode_response(e.version, &e.id, &err)
                }
            };
            respond(StatusCode::OK, APPLICATION_JSON, out)
        }
    }
}

async fn handler_get<H: Handler>(
    shared: &Shared<H>,
    req: &HttpRequest<Incoming>,
    peer: SocketAddr,
    tls: bool,
) -> Response<Body> {
    let get = HttpGet {
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
        authorization: req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        peer,
        tls,
    };
    let Some(answer) = shared.handler.get(get).await else {
        return respond(StatusCode::NOT_FOUND, "text/plain", b"not found".to_vec());
    };
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = respond(status, answer.content_type, answer.body);
    if let Some(challenge) = answer.www_authenticate {
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    r
}

async fn handler_put<H: Handler>(
    shared: &Shared<H>,
    req: HttpRequest<Incoming>,
    peer: SocketAddr,
    tls: bool,
    unread: &AtomicBool,
) -> Response<Body> {
    let finished = Arc::new(AtomicBool::new(false));
    let answer = match shared.in_flight.acquire().await {
        Ok(_permit) => {
            let (parts, body) = req.into_parts();
            let put = HttpPut {
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or("").to_string(),
                authorization: parts
                    .headers
                    .get(hyper::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                content_length: parts
                    .headers
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok()),
                peer,
                tls,
                body: PutBody {
                    inner: body,
                    idle_timeout: shared.limits.body_read_timeout,
                    finished: finished.clone(),
                },
            };
            shared.handler.put(put).await
        }
        Err(_) => Some(HttpAnswer {
            status: 503,
            content_type: "text/plain",
            body: b"server is shutting down".to_vec(),
            www_authenticate: None,
        }),
    };
    let mut r = match answer {
        Some(answer) => {
            let status =
                StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut r = respond(status, answer.content_type, answer.body);
            if let Some(challenge) = answer.www_authenticate {
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            r
        }
        None => respond(StatusCode::NOT_FOUND, "text/plain", b"not found".to_vec()),
    };
    if !finished.load(Ordering::Relaxed) {
        // As for an oversized call: what is left of the body would be taken as the next
        // request, so it is drained after the answer and the connection closed.
        unread.store(true, Ordering::Relaxed);
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

async fn read_body<H>(
    shared: &Shared<H>,
    req: HttpRequest<Incoming>,
) -> Result<Bytes, (StatusCode, String)> {
    let max = shared.limits.max_body_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {max} bytes"),
        ));
    }
    let mut body = std::pin::pin!(Limited::new(req.into_body(), max).collect());
    // A small request's body came in with its headers: only a body still on its way needs
    // the timer, which costs more than reading one that is there.
    let first = std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll(cx))).await;
    let read = match first {
        Poll::Ready(r) => Ok(r),
        Poll::Pending => tokio::time::timeout(shared.limits.body_read_timeout, body).await,
    };
    match read {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {max} bytes"),
        )),
        Ok(Err(e)) => Err((
            StatusCode::BAD_REQUEST,
            format!("reading request body: {e}"),
        )),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            "timed out reading the request body".to_owned(),
        )),
    }
}

async fn dispatch<H: Handler>(
    shared: &Shared<H>,
    ctx: CallContext,
    call: Call,
) -> Result<Value, XenApiError> {
    let permit = match shared.handler.classify(&call) {
        CallClass::Ordinary => shared.in_flight.acquire().await.ok(),
        CallClass::Internal => shared.internal.acquire().await.ok(),
        CallClass::LongPoll => match shared.long_polls.try_acquire() {
            Ok(p) => Some(p),
            Err(TryAcquireError::NoPermits) => {
                return Err(XenApiError::too_many_pending_tasks());
            }
            Err(TryAcquireError::Closed) => None,
        },
    };
    let Some(_permit) = permit else {
        return Err(XenApiError::internal_error("server is shutting down"));
    };
    if shared.handler.run_inline(&call) {
        return shared.handler.call(ctx, call).await;
    }
    let handler = shared.handler.clone();
    let method = call.method.clone();
    match tokio::spawn(async move { handler.call(ctx, call).await }).await {
        Ok(result) => result,
        Err(e) => {
            tracing::error!(%method, error = %e, "handler task failed");
            Err(XenApiError::internal_error(format!(
                "{method}: handler failed"
            )))
        }
    }
}

#[cfg(test)]
mod put_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers `PUT /sum` with the length and byte sum of the body, in pieces of at most
    /// what arrived at once; refuses `PUT /refuse` without reading the body.
    struct Summer;

    impl Handler for Summer {
        async fn call(&self, _ctx: CallContext, _call: Call) -> Result<Value, XenApiError> {
            Ok(Value::Nil)
        }

        async fn put(&self, mut request: HttpPut) -> Option<HttpAnswer> {
            let answer = |status, body: String| HttpAnswer {
                status,
                content_type: "text/plain",
                body: body.into_bytes(),
                www_authenticate: None,
            };
            match request.path.as_str() {
                "/sum" => {
                    let (mut len, mut sum) = (0u64, 0u64);
                    while let Some(piece) = request.body.chunk().await.ok()? {
                        len += piece.len() as u64;
                        sum += piece.iter().map(|b| u64::from(*b)).sum::<u64>();
                    }
                    Some(answer(
                        200,
                        format!("{len} {sum} {:?} {}", request.content_length, request.query),
                    ))
                }
                "/refuse" => Some(answer(401, "no".into())),
                _ => None,
            }
        }
    }

    async fn server() -> (SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = watch::channel(false);
        tokio::spawn(serve(
            listener,
            None,
            Arc::new(Summer),
            ServerLimits::default(),
            async move {
                let _ = rx.wait_for(|v| *v).await;
            },
        ));
        (addr, tx)
    }

    /// Sends `head` then `body` and reads the whole answer (the server closes or the
    /// answer says how long it is).
    async fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .unwrap()
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out);
            if let Some((h, b)) = text.split_once("\r\n\r\n") {
                let len = h
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if len.is_some_and(|len| b.len() >= len) {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_put_body_streams_to_the_handler_whole() {
        let (addr, _stop) = server().await;
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
        let head = format!(
            "PUT /sum?vdi=x HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let out = exchange(addr, &head, &body).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(
            out.ends_with(&format!("200000 {sum} Some(200000) vdi=x")),
            "{out}"
        );
        assert!(!out.contains("connection: close"), "{out}");

        // Chunked, without a length.
        let head = "PUT /sum HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n";
        let out = exchange(addr, head, b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").await;
        let sum: u64 = b"abcde".iter().map(|b| u64::from(*b)).sum();
        assert!(out.ends_with(&format!("5 {sum} None ")), "{out}");
    }

    #[tokio::test]
    async fn a_put_answered_before_its_body_closes_the_connection_and_unknown_paths_are_404() {
        let (addr, _stop) = server().await;
        let head = "PUT /refuse HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\n";
        let out = exchange(addr, head, b"hello").await;
        assert!(out.starts_with("HTTP/1.1 401"), "{out}");
        assert!(out.contains("connection: close"), "{out}");
        let head = "PUT /elsewhere HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n";
        let out = exchange(addr, head, b"").await;
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    }
}
