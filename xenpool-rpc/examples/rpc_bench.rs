//! Calls per second over loopback with keep-alive, in one run:
//! (a) our server, XML-RPC `VM.get_record` returning a ~60-field record;
//! (b) the same call over JSON-RPC;
//! (c) a bare hyper server answering a fixed body of (a)'s response size;
//! (d) for reference, our server answering a call whose result is one short string, which
//!     separates the server's own cost from building, encoding and freeing the record.
//!
//! `cargo run --release -p xenpool-rpc --example rpc_bench [seconds] [connections] [rounds]`
//!
//! With `--daemon URL PASSWORD_FILE [seconds] [connections] [rounds]` it measures a running
//! xenpoold instead, twice: with load from a multi-threaded runtime, and wrk-style (one
//! load thread, as `wrk -t1 -c<connections>` with a fixed POST body), whose figures are
//! comparable to wrk's.
//!
//! With `--wrk-lua URL PASSWORD_FILE` it prints a script for the real `wrk` that POSTs the
//! same `VM.get_record` call (`wrk -t1 -c8 -d10s -s get_record.lua URL`); `--bare PORT SIZE`
//! runs the bare server alone, to point `wrk` at with the same script.
//!
//! With `--micro` it times the server's own per-call work without sockets (decoding the
//! call, streaming the record, the response envelope), best of many short batches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use xenpool_rpc::json::{self, JsonVersion};
use xenpool_rpc::{
    serve, xml, Call, CallContext, Handler, ServerLimits, Value, ValueWriter, XenApiError,
    XmlWriter,
};

fn s(v: &str) -> Value {
    Value::from(v)
}

fn refs(prefix: &str, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| {
                Value::String(format!(
                    "OpaqueRef:{prefix}{i:04}-6ea6-4f2b-9e44-2b8d7f9d0c11"
                ))
            })
            .collect(),
    )
}

fn map(pairs: &[(&str, &str)]) -> Value {
    Value::structure(pairs.iter().map(|(k, v)| (*k, s(v))))
}

/// A `VM.get_record` result shaped like xapi's: 64-bit ints as strings, refs, sets, maps.
fn vm_record() -> Value {
    let m: Vec<(&str, Value)> = vec![
        ("uuid", s("0b5e3c9a-3f2f-4d3b-9a57-0d4c1f2e6a11")),
        ("allowed_operations", Value::Array(["changing_dynamic_range", "hard_reboot", "hard_shutdown", "pause", "snapshot", "suspend", "clean_reboot", "clean_shutdown", "migrate_send", "checkpoint"].iter().map(|o| s(o)).collect())),
        ("current_operations", Value::structure::<&str>([])),
        ("name_label", s("web-frontend-03 <prod> & co")),
        ("name_description", s("Debian 12 web server, autoscaled group B")),
        ("power_state", s("Running")),
        ("user_version", s("1")),
        ("is_a_template", Value::Bool(false)),
        ("is_default_template", Value::Bool(false)),
        ("suspend_VDI", s("OpaqueRef:NULL")),
        ("resident_on", s("OpaqueRef:1c7a1f0e-5b4d-4c1e-8f2a-3d9e6b7c8a90")),
        ("scheduled_to_be_resident_on", s("OpaqueRef:NULL")),
        ("affinity", s("OpaqueRef:NULL")),
        ("memory_overhead", s("11534336")),
        ("memory_target", s("4294967296")),
        ("memory_static_max", s("4294967296")),
        ("memory_dynamic_max", s("4294967296")),
        ("memory_dynamic_min", s("4294967296")),
        ("memory_static_min", s("1073741824")),
        ("VCPUs_params", map(&[("weight", "256"), ("cap", "0")])),
        ("VCPUs_max", s("4")),
        ("VCPUs_at_startup", s("4")),
        ("actions_after_shutdown", s("destroy")),
        ("actions_after_reboot", s("restart")),
        ("actions_after_crash", s("restart")),
        ("consoles", refs("c", 1)),
        ("VIFs", refs("vif", 2)),
        ("VBDs", refs("vbd", 3)),
        ("VUSBs", Value::Array(vec![])),
        ("crash_dumps", Value::Array(vec![])),
        ("VTPMs", Value::Array(vec![])),
        ("PV_bootloader", s("")),
        ("PV_kernel", s("")),
        ("PV_ramdisk", s("")),
        ("PV_args", s("")),
        ("PV_bootloader_args", s("")),
        ("PV_legacy_args", s("")),
        ("HVM_boot_policy", s("BIOS order")),
        ("HVM_boot_params", map(&[("order", "cdn"), ("firmware", "bios")])),
        ("HVM_shadow_multiplier", Value::Double(1.0)),
        ("platform", map(&[("timeoffset", "0"), ("device-model", "qemu-upstream-compat"), ("viridian", "true"), ("acpi", "1"), ("apic", "true"), ("pae", "true"), ("nx", "true"), ("cores-per-socket", "2")])),
        ("PCI_bus", s("")),
        ("other_config", map(&[("base_template_name", "Debian Bookworm 12"), ("import_task", "OpaqueRef:NULL"), ("mac_seed", "7a0c3f63-9b1d-4ce2-a0d5-5f6b2c9e1a77"), ("install-methods", "cdrom,nfs,http,ftp"), ("linux_template", "true"), ("folder", "/prod/web")])),
        ("domid", s("17")),
        ("domarch", s("x64")),
        ("last_boot_CPU_flags", map(&[("vendor", "GenuineIntel"), ("features", "1fcbfbff-f7fa3223-2d93fbff-00000523-00000001-029c6fbf-00000000-00000000-00001000-ac000400-00000000-00000000")])),
        ("is_control_domain", Value::Bool(false)),
        ("metrics", s("OpaqueRef:3b2d9c1e-7f6a-4e5d-8c9b-0a1f2e3d4c5b")),
        ("guest_metrics", s("OpaqueRef:4c3e0d2f-8a7b-4f6e-9dac-1b2a3f4e5d6c")),
        ("last_booted_record", s("")),
        ("recommendations", s("<restrictions><restriction field=\"memory-static-max\" max=\"1649267441664\"/><restriction field=\"vcpus-max\" max=\"512\"/></restrictions>")),
        ("xenstore_data", map(&[("vm-data", ""), ("vm-data/mmio-hole-size", "268435456")])),
        ("ha_always_run", Value::Bool(true)),
        ("ha_restart_priority", s("restart")),
        ("is_a_snapshot", Value::Bool(false)),
        ("snapshot_of", s("OpaqueRef:NULL")),
        ("snapshots", refs("snap", 2)),
        ("snapshot_time", Value::DateTime("19700101T00:00:00Z".into())),
        ("transportable_snapshot_id", s("")),
        ("blobs", Value::structure::<&str>([])),
        ("tags", Value::Array(vec![s("web"), s("prod"), s("autoscale")])),
        ("blocked_operations", Value::structure::<&str>([])),
        ("start_time", Value::DateTime("20261123T12:00:00Z".into())),
        ("start_delay", s("0")),
        ("shutdown_delay", s("0")),
        ("order", s("0")),
        ("VGPUs", Value::Array(vec![])),
        ("attached_PCIs", Value::Array(vec![])),
        ("suspend_SR", s("OpaqueRef:NULL")),
        ("version", s("0")),
        ("generation_id", s("0:0")),
        ("hardware_platform_version", s("0")),
        ("has_vendor_device", Value::Bool(false)),
        ("requires_reboot", Value::Bool(false)),
        ("reference_label", s("debian-12")),
        ("domain_type", s("hvm")),
        ("NVRAM", Value::structure::<&str>([])),
        ("pending_guidances", Value::Array(vec![])),
    ];
    Value::structure(m)
}

struct Bench {
    record: Value,
}

impl Handler for Bench {
    async fn call(&self, _ctx: CallContext, call: Call) -> Result<Value, XenApiError> {
        let req = call.into_request()?;
        let mut p = req.reader(2)?;
        let _session = p.string("session_id")?;
        let _vm = p.string("self")?;
        if req.message == "get_uuid" {
            return Ok(Value::from("0b5e3c9a-3f2f-4d3b-9a57-0d4c1f2e6a11"));
        }
        Ok(self.record.clone())
    }
}

fn http_request(path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Sends `request` over one keep-alive connection until `stop`, counting responses.
async fn load(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        sock.write_all(&request).await.unwrap();
        let mut have = 0;
        let (header_end, len) = loop {
            let n = sock.read(&mut buf[have..]).await.unwrap();
            assert!(n > 0, "server closed the connection");
            have += n;
            if let Some(pos) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&buf[..pos])
                    .unwrap()
                    .to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "{head}");
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                break (pos + 4, len);
            }
        };
        if buf.len() < header_end + len {
            buf.resize(header_end + len, 0);
        }
        while have < header_end + len {
            let n = sock.read(&mut buf[have..]).await.unwrap();
            assert!(n > 0, "server closed the connection");
            have += n;
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

async fn measure(addr: SocketAddr, request: Vec<u8>, conns: usize, secs: f64) -> f64 {
    let request = Arc::new(request);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(load(addr, request.clone(), stop.clone(), done.clone())))
        .collect();
    // Warm up connections and caches before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start_count = done.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let n = done.load(Ordering::Relaxed) - start_count;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / elapsed
}

/// wrk's way of loading a server: one thread driving every connection, each sending the
/// same request again as soon as the last answer is in. The load then takes one core, as
/// `wrk -t1` does, and leaves the rest to the server.
async fn measure_wrk(addr: SocketAddr, request: Vec<u8>, conns: usize, secs: f64) -> f64 {
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(measure(addr, request, conns, secs))
    })
    .await
    .unwrap()
}

async fn bare_server(listener: TcpListener, body: Bytes) {
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let body = body.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let body = body.clone();
                async move {
                    // Read the request like a real server would.
                    let _ = req.into_body().collect().await;
                    let mut r = hyper::Response::new(Full::new(body));
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/xml"),
                    );
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The XML-RPC `VM.get_record` call of the daemon's `demo-vm`, with a fresh session.
async fn daemon_get_record(client: &xenpool_rpc::Client, password: &str) -> Vec<Value> {
    let session = client.login_with_password("root", password).await.unwrap();
    let vm = match client
        .call("VM.get_by_name_label", vec![s(&session), s("demo-vm")])
        .await
        .unwrap()
    {
        Value::Array(mut v) => v.remove(0),
        other => panic!("no demo-vm: {other:?}"),
    };
    vec![s(&session), vm]
}

/// Measures a running xenpoold: `VM.get_record` of its `demo-vm` over XML-RPC and
/// JSON-RPC, against a bare hyper server answering a fixed body of the daemon's response
/// size, in the same run.
async fn against_daemon(url: &str, password: &str, secs: f64, conns: usize, rounds: usize) {
    let client = xenpool_rpc::Client::new(url).unwrap();
    let params = daemon_get_record(&client, password).await;
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let xml_req = http_request("/", "text/xml", &xml::encode_call("VM.get_record", &params));
    let json_req = http_request(
        "/jsonrpc",
        "application/json",
        &json::encode_request(JsonVersion::V2, 0, "VM.get_record", &params),
    );
    // One call to learn the size of the daemon's answer.
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(&xml_req).await.unwrap();
    let mut body = Vec::new();
    let mut buf = vec![0u8; 65536];
    let size = loop {
        let n = sock.read(&mut buf).await.unwrap();
        body.extend_from_slice(&buf[..n]);
        if let Some(pos) = body.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&body[..pos]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            break len;
        }
    };
    drop(sock);
    // The bare server runs in a process of its own, as the daemon does, so both pay the
    // same cross-process scheduling.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut bare_child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--bare", &port.to_string(), &size.to_string()])
        .spawn()
        .unwrap();
    let bare_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    while TcpStream::connect(bare_addr).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("xenpoold at {url}: VM.get_record answer {size} bytes; {conns} keep-alive connections, {secs} s each");
    let mut rows: [Vec<f64>; 5] = Default::default();
    for round in 1..=rounds {
        let a = measure(addr, xml_req.clone(), conns, secs).await;
        let b = measure(addr, json_req.clone(), conns, secs).await;
        let c = measure(bare_addr, xml_req.clone(), conns, secs).await;
        let wa = measure_wrk(addr, xml_req.clone(), conns, secs).await;
        let wc = measure_wrk(bare_addr, xml_req.clone(), conns, secs).await;
        println!("round {round}: XML-RPC {a:.0}/s  JSON-RPC {b:.0}/s  bare {c:.0}/s  a/c {:.2}  b/c {:.2}; wrk-style: XML-RPC {wa:.0}/s  bare {wc:.0}/s  ratio {:.2}", a / c, b / c, wa / wc);
        for (row, v) in rows.iter_mut().zip([a, b, c, wa, wc]) {
            row.push(v);
        }
    }
    let [a, b, c, wa, wc] = rows.map(median);
    println!();
    println!("| xenpoold `VM.get_record` | calls/s (median of {rounds}) | vs bare hyper |");
    println!("|---|---:|---:|");
    println!("| XML-RPC | {a:.0} | {:.2} |", a / c);
    println!("| JSON-RPC | {b:.0} | {:.2} |", b / c);
    println!("| bare hyper (own process), fixed {size} B body | {c:.0} | 1.00 |");
    println!(
        "| wrk-style (1 load thread, {conns} connections): XML-RPC | {wa:.0} | {:.2} |",
        wa / wc
    );
    println!("| wrk-style (1 load thread, {conns} connections): bare hyper | {wc:.0} | 1.00 |");
    let _ = bare_child.kill();
    let _ = bare_child.wait();
}

/// Nanoseconds per iteration of `f`: the best of many short batches, as a shared machine
/// lets few of them run undisturbed.
fn time_ns(iters: u32, mut f: impl FnMut()) -> f64 {
    let iters = (iters / 40).max(1);
    (0..200)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(iters)
        })
        .fold(f64::INFINITY, f64::min)
}

/// `--micro`: the per-call work of the server's own code, without sockets: decoding the
/// `VM.get_record` call, streaming the record through the [`ValueWriter`] as a handler
/// does, and wrapping it in the response envelope.
fn micro() {
    let record = vm_record();
    let params = [
        s("OpaqueRef:6a1b3e0c-6ea6-4f2b-9e44-2b8d7f9d0c11"),
        s("OpaqueRef:0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"),
    ];
    let call = xml::encode_call("VM.get_record", &params);
    let pretty = String::from_utf8(call.clone())
        .unwrap()
        .replace("<param>", "\n  <param>\n    ")
        .replace("<value>", "<value><string>")
        .replace("</value>", "</string></value>");
    let decode = time_ns(200_000, || {
        std::hint::black_box(xml::decode_call(std::hint::black_box(&call)).unwrap());
    });
    let decode_pretty = time_ns(200_000, || {
        std::hint::black_box(xml::decode_call(std::hint::black_box(pretty.as_bytes())).unwrap());
    });
    let write = time_ns(50_000, || {
        let mut w = XmlWriter::with_capacity(8192);
        w.value(std::hint::black_box(&record));
        std::hint::black_box(w.finish().unwrap());
    });
    let mut w = XmlWriter::with_capacity(8192);
    w.value(&record);
    let encoded = Value::Encoded(w.finish().unwrap());
    let envelope = time_ns(50_000, || {
        std::hint::black_box(xml::encode_response(std::hint::black_box(&Ok(
            encoded.clone()
        ))));
    });
    let clone = time_ns(50_000, || {
        std::hint::black_box(encoded.clone());
    });
    println!("decode_call (compact, {} B): {decode:.0} ns", call.len());
    println!(
        "decode_call (xmlrpc.client style, {} B): {decode_pretty:.0} ns",
        pretty.len()
    );
    println!(
        "XmlWriter, {}-field record: {write:.0} ns",
        record.as_struct().map_or(0, <[_]>::len)
    );
    println!(
        "envelope around the encoded record: {:.0} ns",
        envelope - clone
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--micro") {
        micro();
        return;
    }
    // `--bare PORT SIZE`: a bare hyper server answering SIZE bytes, for `--daemon` runs.
    if args.get(1).map(String::as_str) == Some("--bare") {
        let port: u16 = args[2].parse().unwrap();
        let size: usize = args[3].parse().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
            bare_server(l, Bytes::from(vec![b'x'; size])).await;
        });
        return;
    }
    if args.get(1).map(String::as_str) == Some("--wrk-lua") {
        let url = args.get(2).expect("--wrk-lua URL PASSWORD_FILE").clone();
        let password = std::fs::read_to_string(args.get(3).expect("PASSWORD_FILE")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let body = rt.block_on(async {
            let client = xenpool_rpc::Client::new(&url).unwrap();
            let params = daemon_get_record(&client, password.trim()).await;
            xml::encode_call("VM.get_record", &params)
        });
        // The body holds refs and quotes only, never `]]`, so a long bracket carries it.
        println!("wrk.method = \"POST\"");
        println!("wrk.body = [[{}]]", String::from_utf8(body).unwrap());
        println!("wrk.headers[\"Content-Type\"] = \"text/xml\"");
        return;
    }
    // `--daemon URL PASSWORD_FILE [secs conns rounds]` measures a running xenpoold.
    if args.get(1).map(String::as_str) == Some("--daemon") {
        let url = args.get(2).expect("--daemon URL PASSWORD_FILE").clone();
        let password = std::fs::read_to_string(args.get(3).expect("PASSWORD_FILE"))
            .unwrap()
            .trim()
            .to_string();
        let secs: f64 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(3.0);
        let conns: usize = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(8);
        let rounds: usize = args.get(6).and_then(|a| a.parse().ok()).unwrap_or(3);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(against_daemon(&url, &password, secs, conns, rounds));
        return;
    }
    let secs: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let conns: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(8);
    let rounds: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let record = vm_record();
        let fields = record.as_struct().map_or(0, <[_]>::len);
        let xml_body = xml::encode_response(&Ok(record.clone()));
        let json_body = json::encode_response(JsonVersion::V2, &Value::Int(0), &Ok(record.clone()));
        let params = [s("OpaqueRef:6a1b3e0c-6ea6-4f2b-9e44-2b8d7f9d0c11"), s("OpaqueRef:0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0")];

        let ours = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours_addr = ours.local_addr().unwrap();
        tokio::spawn(serve(
            ours,
            None,
            Arc::new(Bench { record }),
            ServerLimits::default(),
            std::future::pending(),
        ));
        let bare = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bare_addr = bare.local_addr().unwrap();
        tokio::spawn(bare_server(bare, Bytes::from(xml_body.clone())));

        let xml_req = http_request("/", "text/xml", &xml::encode_call("VM.get_record", &params));
        let small_req = http_request("/", "text/xml", &xml::encode_call("VM.get_uuid", &params));
        let json_req = http_request(
            "/jsonrpc",
            "application/json",
            &json::encode_request(JsonVersion::V2, 0, "VM.get_record", &params),
        );

        println!(
            "VM.get_record: {fields} fields; XML-RPC response {} bytes, JSON-RPC response {} bytes; {conns} keep-alive connections, {secs} s each, {} worker threads",
            xml_body.len(),
            json_body.len(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        // Rounds interleave the three so that load from elsewhere on the machine hits all
        // of them alike; the table reports the median of each.
        let mut rows: [Vec<f64>; 4] = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for round in 1..=rounds {
            let a = measure(ours_addr, xml_req.clone(), conns, secs).await;
            let b = measure(ours_addr, json_req.clone(), conns, secs).await;
            let c = measure(bare_addr, xml_req.clone(), conns, secs).await;
            let d = measure(ours_addr, small_req.clone(), conns, secs).await;
            println!("round {round}: (a) {a:.0}/s  (b) {b:.0}/s  (c) {c:.0}/s  (d) {d:.0}/s  a/c {:.2}  b/c {:.2}", a / c, b / c);
            rows[0].push(a);
            rows[1].push(b);
            rows[2].push(c);
            rows[3].push(d);
        }
        let [a, b, c, d] = rows.map(median);
        println!();
        println!("| scenario | calls/s (median of {rounds}) | vs bare hyper |");
        println!("|---|---:|---:|");
        println!("| (a) xenpool-rpc XML-RPC | {a:.0} | {:.2} |", a / c);
        println!("| (b) xenpool-rpc JSON-RPC | {b:.0} | {:.2} |", b / c);
        println!("| (c) bare hyper, fixed {} B body | {c:.0} | 1.00 |", xml_body.len());
        println!("| (d) xenpool-rpc XML-RPC, `VM.get_uuid` (tiny result: server overhead alone) | {d:.0} | {:.2} |", d / c);
    });
}
