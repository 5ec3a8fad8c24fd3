//! `host.call_plugin`: runs an executable from this host's plugin directory.
//!
//! The contract with a plugin: it is run with the function name as its only argument and
//! reads `{"fn": <name>, "args": {<string>: <string>, ...}}` (JSON) on its standard input;
//! what it writes on its standard output (UTF-8) is the call's result, and it exits 0. Any
//! other exit is `XENAPI_PLUGIN_FAILURE [status, stdout, stderr]`, the parameters xapi
//! gives (`"non-zero exit"`, `"signal: SIGKILL"`, ...).
//!
//! A plugin runs in a process group of its own, so that on expiry of its time limit or
//! when it writes too much, it is killed with everything it started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use xenpool_rpc::XenApiError;

/// How much of a failed plugin's output travels back in its error.
const ERROR_TAIL_BYTES: usize = 4096;

/// Bounds on one plugin run.
#[derive(Debug, Clone, Copy)]
pub struct PluginLimits {
    /// How long it may run.
    pub timeout: Duration,
    /// How many bytes it may write on its standard output.
    pub max_output: usize,
}

impl PluginLimits {
    /// The limits the configuration sets.
    pub fn from_config(config: &crate::config::Config) -> PluginLimits {
        PluginLimits {
            timeout: Duration::from_secs_f64(config.plugin_timeout_secs.clamp(0.001, 86_400.0)),
            max_output: config.plugin_max_output_bytes,
        }
    }
}

/// `XENAPI_MISSING_PLUGIN [name]`
pub fn missing(name: &str) -> XenApiError {
    XenApiError::new("XENAPI_MISSING_PLUGIN", [name])
}

/// `XENAPI_PLUGIN_FAILURE [status, stdout, stderr]`
pub fn failure(status: &str, stdout: &str, stderr: &str) -> XenApiError {
    XenApiError::new("XENAPI_PLUGIN_FAILURE", [status, stdout, stderr])
}

/// The executable `name` names in `dir`: a plain file name (no `/`, not starting with a
/// dot, so neither `..` nor hidden files), naming an executable regular file there.
/// Anything else is missing, as xapi answers for a name not in its directory.
pub fn find(dir: &Path, name: &str) -> Result<PathBuf, XenApiError> {
    let plain =
        !name.is_empty() && !name.starts_with('.') && !name.contains('/') && !name.contains('\0');
    if !plain {
        return Err(missing(name));
    }
    let path = dir.join(name);
    let executable = std::fs::metadata(&path).is_ok_and(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.is_file() && m.permissions().mode() & 0o111 != 0
    });
    if !executable {
        return Err(missing(name));
    }
    Ok(path)
}

/// The last `n` bytes of `bytes` as text.
fn tail(bytes: &[u8], n: usize) -> String {
    let start = bytes.len().saturating_sub(n);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Reads `r` to its end, keeping at most `limit` bytes; `true` when there was more.
async fn read_bounded(
    mut r: impl AsyncRead + Unpin,
    limit: usize,
    keep_tail: bool,
) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let mut over = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return (out, over),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > limit {
                    over = true;
                    if keep_tail {
                        out.drain(..out.len() - limit);
                    } else {
                        out.truncate(limit);
                        return (out, over);
                    }
                }
            }
        }
    }
}

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| sig.to_string())
}

/// Kills the plugin's process group (it leads it, and is not reaped yet, so the group id
/// is still its own).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Runs plugin `name` of `dir` with function `function` and `args`; returns its output.
pub async fn call(
    dir: &Path,
    name: &str,
    function: &str,
    args: &BTreeMap<String, String>,
    limits: PluginLimits,
) -> Result<String, XenApiError> {
    let path = find(dir, name)?;
    let input = serde_json::json!({ "fn": function, "args": args }).to_string();
    let mut child = tokio::process::Command::new(&path)
        .arg(function)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failure("cannot run the plugin", "", &e.to_string()))?;
    let pid = child.id();
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        kill_group(pid);
        return Err(XenApiError::internal_error("plugin pipes missing"));
    };
    // Written apart from the reads: a plugin may answer before it has read everything.
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(input.as_bytes()).await;
    });
    let run = async {
        let out = read_bounded(stdout, limits.max_output, false);
        let err = read_bounded(stderr, ERROR_TAIL_BYTES, true);
        let ((out, over), (err, _)) = tokio::join!(
            async {
                let r = out.await;
                if r.1 {
                    // Too much: stop it now rather than drain what it still writes.
                    kill_group(pid);
                }
                r
            },
            err
        );
        (out, over, err)
    };
    let outcome = tokio::time::timeout(limits.timeout, run).await;
    writer.abort();
    let Ok((out, over, err)) = outcome else {
        kill_group(pid);
        let _ = child.wait().await;
        tracing::warn!(plugin = name, function, "plugin killed at its time limit");
        return Err(failure(
            "timeout",
            "",
            &format!("no answer within {} s", limits.timeout.as_secs_f64()),
        ));
    };
    if over {
        let _ = child.wait().await;
        return Err(failure(
            "output too large",
            "",
            &format!("more than {} bytes on standard output", limits.max_output),
        ));
    }
    // Both pipes are closed: the plugin has exited or is about to.
    let status = match tokio::time::timeout(limits.timeout, child.wait()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(XenApiError::internal_error(e.to_string())),
        Err(_) => {
            kill_group(pid);
            let _ = child.wait().await;
            return Err(failure("timeout", "", "closed its output but did not exit"));
        }
    };
    let err = tail(&err, ERROR_TAIL_BYTES);
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        let reason = match status.signal() {
            Some(sig) => format!("signal: {}", signal_name(sig)),
            None => "non-zero exit".to_string(),
        };
        tracing::info!(plugin = name, function, code = ?status.code(), "plugin failed");
        return Err(failure(&reason, &tail(&out, ERROR_TAIL_BYTES), &err));
    }
    String::from_utf8(out).map_err(|e| {
        failure(
            "failed to parse plugin output",
            &tail(e.as_bytes(), ERROR_TAIL_BYTES),
            "not UTF-8",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_outside_the_directory_are_missing() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("plugins");
        std::fs::create_dir(&inner).unwrap();
        let outside = dir.path().join("x");
        std::fs::write(&outside, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in ["../x", "", ".", "..", ".hidden", "a/b", "/bin/sh"] {
            let e = find(&inner, name).unwrap_err();
            assert_eq!(e.code, "XENAPI_MISSING_PLUGIN", "{name}");
            assert_eq!(e.params, vec![name.to_string()]);
        }
        // Present but not executable.
        std::fs::write(inner.join("plain"), "data").unwrap();
        assert!(find(&inner, "plain").is_err());
        std::fs::create_dir(inner.join("sub")).unwrap();
        assert!(find(&inner, "sub").is_err());
        std::fs::copy(&outside, inner.join("ok")).unwrap();
        std::fs::set_permissions(inner.join("ok"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find(&inner, "ok").unwrap(), inner.join("ok"));
    }

    #[test]
    fn a_tail_keeps_the_end() {
        assert_eq!(tail(b"abcdef", 3), "def");
        assert_eq!(tail(b"ab", 3), "ab");
    }
}
