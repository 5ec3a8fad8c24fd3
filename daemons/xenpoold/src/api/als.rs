//! XenAPI calls of aggregated local storage: `SR.create` of type `als`, the internal calls
//! through which the host running an SR's data path reaches the other hosts' copies, and
//! the raw disk transfers over HTTP (`PUT /import_raw_vdi`, `GET /export_raw_vdi`).

use std::collections::BTreeMap;

use xenpool_core::{Class, HostRecord, PbdRecord, Ref, SrRecord, VdiRecord};
use xenpool_rpc::{HttpAnswer, HttpGet, HttpPut, Request, Value as Wire, XenApiError};
use xenpool_storage::als::{AlsSr, MirrorTarget, SR_TYPE};
use xenpool_storage::StorageError;

use super::{api_error, Api, ApiResult, Ctx};
use crate::als::{backend_error, is_uuid, HOSTS_KEY, JOURNAL_HOST, MAX_CHUNK};

/// Host-to-host calls on a host's copy of an SR; the first two parameters are the pool
/// secret and the SR's UUID.
pub const INTERNAL_METHODS: &[(&str, &[&str])] = &[(
    "host",
    &[
        "xenpool_als_prepare",
        "xenpool_als_create",
        "xenpool_als_clone",
        "xenpool_als_remove",
        "xenpool_als_list",
        "xenpool_als_flush",
        "xenpool_als_size",
        "xenpool_als_set_len",
        "xenpool_als_utilisation",
        "xenpool_als_capacity",
    ],
)];

/// How long `SR.create` waits for a host to make its mirror directory.
const PREPARE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The most `GET /export_raw_vdi` answers at once; larger disks are read in ranges.
const MAX_EXPORT: u64 = 256 << 20;

fn void() -> Wire {
    Wire::String(String::new())
}

fn number(p: &mut xenpool_rpc::ParamReader<'_>, name: &str) -> Result<u64, XenApiError> {
    let v = p.value()?;
    let n = match v {
        Wire::String(s) => s.parse::<u64>().ok(),
        Wire::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    };
    n.ok_or_else(|| XenApiError::new("INVALID_VALUE", [name.to_string(), format!("{v:?}")]))
}

fn location(p: &mut xenpool_rpc::ParamReader<'_>) -> Result<String, XenApiError> {
    let l = p.string("location")?;
    if !is_uuid(l) {
        return Err(XenApiError::new("INVALID_VALUE", ["location", l]));
    }
    Ok(l.to_string())
}

/// A storage error of this host's copy in the form the remote mirror turns back into it.
fn mirror_error(sr: &str, e: StorageError) -> XenApiError {
    match e {
        StorageError::NoSuchVdi(l) => XenApiError::new("VDI_MISSING", [sr.to_string(), l]),
        other => backend_error(other),
    }
}

fn answer(status: u16, body: impl Into<Vec<u8>>) -> HttpAnswer {
    HttpAnswer {
        status,
        content_type: "text/plain",
        body: body.into(),
        www_authenticate: None,
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(h), Some(l)) => {
                    // Two hex digits make at most 255.
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Api {
    /// `SR.create` with `type` `als` (the whole request, as `SR.create` received it).
    ///
    /// `device_config`: `hosts`, the UUIDs (or references) of the hosts that hold a mirror,
    /// comma-separated; every host of the pool when absent; at least two. Each host keeps its
    /// copy under its data directory, and gets a PBD whose `device_config` says where. The
    /// SR is shared; its data path runs on this host (the coordinator), named by
    /// `sm_config["als_journal_host"]`.
    pub(super) async fn als_sr_create(&self, _cx: &Ctx, req: &Request) -> ApiResult {
        let node = self.node();
        let mut p = req.reader_range(9, 10)?;
        p.value()?;
        p.value()?; // host: every mirror host takes part, whichever is named
        let device_config: BTreeMap<String, String> = p
            .string_map("device_config")?
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        p.value()?; // physical_size: what the hosts' storage holds
        let name_label = p.string("name_label")?.to_string();
        let name_description = p.string("name_description")?.to_string();
        let sr_type = p.string("type")?.to_string();
        let content_type = p.string("content_type")?.to_string();
        p.value()?; // shared: an als SR is always shared
        let mut sm_config: BTreeMap<String, String> = match p.optional() {
            Some(Wire::Struct(fields)) => fields
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect(),
            _ => BTreeMap::new(),
        };
        if sr_type != SR_TYPE {
            return Err(XenApiError::new("SR_UNKNOWN_DRIVER", [sr_type]));
        }
        let (me, hosts) = {
            let db = node.state.db();
            let me = db
                .get::<HostRecord>(&node.state.host)
                .map_err(api_error)?
                .uuid
                .clone();
            let wanted: Vec<String> = match device_config.get(HOSTS_KEY) {
                Some(list) => list
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(str::to_string)
                    .collect(),
                None => db
                    .all::<HostRecord>()
                    .map(|(_, h)| h.uuid.clone())
                    .collect(),
            };
            let mut hosts: Vec<(Ref, String, String)> = Vec::new();
            for h in wanted {
                let r = match db.ref_by_uuid(Class::Host, &h) {
                    Ok(r) => r.clone(),
                    Err(_) => Ref::from_string(h.clone()),
                };
                let rec = db.get::<HostRecord>(&r).map_err(|_| {
                    XenApiError::new("INVALID_VALUE", [format!("device_config:{HOSTS_KEY}"), h])
                })?;
                if hosts.iter().all(|(x, _, _)| *x != r) {
                    hosts.push((r.clone(), rec.uuid.clone(), rec.address.clone()));
                }
            }
            (me, hosts)
        };
        if hosts.len() < 2 {
            return Err(XenApiError::new(
                "INVALID_VALUE",
                [
                    format!("device_config:{HOSTS_KEY}"),
                    "aggregated local storage needs at least two hosts".to_string(),
                ],
            ));
        }
        let sr = node.state.new_ref();
        let sr_uuid = node.state.new_uuid();
        // Every host makes its directory before the SR exists: an SR whose mirror cannot be
        // made on one of its hosts is not created at all.
        let secret = crate::pool::secret_or_error(node)?;
        let mut locations = Vec::new();
        for (r, uuid, address) in &hosts {
            let path = if *r == node.state.host {
                node.als_local_mirror(&sr_uuid)?
                    .root()
                    .to_string_lossy()
                    .into_owned()
            } else {
                let answer = node
                    .transport
                    .call(
                        address,
                        "host.xenpool_als_prepare",
                        vec![Wire::String(secret.clone()), Wire::String(sr_uuid.clone())],
                        PREPARE_TIMEOUT,
                    )
                    .await
                    .map_err(|e| {
                        if e.code == "HOST_OFFLINE" {
                            XenApiError::new("HOST_OFFLINE", [r.as_str()])
                        } else {
                            e
                        }
                    })?;
                match answer {
                    Wire::String(path) => path,
                    _ => {
                        return Err(XenApiError::internal_error(format!(
                            "bad answer from {uuid}"
                        )))
                    }
                }
            };
            locations.push(path);
        }
        let host_list = hosts
            .iter()
            .map(|(_, u, _)| u.as_str())
            .collect::<Vec<_>>()
            .join(",");
        sm_config.insert(JOURNAL_HOST.into(), me);
        let record = SrRecord {
            uuid: sr_uuid.clone(),
            name_label,
            name_description,
            r#type: SR_TYPE.into(),
            content_type,
            shared: true,
            sm_config,
            ..Default::default()
        };
        let inputs = node.state.inputs();
        let pbds: Vec<(Ref, PbdRecord)> = hosts
            .iter()
            .zip(&locations)
            .map(|((r, _, _), location)| {
                let mut device_config = device_config.clone();
                device_config.insert(HOSTS_KEY.into(), host_list.clone());
                device_config.insert("location".into(), location.clone());
                (
                    node.state.new_ref(),
                    PbdRecord {
                        uuid: node.state.new_uuid(),
                        host: r.clone(),
                        SR: sr.clone(),
                        device_config,
                        currently_attached: true,
                        ..Default::default()
                    },
                )
            })
            .collect();
        node.state
            .write(|txn| {
                txn.create(sr.clone(), record)?;
                for (r, pbd) in pbds {
                    txn.create(r, pbd)?;
                }
                xenpool_core::ops::refresh_allowed_operations(txn, &inputs).map(|_| ())
            })
            .map_err(api_error)?;
        // The journal is made now, so that a data path that cannot run here fails the call.
        let opened = match node.als_sr(&sr) {
            Ok(als) => tokio::task::spawn_blocking(move || {
                use xenpool_storage::SrDriver as _;
                als.usage().map_err(backend_error)
            })
            .await
            .unwrap_or_else(|e| Err(XenApiError::internal_error(e.to_string()))),
            Err(e) => Err(e),
        };
        match opened {
            Ok(usage) => {
                let size = i64::try_from(usage.physical_size).unwrap_or(i64::MAX);
                let _ = node
                    .state
                    .write(|txn| txn.update::<SrRecord>(&sr, |s| s.physical_size = size));
            }
            Err(e) => {
                let _ = node.state.write(|txn| {
                    let pbds = txn.get::<SrRecord>(&sr)?.PBDs.clone();
                    for p in pbds {
                        txn.destroy(Class::PBD, &p)?;
                    }
                    txn.destroy(Class::SR, &sr)
                });
                return Err(e);
            }
        }
        Ok(Wire::String(sr.as_str().to_string()))
    }

    /// The internal calls of [`INTERNAL_METHODS`], on this host's copy of an SR.
    pub(super) async fn als_internal(&self, req: &Request) -> ApiResult {
        if req.class != "host" {
            return Err(XenApiError::method_unknown(&req.method));
        }
        let node = self.node().clone();
        self.check_pool_secret(req)?;
        let mut p = req.reader_range(2, 5)?;
        p.value()?;
        let sr = p.string("sr")?.to_string();
        let mirror = node.als_local_mirror(&sr)?;
        let message = req.message.clone();
        // The arguments are read before the blocking part, which owns what it uses.
        enum Op {
            Prepare,
            Create(String, u64),
            Clone(String, String),
            Remove(String),
            List,
            Flush(String),
            Size(String),
            SetLen(String, u64),
            Utilisation(String),
            Capacity,
        }
        let op = match message.as_str() {
            "xenpool_als_prepare" => Op::Prepare,
            "xenpool_als_create" => Op::Create(location(&mut p)?, number(&mut p, "size")?),
            "xenpool_als_clone" => Op::Clone(location(&mut p)?, location(&mut p)?),
            "xenpool_als_remove" => Op::Remove(location(&mut p)?),
            "xenpool_als_list" => Op::List,
            "xenpool_als_flush" => Op::Flush(location(&mut p)?),
            "xenpool_als_size" => Op::Size(location(&mut p)?),
            "xenpool_als_set_len" => Op::SetLen(location(&mut p)?, number(&mut p, "length")?),
            "xenpool_als_utilisation" => Op::Utilisation(location(&mut p)?),
            "xenpool_als_capacity" => Op::Capacity,
            _ => return Err(XenApiError::method_unknown(&req.method)),
        };
        let sr2 = sr.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<Wire, StorageError> {
            let m = &*mirror;
            Ok(match op {
                Op::Prepare => Wire::String(m.root().to_string_lossy().into_owned()),
                Op::Create(l, size) => m.create(&l, size).map(|()| void())?,
                Op::Clone(source, l) => m.clone_image(&source, &l).map(|()| void())?,
                Op::Remove(l) => m.remove(&l).map(|()| void())?,
                Op::List => Wire::Array(m.list()?.into_iter().map(Wire::String).collect()),
                Op::Flush(l) => m.flush(&l).map(|()| void())?,
                Op::Size(l) => Wire::String(m.size(&l)?.to_string()),
                Op::SetLen(l, len) => m.set_len(&l, len).map(|()| void())?,
                Op::Utilisation(l) => Wire::String(m.physical_utilisation(&l)?.to_string()),
                Op::Capacity => Wire::String(m.capacity()?.to_string()),
            })
        })
        .await
        .map_err(|e| XenApiError::internal_error(e.to_string()))?;
        result.map_err(|e| mirror_error(&sr2, e))
    }

    /// `PUT /xenpool_als_write` (with `body`) and `GET /xenpool_als_read` (without) of
    /// `length` bytes at `offset` of an image of this host's copy of an SR: the data path
    /// of another host reaching this one's copy (see `crate::als::RemoteMirror`).
    async fn als_mirror_transfer(
        &self,
        query: &str,
        authorization: Option<&str>,
        body: Option<&mut xenpool_rpc::PutBody>,
    ) -> HttpAnswer {
        let node = self.node();
        let secret = authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("");
        if !crate::host_files::secret_matches(&node.config.data_dir, secret) {
            return answer(401, "the pool secret does not match\n");
        }
        let (Some(sr), Some(location)) = (query_param(query, "sr"), query_param(query, "location"))
        else {
            return answer(400, "sr and location required\n");
        };
        if !is_uuid(&location) {
            return answer(400, "bad location\n");
        }
        let number = |name: &str| query_param(query, name).and_then(|v| v.parse::<u64>().ok());
        let (Some(offset), Some(length)) = (number("offset"), number("length")) else {
            return answer(400, "offset and length required\n");
        };
        if length > MAX_CHUNK {
            return answer(400, format!("at most {MAX_CHUNK} bytes at once\n"));
        }
        let mirror = match node.als_local_mirror(&sr) {
            Ok(m) => m,
            Err(e) => return answer(400, format!("{e}\n")),
        };
        let data = match body {
            Some(body) => {
                let mut data = Vec::with_capacity(length as usize);
                loop {
                    match body.chunk().await {
                        Ok(Some(piece)) => {
                            if data.len() + piece.len() > length as usize {
                                return answer(400, "more data than length\n");
                            }
                            data.extend_from_slice(&piece);
                        }
                        Ok(None) => break,
                        Err(e) => return answer(400, format!("reading the body: {e}\n")),
                    }
                }
                if data.len() as u64 != length {
                    return answer(400, "less data than length\n");
                }
                Some(data)
            }
            None => None,
        };
        let done = tokio::task::spawn_blocking(move || match data {
            Some(data) => mirror
                .write_at(&location, offset, &data)
                .map(|()| Vec::new()),
            None => {
                let mut buf = vec![0u8; length as usize];
                mirror.read_at(&location, offset, &mut buf).map(|()| buf)
            }
        })
        .await;
        match done {
            Ok(Ok(bytes)) => HttpAnswer {
                status: 200,
                content_type: "application/octet-stream",
                body: bytes,
                www_authenticate: None,
            },
            Ok(Err(StorageError::NoSuchVdi(l))) => answer(404, format!("VDI_MISSING {sr} {l}\n")),
            Ok(Err(e)) => answer(500, format!("{e}\n")),
            Err(e) => answer(500, format!("{e}\n")),
        }
    }

    /// Checks the `session_id` of an HTTP transfer: a live session whose role may write
    /// VDIs. The answer to send back when it is not.
    fn als_http_session(&self, query: &str) -> Result<(), HttpAnswer> {
        let Some(session) = query_param(query, "session_id") else {
            return Err(answer(401, "session_id required\n"));
        };
        let req = Request {
            is_async: false,
            class: "VDI".into(),
            message: "create".into(),
            method: "VDI.create".into(),
            params: vec![Wire::String(session)],
        };
        let caller = self
            .check_session(&req)
            .map_err(|e| answer(401, format!("{e}\n")))?;
        super::auth::check_permission(&caller, &req).map_err(|e| answer(403, format!("{e}\n")))
    }

    /// The VDI a transfer names (`vdi=`, a reference or a UUID) and its SR's data path, or
    /// the answer to send back.
    fn als_http_vdi(&self, query: &str) -> Result<(AlsSr, String, u64), HttpAnswer> {
        let node = self.node();
        let Some(vdi) = query_param(query, "vdi") else {
            return Err(answer(400, "vdi required\n"));
        };
        let (sr, location, size, is_als) = {
            let db = node.state.db();
            let r = match db.ref_by_uuid(Class::VDI, &vdi) {
                Ok(r) => r.clone(),
                Err(_) => Ref::from_string(vdi.clone()),
            };
            let Ok(rec) = db.get::<VdiRecord>(&r) else {
                return Err(answer(404, format!("HANDLE_INVALID VDI {vdi}\n")));
            };
            let is_als = db
                .get::<SrRecord>(&rec.SR)
                .is_ok_and(|s| s.r#type == SR_TYPE);
            (
                rec.SR.clone(),
                rec.location.clone(),
                u64::try_from(rec.virtual_size).unwrap_or(0),
                is_als,
            )
        };
        if !is_als {
            return Err(answer(
                400,
                "raw transfers are served for VDIs of aggregated local storage (SR type als)\n",
            ));
        }
        if let Some(redirect) = node.redirect_for(&Request {
            is_async: false,
            class: "VDI".into(),
            message: "create".into(),
            method: "VDI.create".into(),
            params: Vec::new(),
        }) {
            return Err(answer(503, format!("{redirect}\n")));
        }
        let als = node
            .als_sr(&sr)
            .map_err(|e| answer(503, format!("{e}\n")))?;
        Ok((als, location, size))
    }

    /// `PUT /import_raw_vdi?session_id=…&vdi=…[&offset=N][&task_id=…]`: the body is
    /// written into the VDI from byte `offset` (0 when absent), through every in-sync
    /// mirror, then flushed. Formats other than `raw` are refused. A task named by
    /// `task_id` (from `task.create`) ends with the transfer, as xapi's clients wait on it.
    pub(super) async fn als_http_put(&self, mut put: HttpPut) -> Option<HttpAnswer> {
        if put.path == "/xenpool_als_write" {
            let answer = self
                .als_mirror_transfer(
                    &put.query,
                    put.authorization.as_deref(),
                    Some(&mut put.body),
                )
                .await;
            return Some(answer);
        }
        if put.path != "/import_raw_vdi" {
            return None;
        }
        if let Err(a) = self.als_http_session(&put.query) {
            return Some(a);
        }
        let task = query_param(&put.query, "task_id").map(Ref::from_string);
        let answer = self.als_import(&mut put).await;
        if let Some(task) = task {
            let state = &self.node().state;
            let _ = state.write(|txn| {
                if !txn.db().exists(Class::Task, &task) {
                    return Ok(());
                }
                txn.update::<xenpool_core::TaskRecord>(&task, |t| {
                    t.finished = crate::state::now();
                    t.progress = 1.0;
                    t.allowed_operations = vec![xenpool_core::TaskOperation::Destroy];
                    if answer.status == 200 {
                        t.status = xenpool_core::TaskStatus::Success;
                    } else {
                        t.status = xenpool_core::TaskStatus::Failure;
                        t.error_info = vec![
                            "VDI_IO_ERROR".into(),
                            String::from_utf8_lossy(&answer.body).trim().to_string(),
                        ];
                    }
                })
            });
        }
        Some(answer)
    }

    async fn als_import(&self, put: &mut HttpPut) -> HttpAnswer {
        if query_param(&put.query, "format").is_some_and(|f| f != "raw") {
            return answer(400, "only format=raw is served\n");
        }
        let offset = match query_param(&put.query, "offset").map(|o| o.parse::<u64>()) {
            None => 0,
            Some(Ok(o)) => o,
            Some(Err(_)) => return answer(400, "bad offset\n"),
        };
        let (als, location, size) = match self.als_http_vdi(&put.query) {
            Ok(v) => v,
            Err(a) => return a,
        };
        if put
            .content_length
            .is_some_and(|n| offset.saturating_add(n) > size)
        {
            return answer(
                400,
                format!("VDI_IO_ERROR: {offset} + content-length beyond the VDI's {size} bytes\n"),
            );
        }
        let node = self.node();
        let mut at = offset;
        let mut pending: Vec<u8> = Vec::with_capacity(MAX_CHUNK as usize);
        loop {
            let piece = match put.body.chunk().await {
                Ok(p) => p,
                Err(e) => return answer(400, format!("reading the body: {e}\n")),
            };
            let end = piece.is_none();
            if let Some(piece) = &piece {
                pending.extend_from_slice(piece);
            }
            while pending.len() >= MAX_CHUNK as usize || (end && !pending.is_empty()) {
                let n = pending.len().min(MAX_CHUNK as usize);
                let rest = pending.split_off(n);
                let data = std::mem::replace(&mut pending, rest);
                let len = data.len() as u64;
                if at.saturating_add(len) > size {
                    return answer(
                        400,
                        format!("VDI_IO_ERROR: beyond the VDI's {size} bytes\n"),
                    );
                }
                if let Err(e) = node.als_write(&als, &location, at, data).await {
                    return answer(500, format!("{e}\n"));
                }
                at += len;
            }
            if end {
                break;
            }
        }
        let flushed = {
            let als = als.clone();
            let location = location.clone();
            tokio::task::spawn_blocking(move || als.flush(&location)).await
        };
        match flushed {
            Ok(Ok(())) => answer(200, Vec::new()),
            Ok(Err(e)) => answer(500, format!("{}\n", backend_error(e))),
            Err(e) => answer(500, format!("{e}\n")),
        }
    }

    /// `GET /export_raw_vdi?session_id=…&vdi=…[&offset=N][&length=N]`: the VDI's bytes, as
    /// the in-sync mirrors hold them.
    pub(super) async fn als_http_get(&self, get: &HttpGet) -> Option<HttpAnswer> {
        if get.path == "/xenpool_als_read" {
            return Some(
                self.als_mirror_transfer(&get.query, get.authorization.as_deref(), None)
                    .await,
            );
        }
        if get.path != "/export_raw_vdi" {
            return None;
        }
        if let Err(a) = self.als_http_session(&get.query) {
            return Some(a);
        }
        let (als, location, size) = match self.als_http_vdi(&get.query) {
            Ok(v) => v,
            Err(a) => return Some(a),
        };
        let number = |name: &str| query_param(&get.query, name).map(|v| v.parse::<u64>());
        let offset = match number("offset") {
            None => 0,
            Some(Ok(o)) if o <= size => o,
            Some(_) => return Some(answer(400, "bad offset\n")),
        };
        let length = match number("length") {
            None => size - offset,
            Some(Ok(l)) if offset.saturating_add(l) <= size => l,
            Some(_) => return Some(answer(400, "bad length\n")),
        };
        if length > MAX_EXPORT {
            return Some(answer(
                413,
                format!(
                    "at most {MAX_EXPORT} bytes at once: ask for ranges with offset and length\n"
                ),
            ));
        }
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; length as usize];
            als.read_at(&location, offset, &mut buf).map(|()| buf)
        })
        .await;
        Some(match read {
            Ok(Ok(bytes)) => HttpAnswer {
                status: 200,
                content_type: "application/octet-stream",
                body: bytes,
                www_authenticate: None,
            },
            Ok(Err(e)) => answer(500, format!("{}\n", backend_error(e))),
            Err(e) => answer(500, format!("{e}\n")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        let q = "session_id=OpaqueRef%3Aabc&vdi=x+y&offset=65536";
        assert_eq!(
            query_param(q, "session_id").as_deref(),
            Some("OpaqueRef:abc")
        );
        assert_eq!(query_param(q, "vdi").as_deref(), Some("x y"));
        assert_eq!(query_param(q, "offset").as_deref(), Some("65536"));
        assert_eq!(query_param(q, "format"), None);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }
}
