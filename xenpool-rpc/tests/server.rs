//! The server over loopback: both protocols, exact headers, hostile peers, TLS, and the
//! client following `HOST_IS_SLAVE` between two servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use xenpool_rpc::{
    serve, xml, Call, CallClass, CallContext, Client, Handler, Protocol, RpcError, ServerLimits,
    Value, XenApiError,
};

/// Echoes calls back, with a few methods that misbehave on purpose.
struct Echo;

impl Handler for Echo {
    async fn call(&self, ctx: CallContext, call: Call) -> Result<Value, XenApiError> {
        match call.method.as_str() {
            "test.fail" => Err(XenApiError::handle_invalid("VM", "OpaqueRef:nope")),
            "test.panic" | "test.inline_panic" => panic!("handler bug"),
            "test.slow" => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(Value::from("slow"))
            }
            "system.listMethods" => Ok(Value::Array(vec![Value::from("test.echo")])),
            _ => Ok(Value::structure([
                ("method", Value::from(call.method)),
                ("params", Value::Array(call.params)),
                (
                    "protocol",
                    Value::from(match ctx.protocol {
                        Protocol::XmlRpc => "xml",
                        Protocol::JsonRpc1 => "json1",
                        Protocol::JsonRpc2 => "json2",
                    }),
                ),
                ("tls", Value::Bool(ctx.tls)),
            ])),
        }
    }

    fn run_inline(&self, call: &Call) -> bool {
        call.method.starts_with("test.inline")
    }
}

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap();
    }
}

async fn start_on<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Running {
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, tls, handler, limits, async {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}

async fn start(limits: ServerLimits) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_on(listener, Arc::new(Echo), limits, None).await
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

fn content_type(r: &reqwest::Response) -> String {
    r.headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn xml_rpc_on_every_path() {
    let srv = start(ServerLimits::default()).await;
    for path in ["", "RPC2", "xmlrpc"] {
        let body = xml::encode_call("test.echo", &[Value::from("OpaqueRef:s"), Value::Int(5)]);
        let r = http()
            .post(format!("{}{path}", srv.url()))
            .header("content-type", "application/xml; charset=utf-8")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(content_type(&r), "text/xml");
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        let v = xml::decode_response(&r.bytes().await.unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(v.get("method"), Some(&Value::from("test.echo")));
        assert_eq!(
            v.get("params"),
            Some(&Value::Array(vec![
                Value::from("OpaqueRef:s"),
                Value::Int(5)
            ]))
        );
        assert_eq!(v.get("protocol"), Some(&Value::from("xml")));
    }
    // Failure envelope, and a handler panic costs only that call.
    let r = http()
        .post(srv.url())
        .body(xml::encode_call("test.fail", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        xml::decode_response(&r.bytes().await.unwrap()).unwrap(),
        Err(XenApiError::handle_invalid("VM", "OpaqueRef:nope"))
    );
    let r = http()
        .post(srv.url())
        .body(xml::encode_call("test.panic", &[]))
        .send()
        .await
        .unwrap();
    let e = xml::decode_response(&r.bytes().await.unwrap())
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, "INTERNAL_ERROR");
    // system.listMethods comes back without the envelope, as from xapi.
    let r = http()
        .post(srv.url())
        .body(xml::encode_call("system.listMethods", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        xml::decode_raw_response(&r.bytes().await.unwrap()).unwrap(),
        xml::RawResponse::Params(Value::Array(vec![Value::from("test.echo")]))
    );
    srv.stop().await;
}

#[tokio::test]
async fn json_rpc_shapes_and_headers() {
    let srv = start(ServerLimits::default()).await;
    let url = format!("{}jsonrpc", srv.url());
    let post = |body: &'static str| {
        http()
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // What Xen Orchestra sends (json-rpc-protocol's format.request(0, method, args)).
    let r = post(r#"{"jsonrpc":"2.0","method":"test.echo","params":["OpaqueRef:s"],"id":0}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(content_type(&r), "application/json");
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["id"], 0);
    assert_eq!(v["result"]["method"], "test.echo");
    assert_eq!(v["result"]["protocol"], "json2");
    assert!(v.get("error").is_none());

    let r = post(r#"{"jsonrpc":"2.0","method":"test.fail","params":[],"id":"x"}"#)
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"jsonrpc":"2.0","error":{"code":1,"message":"HANDLE_INVALID","data":["VM","OpaqueRef:nope"]},"id":"x"})
    );

    let r = post(r#"{"method":"test.echo","params":[1],"id":3}"#)
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], serde_json::Value::Null);
    assert_eq!(v["result"]["protocol"], "json1");
    assert_eq!(v["id"], 3);

    let r = post(r#"{"method":"test.fail","params":[],"id":4}"#)
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"result":null,"error":["HANDLE_INVALID","VM","OpaqueRef:nope"],"id":4})
    );

    // Malformed JSON: still a JSON-RPC error, still application/json.
    let r = post(r#"{"jsonrpc":"2.0","method":"#).await.unwrap();
    assert_eq!(content_type(&r), "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "INTERNAL_ERROR");

    // CORS preflight from a browser.
    let r = http()
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://xo.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert!(r.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    srv.stop().await;
}

#[tokio::test]
async fn plain_pages() {
    let srv = start(ServerLimits::default()).await;
    let r = http().get(srv.url()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http()
        .get(format!("{}nowhere", srv.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http()
        .post(format!("{}nowhere", srv.url()))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    srv.stop().await;
}

#[tokio::test]
async fn oversized_body_gets_413_and_an_error() {
    let limits = ServerLimits {
        max_body_bytes: 1024,
        ..ServerLimits::default()
    };
    let srv = start(limits).await;
    let big = xml::encode_call("test.echo", &[Value::from("x".repeat(4096))]);
    let r = http().post(srv.url()).body(big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(content_type(&r), "text/xml");
    let e = xml::decode_response(&r.bytes().await.unwrap())
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, "INTERNAL_ERROR");

    // Chunked, so no Content-Length to refuse up front.
    let mut sock = TcpStream::connect(srv.addr).await.unwrap();
    sock.write_all(b"POST /jsonrpc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..8 {
        let chunk = [b' '; 512];
        if sock.write_all(b"200\r\n").await.is_err()
            || sock.write_all(&chunk).await.is_err()
            || sock.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let out = read_all(sock).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        text.contains("content-type: application/json\r\n"),
        "{text}"
    );

    // The server is still fine.
    let r = http()
        .post(srv.url())
        .body(xml::encode_call("test.echo", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    srv.stop().await;
}

async fn read_all(mut s: TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn truncated_and_garbage_requests() {
    let limits = ServerLimits {
        body_read_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let srv = start(limits).await;

    // Body shorter than announced, then the client stops sending: 408 after the timeout.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n<methodCall>")
        .await
        .unwrap();
    let out = read_all(s).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("content-type: text/xml"), "{text}");

    // Body shorter than announced and the client hangs up its sending side.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST /jsonrpc HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"method\"")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let _ = read_all(s).await;

    // A truncated but complete-length XML document: an XML-RPC failure.
    let body = b"<methodCall><methodName>a.b</methodName><params><param><value>";
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(body).await.unwrap();
    let out = read_all(s).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("<value>Failure</value>"), "{text}");

    // Not HTTP at all: the connection is closed.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n")
        .await
        .unwrap();
    let out = read_all(s).await;
    assert!(out.is_empty() || out.starts_with(b"HTTP/1.1 400"));

    // Everyone else is still served.
    let c = Client::new(&srv.url()).unwrap();
    let v = c.call("test.echo", vec![]).await.unwrap();
    assert_eq!(v.get("method"), Some(&Value::from("test.echo")));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_while_a_bad_one_is_connected() {
    let limits = ServerLimits {
        max_in_flight: 4,
        ..ServerLimits::default()
    };
    let srv = start(limits).await;

    // A slow-loris peer: half a request line, then nothing.
    let mut loris = TcpStream::connect(srv.addr).await.unwrap();
    loris.write_all(b"POST / HTTP/1.1\r\nHost: ").await.unwrap();
    // A peer that announced a large body and sends it a byte at a time.
    let mut dribbler = TcpStream::connect(srv.addr).await.unwrap();
    dribbler
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n<")
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for i in 0..16 {
        let url = srv.url();
        tasks.push(tokio::spawn(async move {
            let c = Client::builder(&url).json_rpc(i % 2 == 0).build().unwrap();
            for j in 0..20 {
                let method = if j % 5 == 0 { "test.slow" } else { "test.echo" };
                let v = c.call(method, vec![Value::Int(j)]).await.unwrap();
                if method == "test.echo" {
                    assert_eq!(v.get("params"), Some(&Value::Array(vec![Value::Int(j)])));
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("clients finish despite the bad peers")
            .unwrap();
    }
    drop(loris);
    drop(dribbler);
    srv.stop().await;
}

#[tokio::test]
async fn tls_with_a_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let config = xenpool_rpc::load_or_create_certificate(dir.path(), &names).unwrap();
    let cert_path = xenpool_rpc::tls::certificate_path(dir.path());
    let cert = std::fs::read(&cert_path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(xenpool_rpc::tls::KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A second start reuses the stored pair.
    let _again = xenpool_rpc::load_or_create_certificate(dir.path(), &names).unwrap();
    assert_eq!(std::fs::read(&cert_path).unwrap(), cert);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let srv = start_on(
        listener,
        Arc::new(Echo),
        ServerLimits::default(),
        Some(config),
    )
    .await;
    let url = format!("https://{}/", srv.addr);

    let trusted = Client::builder(&url).trust_pem(cert).build().unwrap();
    let v = trusted.call("test.echo", vec![]).await.unwrap();
    assert_eq!(v.get("tls"), Some(&Value::Bool(true)));

    let any = Client::builder(&url)
        .accept_invalid_certs(true)
        .json_rpc(true)
        .build()
        .unwrap();
    let v = any.call("test.echo", vec![]).await.unwrap();
    assert_eq!(v.get("protocol"), Some(&Value::from("json2")));

    // Without trust the handshake fails, and the server carries on.
    let strict = Client::new(&url).unwrap();
    assert!(matches!(
        strict.call("test.echo", vec![]).await,
        Err(RpcError::Http(_))
    ));
    let v = trusted.call("test.echo", vec![]).await.unwrap();
    assert_eq!(v.get("tls"), Some(&Value::Bool(true)));

    // Half a certificate pair is refused rather than replaced.
    std::fs::remove_file(dir.path().join(xenpool_rpc::tls::KEY_FILE)).unwrap();
    assert!(xenpool_rpc::load_or_create_certificate(dir.path(), &names).is_err());
    srv.stop().await;
}

/// One host of a two-host test pool: answers control calls only while coordinator,
/// otherwise redirects to `other`. Sessions are only valid on the host that issued them.
struct PoolHost {
    name: &'static str,
    other: &'static str,
    coordinator: Arc<AtomicBool>,
    is_first: bool,
    logins: AtomicUsize,
}

impl PoolHost {
    fn is_coordinator(&self) -> bool {
        self.coordinator.load(Ordering::SeqCst) == self.is_first
    }
}

impl Handler for PoolHost {
    async fn call(&self, _ctx: CallContext, call: Call) -> Result<Value, XenApiError> {
        if !self.is_coordinator() {
            return Err(XenApiError::host_is_slave(self.other));
        }
        let req = call.into_request()?;
        if req.class == "session" && req.message == "login_with_password" {
            let mut p = req.reader_range(2, 4)?;
            let user = p.string("uname")?;
            let n = self.logins.fetch_add(1, Ordering::SeqCst);
            return Ok(Value::from(format!("OpaqueRef:{}-{user}-{n}", self.name)));
        }
        let session = req.session_ref()?;
        if !session.starts_with(&format!("OpaqueRef:{}-", self.name)) {
            return Err(XenApiError::session_invalid(session));
        }
        Ok(Value::from(self.name))
    }
}

#[tokio::test]
async fn client_follows_host_is_slave() {
    for json in [false, true] {
        // Same port, two loopback addresses: the redirect keeps scheme and port.
        let a_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = a_listener.local_addr().unwrap().port();
        let Ok(b_listener) = TcpListener::bind(("127.0.0.2", port)).await else {
            eprintln!("127.0.0.2:{port} unavailable; skipping");
            return;
        };
        // `false`: 127.0.0.1 is the coordinator; flipping it moves the role.
        let role = Arc::new(AtomicBool::new(true));
        let a = Arc::new(PoolHost {
            name: "a",
            other: "127.0.0.2",
            coordinator: role.clone(),
            is_first: true,
            logins: AtomicUsize::new(0),
        });
        let b = Arc::new(PoolHost {
            name: "b",
            other: "127.0.0.1",
            coordinator: role.clone(),
            is_first: false,
            logins: AtomicUsize::new(0),
        });
        let sa = start_on(a_listener, a.clone(), ServerLimits::default(), None).await;
        let sb = start_on(b_listener, b.clone(), ServerLimits::default(), None).await;

        // Start at the member: login is redirected to the coordinator.
        let client = Client::builder(&format!("http://127.0.0.2:{port}/"))
            .json_rpc(json)
            .build()
            .unwrap();
        let session = client.login_with_password("root", "pw").await.unwrap();
        assert!(session.starts_with("OpaqueRef:a-root-"), "{session}");
        assert_eq!(client.url(), format!("http://127.0.0.1:{port}/"));
        let v = client
            .call("VM.get_all", vec![Value::from(session.as_str())])
            .await
            .unwrap();
        assert_eq!(v, Value::from("a"));

        // The coordinator role moves: the old session is useless on the new host, so the
        // client logs in again there and retries with the new session.
        role.store(false, Ordering::SeqCst);
        let v = client
            .call("VM.get_all", vec![Value::from(session.as_str())])
            .await
            .unwrap();
        assert_eq!(v, Value::from("b"));
        assert_eq!(b.logins.load(Ordering::SeqCst), 1);
        assert!(client.session().unwrap().starts_with("OpaqueRef:b-root-"));
        assert_eq!(client.url(), format!("http://127.0.0.2:{port}/"));

        sa.stop().await;
        sb.stop().await;
    }
}

#[tokio::test]
async fn redirect_loops_are_bounded() {
    struct AlwaysSlave(String);
    impl Handler for AlwaysSlave {
        async fn call(&self, _: CallContext, _: Call) -> Result<Value, XenApiError> {
            Err(XenApiError::host_is_slave(&self.0))
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let srv = start_on(
        listener,
        Arc::new(AlwaysSlave("127.0.0.1".into())),
        ServerLimits::default(),
        None,
    )
    .await;
    let client = Client::builder(&srv.url())
        .max_redirects(2)
        .build()
        .unwrap();
    assert!(matches!(
        client.login_with_password("root", "pw").await,
        Err(RpcError::TooManyRedirects(2))
    ));
    srv.stop().await;
}

#[tokio::test]
async fn inline_calls_answer_and_a_panic_costs_only_its_connection() {
    let server = start(ServerLimits::default()).await;
    let client = xenpool_rpc::Client::new(&server.url()).unwrap();
    let v = client
        .call("test.inline", vec![Value::from("x")])
        .await
        .unwrap();
    assert_eq!(v.get("method"), Some(&Value::from("test.inline")));
    // A panic in a call run on the connection's task closes that connection...
    assert!(client.call("test.inline_panic", vec![]).await.is_err());
    // ...and the server goes on serving.
    let again = xenpool_rpc::Client::new(&server.url()).unwrap();
    let v = again.call("test.echo", vec![]).await.unwrap();
    assert_eq!(v.get("method"), Some(&Value::from("test.echo")));
    server.stop().await;
}

/// Reads one response head and its `Content-Length` body from `sock`.
async fn read_response(sock: &mut (impl AsyncReadExt + Unpin)) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = sock.read(&mut byte).await.expect("response head");
        assert_eq!(n, 1, "connection closed inside the head: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).expect("ascii head");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("content-length")
        .trim()
        .parse()
        .expect("a length");
    let mut body = vec![0u8; len];
    sock.read_exact(&mut body).await.expect("response body");
    (head, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_oversized_body_is_answered_413_from_its_headers() {
    let srv = start(ServerLimits::default()).await;
    let declared: usize = 64 * 1024 * 1024;
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: {declared}\r\n\r\n"
    );
    let chunk = vec![b' '; 64 * 1024];

    // The answer comes from the headers: the client has sent a sliver of its body and
    // waits for nothing more than the response.
    let mut sock = TcpStream::connect(srv.addr).await.unwrap();
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&chunk).await.unwrap();
    let (head_in, body) = tokio::time::timeout(Duration::from_secs(30), read_response(&mut sock))
        .await
        .expect("a response before the body is sent");
    assert!(head_in.starts_with("HTTP/1.1 413"), "{head_in}");
    assert!(head_in.contains("content-type: text/xml\r\n"), "{head_in}");
    assert!(head_in.contains("connection: close\r\n"), "{head_in}");
    let e = xml::decode_response(&body).unwrap().unwrap_err();
    assert_eq!(e.code, "INTERNAL_ERROR");
    // The rest of the body is taken and dropped, then the server closes cleanly: an end
    // of stream, not a reset.
    let (mut rd, mut wr) = sock.into_split();
    let rest = tokio::spawn(async move {
        let mut sent = chunk.len();
        while sent < declared {
            wr.write_all(&chunk).await?;
            sent += chunk.len();
        }
        wr.shutdown().await
    });
    let mut tail = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut tail))
        .await
        .expect("the server closes")
        .expect("a clean close");
    assert!(tail.is_empty(), "{tail:?}");
    rest.await.unwrap().expect("the whole body was accepted");

    // A client that sends its whole request before reading anything still reads the 413.
    let mut sock = TcpStream::connect(srv.addr).await.unwrap();
    sock.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent < declared {
        sock.write_all(&chunk)
            .await
            .expect("the server takes the body");
        sent += chunk.len();
    }
    let (head_in, _) = tokio::time::timeout(Duration::from_secs(30), read_response(&mut sock))
        .await
        .expect("a response");
    assert!(head_in.starts_with("HTTP/1.1 413"), "{head_in}");
    drop(sock);

    // hyper's client (under reqwest and our Client) fails the request if writing the body
    // breaks before it reads the response, which is what an abrupt close made happen.
    let body = Bytes::from(vec![b' '; declared]);
    for _ in 0..3 {
        let r = http().post(srv.url()).body(body.clone()).send().await;
        assert_eq!(r.expect("a response").status(), 413);
    }
    srv.stop().await;
}

/// Parks `test.park` calls and blocks `test.block` calls until released, counting each as
/// it starts, so a test knows what holds which budget.
struct Budgeted {
    parked: tokio::sync::watch::Sender<usize>,
    blocked: tokio::sync::watch::Sender<usize>,
    release: tokio::sync::watch::Sender<bool>,
}

impl Handler for Budgeted {
    async fn call(&self, _ctx: CallContext, call: Call) -> Result<Value, XenApiError> {
        let counter = match call.method.as_str() {
            "test.park" => &self.parked,
            "test.block" => &self.blocked,
            other => return Ok(Value::from(other)),
        };
        counter.send_modify(|n| *n += 1);
        let mut release = self.release.subscribe();
        let _ = release.wait_for(|r| *r).await;
        Ok(Value::from("released"))
    }

    fn classify(&self, call: &Call) -> CallClass {
        match call.method.as_str() {
            "test.park" => CallClass::LongPoll,
            "test.internal" => CallClass::Internal,
            _ => CallClass::Ordinary,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_and_internal_calls_have_budgets_of_their_own() {
    let handler = Arc::new(Budgeted {
        parked: tokio::sync::watch::channel(0).0,
        blocked: tokio::sync::watch::channel(0).0,
        release: tokio::sync::watch::channel(false).0,
    });
    let limits = ServerLimits {
        max_in_flight: 2,
        max_long_polls: 3,
        max_internal_in_flight: 1,
        max_connections: 64,
        ..ServerLimits::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let srv = start_on(listener, handler.clone(), limits, None).await;
    let client = Arc::new(Client::new(&srv.url()).unwrap());
    let spawn = |method: &'static str| {
        let c = client.clone();
        tokio::spawn(async move { c.call(method, vec![]).await })
    };
    let bound = Duration::from_secs(30);

    // Three long-polls park and the fourth is refused, with xapi's code for it.
    let parks: Vec<_> = (0..3).map(|_| spawn("test.park")).collect();
    let mut parked = handler.parked.subscribe();
    tokio::time::timeout(bound, parked.wait_for(|n| *n == 3))
        .await
        .expect("three parked")
        .unwrap();
    let refused = tokio::time::timeout(bound, client.call("test.park", vec![]))
        .await
        .expect("refused at once")
        .unwrap_err();
    assert_eq!(
        refused.api().expect("a XenAPI error").description(),
        vec![xenpool_rpc::TOO_MANY_PENDING_TASKS.to_string()]
    );

    // Parked calls hold none of the ordinary slots.
    let r = tokio::time::timeout(bound, client.call("test.echo", vec![]))
        .await
        .expect("an ordinary call answers")
        .unwrap();
    assert_eq!(r, Value::from("test.echo"));

    // With every ordinary slot taken, an ordinary call waits but an internal one runs.
    let blocks: Vec<_> = (0..2).map(|_| spawn("test.block")).collect();
    let mut blocked = handler.blocked.subscribe();
    tokio::time::timeout(bound, blocked.wait_for(|n| *n == 2))
        .await
        .expect("two blocked")
        .unwrap();
    let waiting = spawn("test.echo");
    let r = tokio::time::timeout(bound, client.call("test.internal", vec![]))
        .await
        .expect("an internal call answers")
        .unwrap();
    assert_eq!(r, Value::from("test.internal"));
    assert!(
        !waiting.is_finished(),
        "an ordinary call got past a full budget"
    );
    assert!(
        parks.iter().all(|p| !p.is_finished()),
        "a parked call ended"
    );

    // Released, everything finishes, and the long-poll budget is whole again.
    handler.release.send_replace(true);
    for h in parks.into_iter().chain(blocks) {
        let r = tokio::time::timeout(bound, h).await.expect("released");
        assert_eq!(r.unwrap().unwrap(), Value::from("released"));
    }
    let r = tokio::time::timeout(bound, waiting)
        .await
        .expect("answered");
    assert_eq!(r.unwrap().unwrap(), Value::from("test.echo"));
    let again: Vec<_> = (0..3).map(|_| spawn("test.park")).collect();
    for h in again {
        let r = tokio::time::timeout(bound, h).await.expect("parks again");
        assert_eq!(r.unwrap().unwrap(), Value::from("released"));
    }
    srv.stop().await;
}
