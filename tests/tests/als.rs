//! Aggregated local storage on a pool of real processes: an SR mirrored over three hosts'
//! local directories stays writable while one host is down, the host gets back exactly what
//! it missed when it returns, and reboot and shutdown of the other hosts are refused until
//! it has (seed 003).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xenpool_rpc::{Client, Value};
use xenpool_tests::ha::{call, host_live, items, must, HaOptions, HaPool, Net};
use xenpool_tests::wire::{field, s, text};

const MIB: u64 = 1 << 20;
/// The VDI's size, what is written before the host goes down, and what changes while it is.
const VDI_SIZE: u64 = 64 * MIB;
const FIRST: u64 = 16 * MIB;
const CHANGED_AT: u64 = 8 * MIB;
const CHANGED: u64 = 8 * MIB;
/// The resynchronisation's pace: the changed data takes about two seconds to copy.
const RESYNC_RATE: u64 = 4 * MIB;

/// Bytes `len` long whose content depends on `seed` and on the position.
fn pattern(seed: u8, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 12) as u8))
        .collect()
}

/// One HTTP/1.1 exchange on a fresh connection: the status and the body.
async fn http(address: IpAddr, port: u16, head: String, body: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect((address, port))
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out[split + 4..].to_vec())
}

struct Pool {
    pool: HaPool,
    c: Client,
    session: String,
    _config: tempfile::TempDir,
}

impl Pool {
    /// `PUT /import_raw_vdi` of `data` at `offset`, on the coordinator.
    async fn put(&self, vdi: &str, offset: u64, data: &[u8]) -> (u16, String) {
        self.put_query(vdi, offset, data, "").await
    }

    /// [`Pool::put`] with more query parameters (`&name=value...`).
    async fn put_query(&self, vdi: &str, offset: u64, data: &[u8], more: &str) -> (u16, String) {
        let h = &self.pool.hosts[0];
        let head = format!(
            "PUT /import_raw_vdi?session_id={}&vdi={vdi}&format=raw&offset={offset}{more} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.session,
            h.address,
            data.len()
        );
        let (status, body) = http(h.address, h.http_port, head, data).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// `GET /export_raw_vdi` of a range.
    async fn get(&self, vdi: &str, offset: u64, length: u64) -> (u16, Vec<u8>) {
        let h = &self.pool.hosts[0];
        let head = format!(
            "GET /export_raw_vdi?session_id={}&vdi={vdi}&offset={offset}&length={length} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
            self.session, h.address
        );
        http(h.address, h.http_port, head, &[]).await
    }

    /// `host.allowed_operations` of host `i`, as text.
    async fn allowed(&self, i: usize) -> String {
        let ops = must(
            &self.c,
            "host.get_allowed_operations",
            vec![s(&self.pool.host_refs[i])],
        )
        .await;
        format!("{ops:?}")
    }

    /// The resynchronisation tasks of host `uuid`: (status, progress, other_config).
    async fn resync_tasks(&self, uuid: &str) -> Vec<(String, f64, Value)> {
        let all = must(&self.c, "task.get_all_records", vec![]).await;
        let Value::Struct(tasks) = all else {
            panic!("task.get_all_records: {all:?}")
        };
        tasks
            .into_iter()
            .map(|(_, t)| t)
            .filter(|t| {
                text(field(t, "name_label")) == "SR.als_resync"
                    && text(field(field(t, "other_config"), "host")) == uuid
            })
            .map(|t| {
                let progress = match field(&t, "progress") {
                    Value::Double(p) => *p,
                    other => text(other).parse().unwrap_or(-1.0),
                };
                (
                    text(field(&t, "status")),
                    progress,
                    field(&t, "other_config").clone(),
                )
            })
            .collect()
    }
}

fn image(pool: &HaPool, i: usize, sr_uuid: &str, location: &str) -> PathBuf {
    pool.hosts[i]
        .data_dir
        .join("sr-als")
        .join(sr_uuid)
        .join(format!("{location}.img"))
}

async fn wait_live(c: &Client, host: &str, live: bool, what: &str) -> Duration {
    let start = Instant::now();
    let ok = xenpool_tests::wait_for(Duration::from_secs(30), || async {
        (host_live(c, host).await == Some(live)).then_some(())
    })
    .await;
    assert!(ok.is_some(), "{what}");
    start.elapsed()
}

/// Three hosts on 127.<net>.0.x that declare a silent member down after 2 s and
/// resynchronise at [`RESYNC_RATE`].
async fn start(net: u8) -> Pool {
    let config = tempfile::tempdir().unwrap();
    let config_file = config.path().join("xenpoold.toml");
    std::fs::write(
        &config_file,
        format!("als_resync_bytes_per_sec = {RESYNC_RATE}\n"),
    )
    .unwrap();
    let pool = HaPool::start(
        Net::Loopback(net),
        &HaOptions {
            hosts: 3,
            vms_per_host: 0,
            enable_ha: false,
            extra: vec![
                "--liveness-timeout".into(),
                "2".into(),
                "-c".into(),
                config_file.to_str().unwrap().into(),
            ],
            ..HaOptions::default()
        },
    )
    .await;
    let c = pool.coordinator_client(&[0, 1, 2]).await;
    let session = c.session().unwrap();
    Pool {
        pool,
        c,
        session,
        _config: config,
    }
}

/// `SR.create` of type `als` over `hosts` (UUIDs).
async fn create_sr(p: &Pool, hosts: &[String]) -> Result<String, xenpool_rpc::RpcError> {
    call(
        &p.c,
        "SR.create",
        vec![
            s(&p.pool.host_refs[0]),
            Value::Struct(vec![("hosts".into(), s(&hosts.join(",")))]),
            s("0"),
            s("mirrored"),
            s("aggregated local storage"),
            s("als"),
            s("user"),
            Value::Bool(true),
            Value::Struct(vec![]),
        ],
    )
    .await
    .map(|v| text(&v))
}

/// A VDI of `size` bytes on `sr`: its reference and location.
async fn create_vdi(p: &Pool, sr: &str, name: &str, size: u64) -> (String, String) {
    let vdi = text(
        &must(
            &p.c,
            "VDI.create",
            vec![Value::Struct(vec![
                ("name_label".into(), s(name)),
                ("SR".into(), s(sr)),
                ("virtual_size".into(), s(&size.to_string())),
                ("type".into(), s("user")),
                ("sharable".into(), Value::Bool(false)),
                ("read_only".into(), Value::Bool(false)),
                ("other_config".into(), Value::Struct(vec![])),
            ])],
        )
        .await,
    );
    let location = text(&must(&p.c, "VDI.get_location", vec![s(&vdi)]).await);
    (vdi, location)
}

/// Waits for a resynchronisation of host `uuid` to end, after the `skip` that had
/// already: (status, other_config).
async fn resync_ended(p: &Pool, uuid: &str, skip: usize) -> (String, Value) {
    let ended = xenpool_tests::wait_for(Duration::from_secs(30), || async {
        let tasks = p.resync_tasks(uuid).await;
        let done: Vec<_> = tasks.into_iter().filter(|t| t.0 != "pending").collect();
        (done.len() > skip).then(|| (done[0].0.clone(), done[0].2.clone()))
    })
    .await;
    ended.expect("no resynchronisation ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_host_away_misses_only_what_changed_and_blocks_reboots_until_resynchronised() {
    let mut p = start(86).await;
    let refs = p.pool.host_refs.clone();
    let mut uuids = Vec::new();
    for h in &refs {
        uuids.push(text(&must(&p.c, "host.get_uuid", vec![s(h)]).await));
    }

    // An SR over the three hosts; each gets a PBD and a directory of its own.
    let sr = create_sr(&p, &uuids).await.unwrap();
    let sr_uuid = text(&must(&p.c, "SR.get_uuid", vec![s(&sr)]).await);
    assert_eq!(
        must(&p.c, "SR.get_shared", vec![s(&sr)]).await,
        Value::Bool(true)
    );
    assert_eq!(
        items(must(&p.c, "SR.get_PBDs", vec![s(&sr)]).await).len(),
        3
    );
    for i in 0..3 {
        let dir = p.pool.hosts[i].data_dir.join("sr-als").join(&sr_uuid);
        assert!(dir.is_dir(), "no mirror directory on h{}", i + 1);
    }
    // Fewer than two hosts is not a mirror.
    let e = create_sr(&p, &uuids[..1]).await.unwrap_err();
    assert!(format!("{e:?}").contains("INVALID_VALUE"), "{e:?}");

    let (vdi, location) = create_vdi(&p, &sr, "disk", VDI_SIZE).await;
    let first = pattern(1, FIRST);
    let (status, body) = p.put(&vdi, 0, &first).await;
    assert_eq!(status, 200, "{body}");
    // A client's task ends with the transfer (the same bytes again, by the VDI's UUID).
    let task = text(&must(&p.c, "task.create", vec![s("import"), s("")]).await);
    let vdi_uuid = text(&must(&p.c, "VDI.get_uuid", vec![s(&vdi)]).await);
    let (status, body) = p
        .put_query(
            &vdi_uuid,
            0,
            &first[..MIB as usize],
            &format!("&task_id={task}"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        text(&must(&p.c, "task.get_status", vec![s(&task)]).await),
        "success"
    );
    // Without a session, nothing is written.
    let h = &p.pool.hosts[0];
    let head = format!(
        "PUT /import_raw_vdi?vdi={vdi} HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nconnection: close\r\n\r\n"
    );
    let (status, _) = http(h.address, h.http_port, head, b"oops").await;
    assert_eq!(status, 401);

    // Reboot needs a disabled host; with every mirror in sync it is allowed.
    for i in [1, 2] {
        must(&p.c, "host.disable", vec![s(&refs[i])]).await;
    }
    assert!(
        p.allowed(1).await.contains("reboot"),
        "{}",
        p.allowed(1).await
    );

    // h3 loses power.
    p.pool.hosts[2].kill9_host();
    let down = wait_live(&p.c, &refs[2], false, "h3 is still live").await;
    for i in [0, 1] {
        let ops = p.allowed(i).await;
        assert!(
            !ops.contains("reboot") && !ops.contains("shutdown"),
            "h{}: {ops}",
            i + 1
        );
    }
    let e = call(&p.c, "host.reboot", vec![s(&refs[1])])
        .await
        .unwrap_err();
    assert!(
        format!("{e:?}").contains("CLUSTERED_SR_DEGRADED") && format!("{e:?}").contains(&sr),
        "{e:?}"
    );

    // The SR takes writes on the two hosts left.
    let changed = pattern(2, CHANGED);
    let start = Instant::now();
    let (status, body) = p.put(&vdi, CHANGED_AT, &changed).await;
    let write_time = start.elapsed();
    assert_eq!(status, 200, "{body}");
    let mut expected = first.clone();
    expected.resize(CHANGED_AT as usize, 0);
    expected.extend_from_slice(&changed);
    let (status, back) = p.get(&vdi, 0, CHANGED_AT + CHANGED).await;
    assert_eq!(status, 200);
    assert!(
        back == expected,
        "the VDI does not read back what was written"
    );

    // h3 comes back; its mirror is behind until the resynchronisation ends, and reboots
    // of the others stay refused all that time.
    p.pool.hosts[2].spawn();
    let back_up = wait_live(&p.c, &refs[2], true, "h3 did not come back").await;
    let resync_start = Instant::now();
    let mut refused_during = 0;
    let mut statuses = Vec::new();
    let outcome = loop {
        let tasks = p.resync_tasks(&uuids[2]).await;
        if let Some((status, progress, oc)) = tasks.iter().find(|t| t.0 != "pending") {
            break (status.clone(), *progress, oc.clone());
        }
        if let Some((_, progress, _)) = tasks.first() {
            statuses.push(*progress);
            let e = call(&p.c, "host.reboot", vec![s(&refs[1])])
                .await
                .unwrap_err();
            assert!(format!("{e:?}").contains("CLUSTERED_SR_DEGRADED"), "{e:?}");
            let ops = p.allowed(1).await;
            assert!(!ops.contains("reboot"), "{ops}");
            // Counted only if the resynchronisation was still running after the refusal.
            if p.resync_tasks(&uuids[2])
                .await
                .iter()
                .all(|t| t.0 == "pending")
            {
                refused_during += 1;
            }
        } else {
            // Behind but not yet copying: just as unsafe.
            let ops = p.allowed(1).await;
            assert!(!ops.contains("reboot"), "{ops}");
        }
        assert!(
            resync_start.elapsed() < Duration::from_secs(30),
            "the resynchronisation did not end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let resync_time = resync_start.elapsed();
    assert_eq!(outcome.0, "success", "{outcome:?}");
    assert_eq!(outcome.1, 1.0);
    assert!(refused_during >= 1, "no refusal seen while resynchronising");
    assert!(
        statuses.windows(2).all(|w| w[0] <= w[1]),
        "progress went back: {statuses:?}"
    );
    // Exactly the changed range (whole 64 KiB blocks) was copied, not the whole disk.
    let total: u64 = text(field(&outcome.2, "total_bytes")).parse().unwrap();
    let done: u64 = text(field(&outcome.2, "done_bytes")).parse().unwrap();
    assert_eq!(total, CHANGED, "{outcome:?}");
    assert_eq!(done, CHANGED, "{outcome:?}");

    // Reboot and shutdown are allowed again once every mirror is in sync.
    let allowed = xenpool_tests::wait_for(Duration::from_secs(30), || async {
        let ops = p.allowed(1).await;
        (ops.contains("reboot") && ops.contains("shutdown")).then_some(())
    })
    .await;
    assert!(allowed.is_some(), "h2: {}", p.allowed(1).await);

    // The three copies are the same bytes, and the bytes written.
    let copies: Vec<Vec<u8>> = (0..3)
        .map(|i| std::fs::read(image(&p.pool, i, &sr_uuid, &location)).unwrap())
        .collect();
    assert_eq!(copies[0].len() as u64, VDI_SIZE);
    assert!(copies[0] == copies[1], "h1 and h2 differ");
    assert!(copies[0] == copies[2], "h1 and h3 differ");
    assert!(copies[0][..expected.len()] == expected[..]);
    assert!(copies[0][expected.len()..].iter().all(|b| *b == 0));

    // A reboot through the API: h2 is declared away as it goes down, h3 may not reboot
    // meanwhile, and h2 gets back what was written while it was down.
    must(&p.c, "host.disable", vec![s(&refs[2])]).await;
    let succeeded =
        |tasks: Vec<(String, f64, Value)>| tasks.iter().filter(|t| t.0 == "success").count();
    let before = succeeded(p.resync_tasks(&uuids[1]).await);
    must(&p.c, "host.reboot", vec![s(&refs[1])]).await;
    let e = call(&p.c, "host.reboot", vec![s(&refs[2])])
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("CLUSTERED_SR_DEGRADED"), "{e:?}");
    let during = pattern(3, 2 * MIB);
    let (status, body) = p.put(&vdi, 40 * MIB, &during).await;
    assert_eq!(status, 200, "{body}");
    let resynced = xenpool_tests::wait_for(Duration::from_secs(30), || async {
        (succeeded(p.resync_tasks(&uuids[1]).await) > before).then_some(())
    })
    .await;
    assert!(
        resynced.is_some(),
        "h2 was not resynchronised after its reboot"
    );
    let allowed = xenpool_tests::wait_for(Duration::from_secs(30), || async {
        let ops = p.allowed(2).await;
        (ops.contains("reboot") && ops.contains("shutdown")).then_some(())
    })
    .await;
    assert!(allowed.is_some(), "h3: {}", p.allowed(2).await);
    let mut whole = expected.clone();
    whole.resize(VDI_SIZE as usize, 0);
    whole[(40 * MIB) as usize..(42 * MIB) as usize].copy_from_slice(&during);
    for i in 0..3 {
        let copy = std::fs::read(image(&p.pool, i, &sr_uuid, &location)).unwrap();
        assert!(copy == whole, "h{}'s copy differs after h2's reboot", i + 1);
    }

    // A VDI made and destroyed on the SR has an image on every host, then none.
    let (scratch, scratch_location) = create_vdi(&p, &sr, "scratch", MIB).await;
    for i in 0..3 {
        assert!(image(&p.pool, i, &sr_uuid, &scratch_location).exists());
    }
    must(&p.c, "VDI.destroy", vec![s(&scratch)]).await;
    for i in 0..3 {
        assert!(!image(&p.pool, i, &sr_uuid, &scratch_location).exists());
    }

    eprintln!(
        "als: h3 seen down after {down:?}; 8 MiB written to two mirrors in {write_time:?}; \
         h3 live again after {back_up:?}; {total} bytes resynchronised in {resync_time:?} \
         (paced at {RESYNC_RATE} B/s); {refused_during} reboots refused during it"
    );
    p.pool.hosts[2].kill9_host();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_mirror_misses_survives_a_crash_of_the_coordinator() {
    let mut p = start(87).await;
    let refs = p.pool.host_refs.clone();
    let mut uuids = Vec::new();
    for h in &refs {
        uuids.push(text(&must(&p.c, "host.get_uuid", vec![s(h)]).await));
    }
    let sr = create_sr(&p, &uuids).await.unwrap();
    let sr_uuid = text(&must(&p.c, "SR.get_uuid", vec![s(&sr)]).await);
    let (vdi, location) = create_vdi(&p, &sr, "disk", 16 * MIB).await;
    let first = pattern(5, 4 * MIB);
    assert_eq!(p.put(&vdi, 0, &first).await.0, 200);

    p.pool.hosts[2].kill9_host();
    wait_live(&p.c, &refs[2], false, "h3 is still live").await;
    let changed = pattern(6, 2 * MIB);
    let (status, body) = p.put(&vdi, 4 * MIB, &changed).await;
    assert_eq!(status, 200, "{body}");

    // The coordinator, which holds the SR's journal, loses power and starts again. It
    // gives every member a grace period, h3 included, but its journal says h3 is behind:
    // reboots stay refused from its first answer on.
    must(&p.c, "host.disable", vec![s(&refs[1])]).await;
    p.pool.hosts[0].kill9_host();
    p.pool.hosts[0].spawn();
    p.c = p.pool.coordinator_client(&[0]).await;
    p.session = p.c.session().unwrap();
    let e = call(&p.c, "host.reboot", vec![s(&refs[1])])
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("CLUSTERED_SR_DEGRADED"), "{e:?}");
    wait_live(&p.c, &refs[2], false, "h3 is live after its grace period").await;

    // h3 returns and gets what the journal says it misses, and nothing more.
    p.pool.hosts[2].spawn();
    wait_live(&p.c, &refs[2], true, "h3 did not come back").await;
    let (status, oc) = resync_ended(&p, &uuids[2], 0).await;
    assert_eq!(status, "success", "{oc:?}");
    assert_eq!(
        text(field(&oc, "total_bytes")),
        (2 * MIB).to_string(),
        "{oc:?}"
    );
    let mut expected = first;
    expected.extend_from_slice(&changed);
    expected.resize((16 * MIB) as usize, 0);
    for i in 0..3 {
        let copy = std::fs::read(image(&p.pool, i, &sr_uuid, &location)).unwrap();
        assert!(copy == expected, "h{}'s copy differs", i + 1);
    }
}
