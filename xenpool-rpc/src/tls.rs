//! The server certificate: self-signed on first start, kept in the data directory.
//!
//! xapi does the same (`/etc/xensource/xapi-ssl.pem`), and clients either pin its
//! fingerprint or are told to skip verification. The key file is created mode 0600.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::RpcError;

/// File name of the PEM certificate inside the data directory.
pub const CERT_FILE: &str = "xenpool-cert.pem";
/// File name of the PEM private key inside the data directory.
pub const KEY_FILE: &str = "xenpool-key.pem";

/// Path of the certificate that [`load_or_create_certificate`] keeps in `dir` (clients
/// that want to verify the server can be given this file).
pub fn certificate_path(dir: &Path) -> PathBuf {
    dir.join(CERT_FILE)
}

/// Loads the certificate and key kept in `dir`, or generates a self-signed pair for
/// `hostnames` (DNS names or IP addresses; `localhost` if empty) and stores it there.
///
/// If only one of the two files exists, that is an error rather than a silent
/// replacement: someone put a certificate there on purpose.
pub fn load_or_create_certificate(
    dir: &Path,
    hostnames: &[String],
) -> Result<Arc<rustls::ServerConfig>, RpcError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let (cert_pem, key_pem) = match (cert_path.exists(), key_path.exists()) {
        (true, true) => (
            fs::read(&cert_path).map_err(|e| RpcError::io(cert_path.display().to_string(), e))?,
            fs::read(&key_path).map_err(|e| RpcError::io(key_path.display().to_string(), e))?,
        ),
        (false, false) => {
            let names = if hostnames.is_empty() {
                vec!["localhost".to_owned()]
            } else {
                hostnames.to_vec()
            };
            let generated = rcgen::generate_simple_self_signed(names)
                .map_err(|e| RpcError::Tls(format!("generating a certificate: {e}")))?;
            let cert_pem = generated.cert.pem().into_bytes();
            let key_pem = generated.key_pair.serialize_pem().into_bytes();
            fs::create_dir_all(dir).map_err(|e| RpcError::io(dir.display().to_string(), e))?;
            write_file(&key_path, &key_pem, true)?;
            write_file(&cert_path, &cert_pem, false)?;
            (cert_pem, key_pem)
        }
        _ => {
            return Err(RpcError::Tls(format!(
                "only one of {} and {} exists; remove it or supply the other",
                cert_path.display(),
                key_path.display()
            )))
        }
    };
    server_config_from_pem(&cert_pem, &key_pem)
}

/// A rustls server configuration (HTTP/1.1 only) from a PEM certificate chain and key.
pub fn server_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, RpcError> {
    let certs = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RpcError::Tls(format!("reading certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(RpcError::Tls("no certificate in PEM".into()));
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| RpcError::Tls(format!("reading key PEM: {e}")))?
        .ok_or_else(|| RpcError::Tls("no private key in PEM".into()))?;
    // Name the provider explicitly: with more than one rustls backend in the dependency
    // tree, the process-wide default is ambiguous and rustls would refuse to pick.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RpcError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| RpcError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), RpcError> {
    let tmp = path.with_extension("tmp");
    let io = |e| RpcError::io(path.display().to_string(), e);
    // A leftover from a crash would keep its old mode: start from a fresh file.
    let _ = fs::remove_file(&tmp);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    // Rename so a crash never leaves a half-written key that later starts would trust.
    fs::rename(&tmp, path).map_err(io)
}
