//! Plugins and performance data: `host.call_plugin`, `host.get_data_sources`,
//! `host.query_data_source`, `VM.get_data_sources`, `VM.query_data_source`, and
//! `GET /metrics`.
//!
//! Each runs on the host it is about: the coordinator forwards the call to that host over
//! the pool's internal calls (authenticated by the pool secret), as it does domain work.

use std::collections::BTreeMap;
use std::time::Duration;

use xenpool_core::{Class, CoreError, HostRecord, Ref, VmPowerState, VmRecord};
use xenpool_rpc::{HttpAnswer, HttpGet, Request, Value as Wire, XenApiError};

use super::{api_error, ref_param, Api, ApiResult, Ctx};
use crate::data_sources::{self, DataSource, Snapshot};
use crate::node::Node;

/// The methods routed here (see `api::ROUTES`).
pub const METHODS: &[(&str, &[&str])] = &[
    (
        "host",
        &["call_plugin", "get_data_sources", "query_data_source"],
    ),
    ("VM", &["get_data_sources", "query_data_source"]),
];

/// What a host asks another to run for it, beyond what the plugin itself may take.
const FORWARD_MARGIN: Duration = Duration::from_secs(30);

fn json_error(e: serde_json::Error) -> XenApiError {
    XenApiError::internal_error(e.to_string())
}

/// The data sources of this host, or of `vm` running here.
async fn local_sources(node: &Node, vm: Option<&VmRecord>) -> Result<Vec<DataSource>, XenApiError> {
    let snapshot = Snapshot::read(node.hypervisor.clone()).await?;
    let db = node.state.db();
    Ok(match vm {
        None => snapshot.host_sources(&db, &node.state.host),
        Some(vm) => snapshot.vm_sources(&db, vm),
    })
}

impl Api {
    /// The data sources of `host`, or of `vm` running on it, asked of that host. The VM's
    /// record travels with the question: the host's copy of the database may not have it
    /// yet.
    async fn sources_on(
        &self,
        host: &Ref,
        vm: Option<&VmRecord>,
    ) -> Result<Vec<DataSource>, XenApiError> {
        let node = self.node();
        if *host == node.state.host {
            return local_sources(node, vm).await;
        }
        let vm = match vm {
            Some(v) => serde_json::to_string(v).map_err(json_error)?,
            None => String::new(),
        };
        let address = crate::pool::host_address(&node.state.db(), host)?;
        let secret = crate::pool::secret_or_error(node)?;
        let answer = node
            .transport
            .call(
                &address,
                "host.xenpool_data_sources",
                vec![Wire::String(secret), Wire::String(vm)],
                FORWARD_MARGIN,
            )
            .await?;
        let Wire::String(text) = answer else {
            return Err(XenApiError::internal_error("bad data sources from a host"));
        };
        serde_json::from_str(&text).map_err(json_error)
    }

    /// The host a VM's figures come from, or `None` when it has no domain: xapi answers
    /// data source queries of running and paused VMs only.
    fn vm_host(&self, vm: &Ref) -> Result<(VmRecord, Option<Ref>), XenApiError> {
        let db = self.node().state.db();
        let v = db.get::<VmRecord>(vm).map_err(api_error)?;
        let live = matches!(v.power_state, VmPowerState::Running | VmPowerState::Paused);
        let host = (live && !v.resident_on.is_null()).then(|| v.resident_on.clone());
        Ok((v.clone(), host))
    }

    pub(super) async fn extras_call(
        &self,
        _cx: &Ctx,
        req: &Request,
    ) -> Result<Option<Wire>, XenApiError> {
        let node = self.node();
        let out = match (req.class.as_str(), req.message.as_str()) {
            ("host", "call_plugin") => {
                let mut p = req.reader(5)?;
                p.value()?;
                let host = ref_param(&mut p, "host")?;
                let plugin = p.string("plugin")?.to_string();
                let function = p.string("fn")?.to_string();
                let args: BTreeMap<String, String> = p
                    .string_map("args")?
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                node.state
                    .db()
                    .get::<HostRecord>(&host)
                    .map_err(api_error)?;
                Wire::String(
                    self.call_plugin_on(&host, &plugin, &function, &args)
                        .await?,
                )
            }
            ("host", "get_data_sources") => {
                let mut p = req.reader(2)?;
                p.value()?;
                let host = ref_param(&mut p, "host")?;
                node.state
                    .db()
                    .get::<HostRecord>(&host)
                    .map_err(api_error)?;
                let list = self.sources_on(&host, None).await?;
                Wire::Array(list.iter().map(DataSource::to_wire).collect())
            }
            ("host", "query_data_source") => {
                let mut p = req.reader(3)?;
                p.value()?;
                let host = ref_param(&mut p, "host")?;
                let name = p.string("data_source")?.to_string();
                node.state
                    .db()
                    .get::<HostRecord>(&host)
                    .map_err(api_error)?;
                let list = self.sources_on(&host, None).await?;
                Wire::Double(data_sources::pick(&list, &name)?)
            }
            ("VM", "get_data_sources") => {
                let mut p = req.reader(2)?;
                p.value()?;
                let vm = ref_param(&mut p, "self")?;
                let list = match self.vm_host(&vm)? {
                    (rec, Some(host)) => self.sources_on(&host, Some(&rec)).await?,
                    (_, None) => Vec::new(),
                };
                Wire::Array(list.iter().map(DataSource::to_wire).collect())
            }
            ("VM", "query_data_source") => {
                let mut p = req.reader(3)?;
                p.value()?;
                let vm = ref_param(&mut p, "self")?;
                let name = p.string("data_source")?.to_string();
                let (rec, host) = self.vm_host(&vm)?;
                let Some(host) = host else {
                    return Err(api_error(CoreError::VmBadPowerState {
                        vm,
                        expected: vec![VmPowerState::Running, VmPowerState::Paused],
                        actual: rec.power_state,
                    }));
                };
                let list = self.sources_on(&host, Some(&rec)).await?;
                Wire::Double(data_sources::pick(&list, &name)?)
            }
            _ => return Ok(None),
        };
        Ok(Some(out))
    }

    /// Runs a plugin on `host`: here, or forwarded to it.
    async fn call_plugin_on(
        &self,
        host: &Ref,
        plugin: &str,
        function: &str,
        args: &BTreeMap<String, String>,
    ) -> Result<String, XenApiError> {
        let node = self.node();
        let limits = crate::plugins::PluginLimits::from_config(&node.config);
        if *host == node.state.host {
            return crate::plugins::call(&node.config.plugin_dir(), plugin, function, args, limits)
                .await;
        }
        let address = crate::pool::host_address(&node.state.db(), host)?;
        let secret = crate::pool::secret_or_error(node)?;
        let args = serde_json::to_string(args).map_err(json_error)?;
        let answer = node
            .transport
            .call(
                &address,
                "host.xenpool_call_plugin",
                vec![
                    Wire::String(secret),
                    Wire::String(plugin.to_string()),
                    Wire::String(function.to_string()),
                    Wire::String(args),
                ],
                limits.timeout + FORWARD_MARGIN,
            )
            .await?;
        match answer {
            Wire::String(s) => Ok(s),
            _ => Err(XenApiError::internal_error("bad plugin answer from a host")),
        }
    }

    /// Host-to-host calls of this module, after `internal_call` checked the pool secret.
    pub(super) async fn extras_internal(&self, req: &Request) -> Option<ApiResult> {
        let node = self.node();
        if req.class != "host" {
            return None;
        }
        Some(match req.message.as_str() {
            "xenpool_call_plugin" => {
                let run = async {
                    let mut p = req.reader(4)?;
                    p.value()?;
                    let plugin = p.string("plugin")?.to_string();
                    let function = p.string("fn")?.to_string();
                    let args: BTreeMap<String, String> = serde_json::from_str(p.string("args")?)
                        .map_err(|e| XenApiError::new("INVALID_VALUE", ["args", &e.to_string()]))?;
                    let limits = crate::plugins::PluginLimits::from_config(&node.config);
                    let out = crate::plugins::call(
                        &node.config.plugin_dir(),
                        &plugin,
                        &function,
                        &args,
                        limits,
                    )
                    .await?;
                    Ok(Wire::String(out))
                };
                run.await
            }
            "xenpool_data_sources" => {
                let run = async {
                    let mut p = req.reader(2)?;
                    p.value()?;
                    let vm = p.string("vm")?;
                    let vm: Option<VmRecord> = if vm.is_empty() {
                        None
                    } else {
                        Some(serde_json::from_str(vm).map_err(|e| {
                            XenApiError::new("INVALID_VALUE", ["vm", &e.to_string()])
                        })?)
                    };
                    let list = local_sources(node, vm.as_ref()).await?;
                    Ok(Wire::String(
                        serde_json::to_string(&list).map_err(json_error)?,
                    ))
                };
                run.await
            }
            _ => return None,
        })
    }

    /// `GET /metrics`, for a session (`?session_id=`) or a local user's password (HTTP
    /// basic authentication), as xapi's HTTP handlers accept either.
    pub(super) async fn http_get(&self, get: HttpGet) -> Option<HttpAnswer> {
        if get.path != "/metrics" && get.path != "/rrd_updates" {
            return None;
        }
        if !self.http_authorised(&get).await {
            return Some(HttpAnswer {
                status: 401,
                content_type: "text/plain",
                body: b"authentication required: ?session_id=<session> or basic authentication\n"
                    .to_vec(),
                www_authenticate: Some("Basic realm=\"xenpool\""),
            });
        }
        let answer = if get.path == "/rrd_updates" {
            let with_host = get.query.split('&').any(|kv| kv == "host=true");
            crate::metrics::render_rrd_updates(self.node(), with_host)
                .await
                .map(|xml| (xml, "text/xml"))
        } else {
            crate::metrics::render(self.node())
                .await
                .map(|text| (text, "text/plain; version=0.0.4"))
        };
        Some(match answer {
            Ok((text, content_type)) => HttpAnswer {
                status: 200,
                content_type,
                body: text.into_bytes(),
                www_authenticate: None,
            },
            Err(e) => HttpAnswer {
                status: 500,
                content_type: "text/plain",
                body: e.to_string().into_bytes(),
                www_authenticate: None,
            },
        })
    }

    async fn http_authorised(&self, get: &HttpGet) -> bool {
        let session = get.query.split('&').find_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| *k == "session_id")
                .map(|(_, v)| percent_decode(v))
        });
        if let Some(session) = session {
            let session = Ref::from_string(session);
            let local = self
                .node()
                .local_sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&session);
            return local || self.node().state.db().exists(Class::Session, &session);
        }
        let Some(basic) = get
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Basic "))
        else {
            return false;
        };
        use base64::Engine as _;
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else {
            return false;
        };
        let Ok(text) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((user, password)) = text.split_once(':') else {
            return false;
        };
        self.authenticate(user, password.to_string()).await.is_ok()
    }
}

/// A query value with its `%XX` escapes decoded (`OpaqueRef%3A...`); `+` is a space.
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(super::percent_decode("OpaqueRef%3Aab-c"), "OpaqueRef:ab-c");
        assert_eq!(super::percent_decode("a+b%2"), "a b%2");
    }
}
