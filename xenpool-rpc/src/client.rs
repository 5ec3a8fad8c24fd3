//! A XenAPI client over reqwest (rustls), XML-RPC by default, JSON-RPC on request.
//!
//! It follows the pool's redirect by itself: a member answers control calls with
//! `HOST_IS_SLAVE [coordinator address]`; the client then points its URL at that address
//! (same scheme and port), logs in again with the same credentials if its session came
//! from [`Client::login_with_password`], and retries, up to a bounded number of hops.

use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Url;

use crate::error::{RpcError, XenApiError, HOST_IS_SLAVE};
use crate::json::{self, JsonVersion};
use crate::value::Value;
use crate::xml;

const LOGIN: &str = "session.login_with_password";

/// Options for a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    json: bool,
    accept_invalid_certs: bool,
    trusted_pem: Vec<Vec<u8>>,
    timeout: Option<Duration>,
    connect_timeout: Duration,
    max_redirects: usize,
    originator: String,
}

impl ClientBuilder {
    /// Use JSON-RPC 2.0 at `<url>/jsonrpc` instead of XML-RPC at the URL itself.
    pub fn json_rpc(mut self, on: bool) -> Self {
        self.json = on;
        self
    }

    /// Accept any server certificate (xapi's self-signed default; use only when the
    /// network is trusted).
    pub fn accept_invalid_certs(mut self, on: bool) -> Self {
        self.accept_invalid_certs = on;
        self
    }

    /// Trust this PEM certificate (e.g. the pool's self-signed one) in addition to the
    /// usual roots.
    pub fn trust_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.trusted_pem.push(pem.into());
        self
    }

    /// Give up on a call after this long. Leave unset for `event.from` long-polls.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How many `HOST_IS_SLAVE` redirects one call may follow (default 3).
    pub fn max_redirects(mut self, n: usize) -> Self {
        self.max_redirects = n;
        self
    }

    /// The `originator` sent at login (xapi uses it to account sessions per client).
    pub fn originator(mut self, originator: impl Into<String>) -> Self {
        self.originator = originator.into();
        self
    }

    /// Builds the client; nothing is connected yet.
    pub fn build(self) -> Result<Client, RpcError> {
        let url = Url::parse(&self.url).map_err(|e| RpcError::Url {
            url: self.url.clone(),
            reason: e.to_string(),
        })?;
        let mut http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(self.connect_timeout)
            .danger_accept_invalid_certs(self.accept_invalid_certs);
        if let Some(t) = self.timeout {
            http = http.timeout(t);
        }
        for pem in &self.trusted_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| RpcError::Tls(format!("trusted certificate: {e}")))?;
            http = http.add_root_certificate(cert);
        }
        let http = http.build().map_err(RpcError::Http)?;
        Ok(Client {
            http,
            json: self.json,
            max_redirects: self.max_redirects,
            originator: self.originator,
            next_id: AtomicI64::new(0),
            state: Mutex::new(State {
                url,
                session: None,
                login: None,
            }),
        })
    }
}

#[derive(Debug, Clone)]
struct State {
    url: Url,
    session: Option<String>,
    login: Option<Vec<Value>>,
}

/// A XenAPI client bound to one pool (it moves between the pool's hosts by itself).
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    json: bool,
    max_redirects: usize,
    originator: String,
    next_id: AtomicI64,
    state: Mutex<State>,
}

impl Client {
    /// A client for `url` (e.g. `https://10.0.0.1/`) with default options.
    pub fn new(url: &str) -> Result<Client, RpcError> {
        Client::builder(url).build()
    }

    /// Options for a client of `url`.
    pub fn builder(url: &str) -> ClientBuilder {
        ClientBuilder {
            url: url.to_owned(),
            json: false,
            accept_invalid_certs: false,
            trusted_pem: Vec::new(),
            timeout: None,
            connect_timeout: Duration::from_secs(10),
            max_redirects: 3,
            originator: "xenpool-rpc".to_owned(),
        }
    }

    /// The URL calls currently go to (it changes when a redirect is followed).
    pub fn url(&self) -> String {
        self.lock().url.to_string()
    }

    /// The session obtained by the last login, if any.
    pub fn session(&self) -> Option<String> {
        self.lock().session.clone()
    }

    /// Logs in and remembers the session and the credentials (for re-login after a
    /// redirect). Returns the session reference.
    pub async fn login_with_password(
        &self,
        user: &str,
        password: &str,
    ) -> Result<String, RpcError> {
        let params = vec![
            Value::from(user),
            Value::from(password),
            Value::from("1.0"),
            Value::from(self.originator.as_str()),
        ];
        let session = self.login(&params).await?;
        self.lock().login = Some(params);
        Ok(session)
    }

    /// Logs the current session out and forgets it and the credentials.
    pub async fn logout(&self) -> Result<(), RpcError> {
        let session = {
            let mut st = self.lock();
            st.login = None;
            st.session.take()
        };
        if let Some(s) = session {
            self.call("session.logout", vec![Value::String(s)]).await?;
        }
        Ok(())
    }

    /// Calls `method` with `params` exactly as given (the session, if the call needs one,
    /// is the caller's first parameter), following `HOST_IS_SLAVE` redirects. If the
    /// first parameter is this client's own session and the client logged in itself, the
    /// session is renewed on the new host and substituted.
    pub async fn call(&self, method: &str, mut params: Vec<Value>) -> Result<Value, RpcError> {
        let mut hops = 0;
        let mut relogin = false;
        loop {
            let url = self.lock().url.clone();
            if relogin {
                let login = self.lock().login.clone();
                if let Some(login) = login {
                    match self.call_once(&url, LOGIN, &login).await {
                        Ok(Value::String(s)) => {
                            self.lock().session = Some(s.clone());
                            if let Some(first) = params.first_mut() {
                                *first = Value::String(s);
                            }
                        }
                        Ok(other) => {
                            return Err(RpcError::Protocol(format!(
                                "login returned a {}, not a session reference",
                                other.kind()
                            )))
                        }
                        Err(RpcError::Api(e)) if e.code == HOST_IS_SLAVE => {
                            self.redirect(&url, &e, &mut hops)?;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            match self.call_once(&url, method, &params).await {
                Err(RpcError::Api(e)) if e.code == HOST_IS_SLAVE => {
                    self.redirect(&url, &e, &mut hops)?;
                    relogin = method != LOGIN && self.uses_own_session(&params);
                }
                other => return other,
            }
        }
    }

    async fn login(&self, params: &[Value]) -> Result<String, RpcError> {
        match self.call(LOGIN, params.to_vec()).await? {
            Value::String(s) => {
                self.lock().session = Some(s.clone());
                Ok(s)
            }
            other => Err(RpcError::Protocol(format!(
                "login returned a {}, not a session reference",
                other.kind()
            ))),
        }
    }

    fn uses_own_session(&self, params: &[Value]) -> bool {
        let st = self.lock();
        match (&st.session, &st.login, params.first()) {
            (Some(own), Some(_), Some(Value::String(first))) => own == first,
            _ => false,
        }
    }

    fn redirect(&self, from: &Url, err: &XenApiError, hops: &mut usize) -> Result<(), RpcError> {
        // With redirects turned off the caller sees the redirect itself, address included.
        if self.max_redirects == 0 {
            return Err(RpcError::Api(err.clone()));
        }
        *hops += 1;
        if *hops > self.max_redirects {
            return Err(RpcError::TooManyRedirects(self.max_redirects));
        }
        let Some(addr) = err.params.first() else {
            return Err(RpcError::Api(err.clone()));
        };
        let to = redirect_url(from, addr)?;
        tracing::debug!(from = %from, to = %to, "following HOST_IS_SLAVE");
        self.lock().url = to;
        Ok(())
    }

    async fn call_once(
        &self,
        url: &Url,
        method: &str,
        params: &[Value],
    ) -> Result<Value, RpcError> {
        let (url, body, content_type) = if self.json {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let mut url = url.clone();
            url.set_path("/jsonrpc");
            let body = json::encode_request(JsonVersion::V2, id, method, params);
            (url, body, "application/json")
        } else {
            (url.clone(), xml::encode_call(method, params), "text/xml")
        };
        let resp = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .map_err(RpcError::Http)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(RpcError::HttpStatus {
                status: status.as_u16(),
            });
        }
        let bytes = resp.bytes().await.map_err(RpcError::Http)?;
        let decoded = if self.json {
            json::decode_response(&bytes)?
        } else {
            xml::decode_response(&bytes)?
        };
        decoded.map_err(RpcError::Api)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is plain data updated in single assignments; a panic elsewhere cannot
        // leave it half-written, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `from` with its host replaced by `addr` (scheme, port and path kept).
pub fn redirect_url(from: &Url, addr: &str) -> Result<Url, RpcError> {
    let addr = addr.trim();
    let host = match addr.parse::<Ipv6Addr>() {
        Ok(v6) => format!("[{v6}]"),
        Err(_) => addr.to_owned(),
    };
    let mut to = from.clone();
    to.set_host(Some(&host)).map_err(|e| RpcError::Url {
        url: from.to_string(),
        reason: format!("cannot redirect to {addr:?}: {e}"),
    })?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn redirect_keeps_scheme_and_port() {
        let from = Url::parse("https://10.0.0.1:4443/").unwrap();
        assert_eq!(
            redirect_url(&from, "10.0.0.2").unwrap().as_str(),
            "https://10.0.0.2:4443/"
        );
        assert_eq!(
            redirect_url(&from, "fe80::1").unwrap().as_str(),
            "https://[fe80::1]:4443/"
        );
        assert_eq!(
            redirect_url(&Url::parse("http://a/").unwrap(), "b.example")
                .unwrap()
                .as_str(),
            "http://b.example/"
        );
        assert!(redirect_url(&from, "bad host/").is_err());
    }
}
