//! Storage on a pool of real processes: SRs made on a member and on every host, plugs
//! that really attach and detach, one pool per shared directory, scans that find what was
//! written behind the toolstack's back, VDI snapshot, clone, copy, resize and destroy
//! checked on disk, and VM snapshot, revert and checkpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xenpool_rpc::{Client, Value};
use xenpool_tests::ha::{api_code, call, items, must, HaOptions, HaPool, Net};
use xenpool_tests::wire::{field, s, text};
use xenpool_tests::Daemon;

const MIB: u64 = 1 << 20;

async fn pool_of(net: u8) -> HaPool {
    HaPool::start(
        Net::Loopback(net),
        &HaOptions {
            hosts: 2,
            vms_per_host: 1,
            enable_ha: false,
            ..HaOptions::default()
        },
    )
    .await
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::String(s) => s.parse().unwrap(),
        other => panic!("not an int: {other:?}"),
    }
}

fn refs(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().map(text).collect(),
        other => panic!("not an array: {other:?}"),
    }
}

fn map(pairs: &[(&str, &str)]) -> Value {
    Value::Struct(pairs.iter().map(|(k, v)| (k.to_string(), s(v))).collect())
}

/// The code and parameters of a call that must fail.
async fn refused(c: &Client, method: &str, params: Vec<Value>) -> Vec<String> {
    match call(c, method, params).await {
        Ok(v) => panic!("{method} succeeded: {v:?}"),
        Err(e) => e
            .api()
            .unwrap_or_else(|| panic!("{method}: {e}"))
            .description(),
    }
}

async fn sr_create(
    c: &Client,
    host: &str,
    location: &Path,
    ty: &str,
    shared: bool,
) -> Result<Value, xenpool_rpc::RpcError> {
    call(
        c,
        "SR.create",
        vec![
            s(host),
            map(&[("location", location.to_str().unwrap())]),
            s("0"),
            s(&format!("{ty} SR")),
            s(""),
            s(ty),
            s("user"),
            Value::Bool(shared),
            map(&[]),
        ],
    )
    .await
}

async fn vdi_create(c: &Client, sr: &str, size: u64) -> Result<Value, xenpool_rpc::RpcError> {
    call(
        c,
        "VDI.create",
        vec![Value::Struct(vec![
            ("SR".into(), s(sr)),
            ("name_label".into(), s("disk")),
            ("virtual_size".into(), s(&size.to_string())),
            ("type".into(), s("user")),
            ("sharable".into(), Value::Bool(false)),
            ("read_only".into(), Value::Bool(false)),
            ("other_config".into(), map(&[])),
        ])],
    )
    .await
}

/// The image file of a VDI on a directory SR at `dir`.
async fn image(c: &Client, dir: &Path, vdi: &str) -> PathBuf {
    let location = text(&must(c, "VDI.get_location", vec![s(vdi)]).await);
    dir.join(format!("{location}.img"))
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srs_pbds_and_vdis_on_a_two_host_pool() {
    let pool = pool_of(91).await;
    let c = pool.coordinator_client(&[0, 1]).await;
    let (h1, h2) = (pool.host_refs[0].clone(), pool.host_refs[1].clone());
    let dir = tempfile::tempdir().unwrap();

    // A local directory SR on the member: one PBD, on it, plugged, the directory made.
    let local = dir.path().join("h2-local");
    let sr = text(&sr_create(&c, &h2, &local, "dir", false).await.unwrap());
    let rec = must(&c, "SR.get_record", vec![s(&sr)]).await;
    assert_eq!(text(field(&rec, "type")), "dir");
    assert_eq!(field(&rec, "shared"), &Value::Bool(false));
    let pbds = refs(field(&rec, "PBDs"));
    assert_eq!(pbds.len(), 1);
    let pbd = pbds[0].clone();
    assert_eq!(text(&must(&c, "PBD.get_host", vec![s(&pbd)]).await), h2);
    assert_eq!(
        must(&c, "PBD.get_currently_attached", vec![s(&pbd)]).await,
        Value::Bool(true)
    );
    assert!(local.is_dir());
    assert!(int(field(&rec, "physical_size")) > 0);
    let ops = format!("{:?}", field(&rec, "allowed_operations"));
    assert!(
        ops.contains("vdi_create") && !ops.contains("forget"),
        "{ops}"
    );

    // Unknown drivers are named.
    assert_eq!(
        sr_create(&c, &h1, &dir.path().join("x"), "nfs-not-here", false)
            .await
            .map_err(|e| api_code(&e))
            .unwrap_err(),
        "SR_UNKNOWN_DRIVER [\"nfs-not-here\"]"
    );

    // A disk on the member's SR, written by a "guest".
    let vdi = text(&vdi_create(&c, &sr, MIB).await.unwrap());
    let img = image(&c, &local, &vdi).await;
    assert_eq!(std::fs::metadata(&img).unwrap().len(), MIB);
    write_at(&img, 4096, b"first contents");

    // Snapshot and clone copy the contents; the snapshot is marked as one.
    let snap = text(&must(&c, "VDI.snapshot", vec![s(&vdi), map(&[])]).await);
    let srec = must(&c, "VDI.get_record", vec![s(&snap)]).await;
    assert_eq!(field(&srec, "is_a_snapshot"), &Value::Bool(true));
    assert_eq!(text(field(&srec, "snapshot_of")), vdi);
    assert_ne!(text(field(&srec, "snapshot_time")), "19700101T00:00:00Z");
    assert!(refs(&must(&c, "VDI.get_snapshots", vec![s(&vdi)]).await).contains(&snap));
    let clone = text(&must(&c, "VDI.clone", vec![s(&vdi), map(&[])]).await);
    assert_eq!(
        must(&c, "VDI.get_is_a_snapshot", vec![s(&clone)]).await,
        Value::Bool(false)
    );
    write_at(&img, 4096, b"second contents");
    let snap_img = image(&c, &local, &snap).await;
    let clone_img = image(&c, &local, &clone).await;
    assert_eq!(read_at(&snap_img, 4096, 14), b"first contents");
    assert_eq!(read_at(&clone_img, 4096, 14), b"first contents");
    assert_eq!(read_at(&img, 4096, 15), b"second contents");

    // Resize grows the file; shrinking is refused by the driver.
    must(&c, "VDI.resize", vec![s(&vdi), s(&(4 * MIB).to_string())]).await;
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 4 * MIB);
    assert_eq!(
        int(&must(&c, "VDI.get_virtual_size", vec![s(&vdi)]).await),
        (4 * MIB) as i64
    );
    assert_eq!(read_at(&img, 4096, 15), b"second contents");
    let shrink = refused(&c, "VDI.resize", vec![s(&vdi), s(&MIB.to_string())]).await;
    assert_eq!(shrink[0], "SR_BACKEND_FAILURE", "{shrink:?}");

    // A shared directory SR: a PBD on every host, all plugged, claimed for this pool.
    let shared_dir = dir.path().join("shared2");
    let shared = text(
        &sr_create(&c, &h1, &shared_dir, "shared-dir", true)
            .await
            .unwrap(),
    );
    let shared_pbds = refs(&must(&c, "SR.get_PBDs", vec![s(&shared)]).await);
    assert_eq!(shared_pbds.len(), 2);
    let mut on = Vec::new();
    for p in &shared_pbds {
        on.push(text(&must(&c, "PBD.get_host", vec![s(p)]).await));
        assert_eq!(
            must(&c, "PBD.get_currently_attached", vec![s(p)]).await,
            Value::Bool(true)
        );
    }
    on.sort();
    let mut both = vec![h1.clone(), h2.clone()];
    both.sort();
    assert_eq!(on, both);
    let pool_ref = text(&items(must(&c, "pool.get_all", vec![]).await)[0]);
    let pool_uuid = text(&must(&c, "pool.get_uuid", vec![s(&pool_ref)]).await);
    let owner = std::fs::read_to_string(shared_dir.join(".sr-owner")).unwrap();
    assert!(owner.contains(&pool_uuid), "{owner}");

    // Copy from the member's local SR to the shared one (done on the member, which
    // reaches both).
    let copy = text(&must(&c, "VDI.copy", vec![s(&vdi), s(&shared)]).await);
    assert_eq!(text(&must(&c, "VDI.get_SR", vec![s(&copy)]).await), shared);
    let copy_img = image(&c, &shared_dir, &copy).await;
    assert_eq!(read_at(&copy_img, 4096, 15), b"second contents");
    assert_eq!(std::fs::metadata(&copy_img).unwrap().len(), 4 * MIB);

    // Another pool pointed at the same shared directory is refused, and keeps no record.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Daemon::start(
        other_dir.path(),
        "other",
        IpAddr::from([127, 91, 0, 9]),
        &["--sim-delay-ms", "0", "--no-demo"],
    );
    let oc = other.client().await;
    let other_host = text(&items(must(&oc, "host.get_all", vec![]).await)[0]);
    let srs_before = refs(&must(&oc, "SR.get_all", vec![]).await).len();
    let e = sr_create(&oc, &other_host, &shared_dir, "shared-dir", true)
        .await
        .unwrap_err();
    let d = e.api().expect("a XenAPI error").description();
    assert_eq!(d[0], "SR_BACKEND_FAILURE", "{d:?}");
    assert!(d[2].contains("another pool"), "{d:?}");
    assert_eq!(
        refs(&must(&oc, "SR.get_all", vec![]).await).len(),
        srs_before
    );

    // Unplugging really detaches: no disk work until plugged again.
    must(&c, "PBD.unplug", vec![s(&pbd)]).await;
    assert_eq!(
        must(&c, "PBD.get_currently_attached", vec![s(&pbd)]).await,
        Value::Bool(false)
    );
    let e = vdi_create(&c, &sr, MIB).await.unwrap_err();
    assert_eq!(api_code(&e), format!("SR_HAS_NO_PBDS [\"{sr}\"]"));
    let e = refused(&c, "SR.scan", vec![s(&sr)]).await;
    assert_eq!(e[0], "SR_HAS_NO_PBDS");
    // A plugged PBD cannot be destroyed; an SR whose PBD is plugged cannot be forgotten.
    must(&c, "PBD.plug", vec![s(&pbd)]).await;
    let extra = text(&vdi_create(&c, &sr, MIB).await.unwrap());
    assert!(image(&c, &local, &extra).await.exists());
    assert_eq!(
        refused(&c, "PBD.destroy", vec![s(&pbd)]).await,
        vec!["OPERATION_NOT_ALLOWED", "PBD is currently attached"]
    );
    assert_eq!(
        refused(&c, "SR.forget", vec![s(&sr)]).await,
        vec!["SR_HAS_PBD".to_string(), sr.clone()]
    );
    assert_eq!(
        refused(
            &c,
            "PBD.create",
            vec![Value::Struct(vec![
                ("host".into(), s(&h2)),
                ("SR".into(), s(&sr)),
                ("device_config".into(), map(&[])),
                ("other_config".into(), map(&[])),
            ])]
        )
        .await,
        vec![
            "PBD_EXISTS".to_string(),
            sr.clone(),
            h2.clone(),
            pbd.clone()
        ]
    );

    // A scan finds a disk dropped into the directory and forgets one removed from it.
    let dropped = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9";
    std::fs::write(
        shared_dir.join(format!("{dropped}.json")),
        format!("{{\"name\":\"dropped\",\"virtual_size\":{}}}", 2 * MIB),
    )
    .unwrap();
    let f = std::fs::File::create(shared_dir.join(format!("{dropped}.img"))).unwrap();
    f.set_len(2 * MIB).unwrap();
    f.write_all_at(&[7u8; 8192], 0).unwrap();
    drop(f);
    let copy_location = text(&must(&c, "VDI.get_location", vec![s(&copy)]).await);
    std::fs::remove_file(shared_dir.join(format!("{copy_location}.json"))).unwrap();
    std::fs::remove_file(shared_dir.join(format!("{copy_location}.img"))).unwrap();
    let vdis_before: Vec<String> = refs(&must(&c, "SR.get_VDIs", vec![s(&shared)]).await)
        .into_iter()
        .filter(|v| *v != copy)
        .collect();
    must(&c, "SR.scan", vec![s(&shared)]).await;
    let vdis = refs(&must(&c, "SR.get_VDIs", vec![s(&shared)]).await);
    assert!(!vdis.contains(&copy), "a vanished VDI stays recorded");
    let mut found = None;
    for v in &vdis {
        if text(&must(&c, "VDI.get_location", vec![s(v)]).await) == dropped {
            found = Some(must(&c, "VDI.get_record", vec![s(v)]).await);
        }
    }
    let found = found.expect("the dropped VDI has a record");
    assert_eq!(text(field(&found, "name_label")), "dropped");
    assert_eq!(int(field(&found, "virtual_size")), (2 * MIB) as i64);
    assert!(int(field(&found, "physical_utilisation")) >= 8192);
    let srec = must(&c, "SR.get_record", vec![s(&shared)]).await;
    assert!(int(field(&srec, "physical_utilisation")) >= 8192);
    assert!(int(field(&srec, "virtual_allocation")) >= (2 * MIB) as i64);

    // VDI.update reads the sizes again; VDI.forget drops the record, not the data, and
    // the next scan finds the disk again.
    let dropped_ref = vdis
        .iter()
        .find(|v| **v != copy && !vdis_before.contains(v))
        .cloned()
        .unwrap();
    let before = int(&must(&c, "VDI.get_physical_utilisation", vec![s(&dropped_ref)]).await);
    write_at(
        &shared_dir.join(format!("{dropped}.img")),
        MIB,
        &[9u8; 65536],
    );
    must(&c, "VDI.update", vec![s(&dropped_ref)]).await;
    let after = int(&must(&c, "VDI.get_physical_utilisation", vec![s(&dropped_ref)]).await);
    assert!(after >= before + 65536, "{before} -> {after}");
    must(&c, "VDI.forget", vec![s(&dropped_ref)]).await;
    assert!(shared_dir.join(format!("{dropped}.img")).exists());
    assert!(!refs(&must(&c, "SR.get_VDIs", vec![s(&shared)]).await).contains(&dropped_ref));
    must(&c, "SR.scan", vec![s(&shared)]).await;
    let vdis = refs(&must(&c, "SR.get_VDIs", vec![s(&shared)]).await);
    assert_eq!(vdis.len(), vdis_before.len() + 1);

    // SR.destroy: refused while plugged, then while disks are left; removes the data.
    assert_eq!(
        refused(&c, "SR.destroy", vec![s(&sr)]).await,
        vec!["SR_HAS_PBD".to_string(), sr.clone()]
    );
    for v in [&vdi, &snap, &clone, &extra] {
        let path = image(&c, &local, v).await;
        must(&c, "VDI.destroy", vec![s(v)]).await;
        assert!(!path.exists(), "{}", path.display());
    }
    must(&c, "PBD.unplug", vec![s(&pbd)]).await;
    must(&c, "SR.destroy", vec![s(&sr)]).await;
    assert!(!local.exists(), "the SR directory is removed");
    assert!(!refs(&must(&c, "SR.get_all", vec![]).await).contains(&sr));

    // The shared SR forgotten once unplugged everywhere: the records go, the data stays;
    // the claim went with the last plug, so the other pool may now use the directory.
    let found_vdi = vdis.iter().find(|v| **v != copy).cloned().unwrap();
    for p in &shared_pbds {
        must(&c, "PBD.unplug", vec![s(p)]).await;
    }
    assert!(!shared_dir.join(".sr-owner").exists());
    must(&c, "SR.forget", vec![s(&shared)]).await;
    let e = call(&c, "VDI.get_record", vec![s(&found_vdi)])
        .await
        .unwrap_err();
    assert_eq!(e.api().unwrap().code, "HANDLE_INVALID");
    assert!(shared_dir.join(format!("{dropped}.img")).exists());

    // Reattached the way a client reattaches storage: introduce, a PBD, plug, scan.
    let shared_uuid = "5a1e2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b";
    let again = text(
        &must(
            &c,
            "SR.introduce",
            vec![
                s(shared_uuid),
                s("reattached"),
                s(""),
                s("shared-dir"),
                s("user"),
                Value::Bool(true),
                map(&[]),
            ],
        )
        .await,
    );
    assert_eq!(
        refused(
            &c,
            "SR.introduce",
            vec![
                s(shared_uuid),
                s("twice"),
                s(""),
                s("shared-dir"),
                s("user"),
                Value::Bool(true),
                map(&[]),
            ],
        )
        .await,
        vec!["SR_UUID_EXISTS", shared_uuid]
    );
    assert!(refs(&must(&c, "SR.get_PBDs", vec![s(&again)]).await).is_empty());
    let again_pbd = text(
        &must(
            &c,
            "PBD.create",
            vec![Value::Struct(vec![
                ("host".into(), s(&h1)),
                ("SR".into(), s(&again)),
                (
                    "device_config".into(),
                    map(&[("location", shared_dir.to_str().unwrap())]),
                ),
                ("other_config".into(), map(&[])),
            ])],
        )
        .await,
    );
    must(&c, "PBD.plug", vec![s(&again_pbd)]).await;
    must(&c, "SR.scan", vec![s(&again)]).await;
    let back = refs(&must(&c, "SR.get_VDIs", vec![s(&again)]).await);
    assert_eq!(back.len(), 1);
    assert_eq!(
        text(&must(&c, "VDI.get_location", vec![s(&back[0])]).await),
        dropped
    );
    must(&c, "PBD.unplug", vec![s(&again_pbd)]).await;
    must(&c, "PBD.destroy", vec![s(&again_pbd)]).await;
    must(&c, "SR.forget", vec![s(&again)]).await;

    let theirs = text(
        &sr_create(&oc, &other_host, &shared_dir, "shared-dir", true)
            .await
            .unwrap(),
    );
    must(&oc, "SR.scan", vec![s(&theirs)]).await;
    assert!(!refs(&must(&oc, "SR.get_VDIs", vec![s(&theirs)]).await).is_empty());
}

/// Runs the `xenpool` CLI against the coordinator (host 0); panics unless it succeeds.
fn cli(pool: &HaPool, args: &[&str]) -> String {
    let h = &pool.hosts[0];
    let out = std::process::Command::new(xenpool_tests::binary("xenpool"))
        .args(["-s", &h.address.to_string(), "-p", &h.http_port.to_string()])
        .args(["-u", "root", "-pw", &pool.password])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "xenpool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn power(c: &Client, vm: &str) -> String {
    text(&must(c, "VM.get_power_state", vec![s(vm)]).await)
}

/// The disk image behind the first VBD of `vm` that has a VDI.
async fn disk_of(c: &Client, vm: &str, dir: &Path) -> (String, PathBuf) {
    for b in refs(&must(c, "VM.get_VBDs", vec![s(vm)]).await) {
        let vdi = text(&must(c, "VBD.get_VDI", vec![s(&b)]).await);
        if vdi != "OpaqueRef:NULL" {
            let img = image(c, dir, &vdi).await;
            return (vdi, img);
        }
    }
    panic!("{vm} has no disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_snapshot_revert_and_checkpoint() {
    let pool = pool_of(92).await;
    let c = pool.coordinator_client(&[0, 1]).await;
    let h2 = pool.host_refs[1].clone();
    let (vm, uuid) = pool.vms[1][0].clone();
    let dir = tempfile::tempdir().unwrap();

    // The member's VM gets a disk on a local SR of the member.
    let local = dir.path().join("h2-disks");
    let sr = text(&sr_create(&c, &h2, &local, "dir", false).await.unwrap());
    must(&c, "VM.hard_shutdown", vec![s(&vm)]).await;
    let vdi = text(&vdi_create(&c, &sr, 8 * MIB).await.unwrap());
    must(
        &c,
        "VBD.create",
        vec![Value::Struct(vec![
            ("VM".into(), s(&vm)),
            ("VDI".into(), s(&vdi)),
            ("userdevice".into(), s("0")),
            ("bootable".into(), Value::Bool(true)),
            ("mode".into(), s("RW")),
            ("type".into(), s("Disk")),
            ("unpluggable".into(), Value::Bool(true)),
            ("empty".into(), Value::Bool(false)),
            ("other_config".into(), map(&[])),
            ("qos_algorithm_type".into(), s("")),
            ("qos_algorithm_params".into(), map(&[])),
        ])],
    )
    .await;
    let img = image(&c, &local, &vdi).await;
    write_at(&img, 0, b"before the snapshot");
    let start = vec![s(&vm), s(&h2), Value::Bool(false), Value::Bool(false)];
    must(&c, "VM.start_on", start.clone()).await;
    let ops = format!(
        "{:?}",
        must(&c, "VM.get_allowed_operations", vec![s(&vm)]).await
    );
    assert!(
        ops.contains("snapshot") && ops.contains("checkpoint"),
        "{ops}"
    );

    // A snapshot of the running VM: a template marked as its snapshot, its disk a VDI
    // snapshot with the contents of the moment.
    let snap = text(&must(&c, "VM.snapshot", vec![s(&vm), s("snap1")]).await);
    let rec = must(&c, "VM.get_record", vec![s(&snap)]).await;
    assert_eq!(field(&rec, "is_a_snapshot"), &Value::Bool(true));
    assert_eq!(field(&rec, "is_a_template"), &Value::Bool(true));
    assert_eq!(text(field(&rec, "snapshot_of")), vm);
    assert_eq!(text(field(&rec, "power_state")), "Halted");
    assert_eq!(text(field(&rec, "name_label")), "snap1");
    assert!(refs(&must(&c, "VM.get_snapshots", vec![s(&vm)]).await).contains(&snap));
    let (snap_vdi, snap_img) = disk_of(&c, &snap, &local).await;
    assert_eq!(
        text(&must(&c, "VDI.get_snapshot_of", vec![s(&snap_vdi)]).await),
        vdi
    );
    assert_eq!(read_at(&snap_img, 0, 19), b"before the snapshot");
    assert_eq!(power(&c, &vm).await, "Running");
    // Disks named in ignore_vdis are left out.
    let bare = text(
        &must(
            &c,
            "VM.snapshot",
            vec![s(&vm), s("no disks"), Value::Array(vec![s(&vdi)])],
        )
        .await,
    );
    assert!(refs(&must(&c, "VM.get_VBDs", vec![s(&bare)]).await).is_empty());
    let snap_ops = format!(
        "{:?}",
        must(&c, "VM.get_allowed_operations", vec![s(&snap)]).await
    );
    assert!(snap_ops.contains("revert"), "{snap_ops}");
    assert_eq!(
        refused(&c, "VM.revert", vec![s(&vm)]).await,
        vec!["REVERT_ONLY_ALLOWED_ON_SNAPSHOT"]
    );

    // The guest writes on; a revert stops the VM and brings back the snapshot's disk.
    write_at(&img, 0, b"after the snapshot!");
    must(&c, "VM.revert", vec![s(&snap)]).await;
    assert_eq!(power(&c, &vm).await, "Halted");
    assert!(!pool.hosts[1].domains().contains(&uuid));
    let (new_vdi, new_img) = disk_of(&c, &vm, &local).await;
    assert_ne!(new_vdi, vdi);
    assert_eq!(read_at(&new_img, 0, 19), b"before the snapshot");
    assert!(!img.exists(), "the replaced disk is removed");
    assert_eq!(
        text(&must(&c, "VDI.get_snapshot_of", vec![s(&snap_vdi)]).await),
        new_vdi
    );
    assert_eq!(text(&must(&c, "VM.get_parent", vec![s(&vm)]).await), snap);

    // A checkpoint of the running VM holds its memory image; the VM runs on.
    must(&c, "VM.start_on", start.clone()).await;
    let cp = text(&must(&c, "VM.checkpoint", vec![s(&vm), s("cp1")]).await);
    assert_eq!(power(&c, &vm).await, "Running");
    assert!(pool.hosts[1].domains().contains(&uuid));
    assert_eq!(power(&c, &cp).await, "Suspended");
    let suspend = text(&must(&c, "VM.get_suspend_VDI", vec![s(&cp)]).await);
    assert_ne!(suspend, "OpaqueRef:NULL");
    assert_eq!(
        text(&must(&c, "VDI.get_type", vec![s(&suspend)]).await),
        "suspend"
    );
    let image_sr = text(&must(&c, "VDI.get_SR", vec![s(&suspend)]).await);
    let mut image_dir = None;
    for p in refs(&must(&c, "SR.get_PBDs", vec![s(&image_sr)]).await) {
        if text(&must(&c, "PBD.get_host", vec![s(&p)]).await) == h2 {
            let cfg = must(&c, "PBD.get_device_config", vec![s(&p)]).await;
            image_dir = Some(PathBuf::from(text(field(&cfg, "location"))));
        }
    }
    let image_path = image(
        &c,
        &image_dir.expect("the image SR is plugged on h2"),
        &suspend,
    )
    .await;
    let header = read_at(&image_path, 0, 24);
    assert_eq!(&header[..8], b"XPMIGRT1");
    let pages = u64::from_le_bytes(header[16..24].try_into().unwrap());
    let memory = int(&must(&c, "VM.get_memory_static_max", vec![s(&vm)]).await) as u64;
    assert_eq!(pages, memory / 4096, "the image covers the VM's memory");
    let (_, cp_img) = disk_of(&c, &cp, &local).await;
    assert_eq!(read_at(&cp_img, 0, 19), b"before the snapshot");

    // The command line makes snapshots too.
    let cli_snap = cli(
        &pool,
        &["vm-snapshot", &format!("uuid={uuid}"), "new-name-label=cli"],
    );
    let cli_snap = text(&must(&c, "VM.get_by_uuid", vec![s(&cli_snap)]).await);
    assert_eq!(
        text(&must(&c, "VM.get_snapshot_of", vec![s(&cli_snap)]).await),
        vm
    );

    // Reverting to the checkpoint leaves the VM suspended with a copy of the image; it
    // resumes from there.
    must(&c, "VM.revert", vec![s(&cp)]).await;
    assert_eq!(power(&c, &vm).await, "Suspended");
    let vm_image = text(&must(&c, "VM.get_suspend_VDI", vec![s(&vm)]).await);
    assert_ne!(vm_image, "OpaqueRef:NULL");
    assert_ne!(vm_image, suspend);
    must(&c, "VM.resume_on", start).await;
    assert_eq!(power(&c, &vm).await, "Running");
    assert!(pool.hosts[1].domains().contains(&uuid));

    // The member's disks are its own to work on: with its toolstack gone, the coordinator
    // cannot make one there (though it reaches the directory itself), while the shared SR
    // it has plugged still serves.
    let mut pool = pool;
    pool.hosts[1].kill9();
    let e = vdi_create(&c, &sr, MIB).await.unwrap_err();
    assert_eq!(
        e.api().map(|a| a.code.as_str()),
        Some("HOST_OFFLINE"),
        "{e}"
    );
    vdi_create(&c, &image_sr, MIB).await.unwrap();
}
