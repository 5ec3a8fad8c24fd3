//! Example programs live under `examples/` (binaries in `src/bin/`). This library holds what
//! they share: small helpers over XenAPI values and calls, and a throw-away three-host pool
//! of real `xenpoold` processes for running an example standalone.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use xenpool_rpc::{Client, Value};
use xenpool_tests::{free_port, Daemon};

/// A string value (references, names, enum values are all strings on the wire).
pub fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

/// The text of a string value; other kinds are shown in debug form.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// A field of a struct value.
pub fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Struct(m) => m.iter().find(|(n, _)| n == name).map(|(_, v)| v),
        _ => None,
    }
}

/// The text of a struct's field, or `""` when it is missing.
pub fn field_text(v: &Value, name: &str) -> String {
    field(v, name).map(text).unwrap_or_default()
}

/// The items of an array value (empty for anything else).
pub fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        _ => Vec::new(),
    }
}

/// Calls `method` with the client's own session prepended (so the client can renew it when
/// it follows the coordinator), with the method name as error context.
pub async fn api(c: &Client, method: &str, args: Vec<Value>) -> anyhow::Result<Value> {
    let session = c
        .session()
        .ok_or_else(|| anyhow!("{method}: the client is not logged in"))?;
    let mut params = Vec::with_capacity(args.len() + 1);
    params.push(Value::String(session));
    params.extend(args);
    c.call(method, params)
        .await
        .with_context(|| format!("{method} failed"))
}

/// Like [`api`], for calls that return a string (a reference, a name, an enum).
pub async fn api_text(c: &Client, method: &str, args: Vec<Value>) -> anyhow::Result<String> {
    match api(c, method, args).await? {
        Value::String(s) => Ok(s),
        other => bail!("{method} returned a {}, not a string", other.kind()),
    }
}

/// Three `xenpoold` processes on 127.`net`.0.1-3 (same ports on each, as in a real pool),
/// the second and third joined to the first, in a temporary directory removed on drop.
#[derive(Debug)]
pub struct SpawnedPool {
    /// The hosts; the first one coordinates.
    pub hosts: Vec<Daemon>,
    /// The root password of the pool (the first host's).
    pub password: String,
    // Dropped after the hosts (fields drop in order), so the processes go first.
    dir: tempfile::TempDir,
}

impl SpawnedPool {
    /// Starts and joins the pool. `extra` flags go to every host.
    pub async fn start(net: u8, extra: &[&str]) -> anyhow::Result<SpawnedPool> {
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let addr = |i: u8| IpAddr::from([127, net, 0, i]);
        let ports = (free_port(addr(1)), free_port(addr(1)));
        let shared = dir.path().join("shared-sr");
        std::fs::create_dir_all(&shared)?;
        let shared = shared.to_string_lossy().to_string();
        let mut first = vec!["--shared-sr", shared.as_str(), "--host-name", "host1"];
        first.extend_from_slice(extra);
        let mut hosts = vec![Daemon::try_start_on(
            dir.path(),
            "host1",
            addr(1),
            ports.0,
            ports.1,
            &first,
        )?];
        for i in 2..=3u8 {
            let name = format!("host{i}");
            let mut flags = vec!["--no-demo", "--host-name", name.as_str()];
            flags.extend_from_slice(extra);
            hosts.push(Daemon::try_start_on(
                dir.path(),
                &name,
                addr(i),
                ports.0,
                ports.1,
                &flags,
            )?);
        }
        let password = hosts[0].root_password();
        for h in &hosts[1..] {
            let c = Client::new(&h.url())?;
            c.login_with_password("root", &h.root_password())
                .await
                .with_context(|| format!("login on {}", h.address))?;
            api(
                &c,
                "pool.join",
                vec![s(&addr(1).to_string()), s("root"), s(&password)],
            )
            .await
            .with_context(|| format!("{} joining the pool", h.address))?;
        }
        Ok(SpawnedPool {
            hosts,
            password,
            dir,
        })
    }

    /// The coordinator's URL.
    pub fn url(&self) -> String {
        self.hosts[0].url()
    }

    /// Where the pool keeps its files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// How an example reaches an existing pool: flattened into each example's arguments.
#[derive(Debug, clap::Args)]
pub struct PoolArgs {
    /// URL of any host of the pool (a member redirects the client to the coordinator).
    #[arg(long, default_value = "http://127.0.0.1:8080/")]
    pub url: String,
    /// User name.
    #[arg(long, default_value = "root")]
    pub user: String,
    /// File holding the password (e.g. target/local-pool/host1/root-password).
    #[arg(long, conflicts_with = "password")]
    pub password_file: Option<std::path::PathBuf>,
    /// The password itself.
    #[arg(long)]
    pub password: Option<String>,
}

impl PoolArgs {
    /// The password given, read from its file if need be.
    pub fn password(&self) -> anyhow::Result<String> {
        match (&self.password, &self.password_file) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(f)) => Ok(std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the password file {}", f.display()))?
                .trim()
                .to_string()),
            (None, None) => bail!("give --password-file, --password or --spawn"),
        }
    }
}
