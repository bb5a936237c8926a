//! The host API as the shim reaches it: the host calls a plugin makes while it handles a request
//! (log, its storage, emit; `sdk/PROTOCOL.md`, "Host calls") forwarded to the router's
//! `airlock.host.v1.Host`.
//!
//! [`HostCalls`] is all the supervisor needs: one call in, its result JSON or a [`CallError`] out.
//! [`GrpcHost`] implements it over gRPC and owns both mappings: a call's `args` to the RPC's
//! request, and the RPC's response (or status) back to the result line of `sdk/PROTOCOL.md`. Values
//! and payloads travel as the plugin wrote them (raw JSON text), never parsed into numbers and
//! written again. Over mutual TLS the shim speaks with its own certificate, so the router learns
//! the plugin from the connection, never from the call; the certificate is re-read when the
//! mounted Secret changes, so a re-issued one is used without a restart.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use airlock_proto::host::v1::host_client::HostClient;
use airlock_proto::host::v1::{
    DeleteRequest, DeleteResponse, EmitRequest, GetRequest, GetResponse, ListRequest, ListResponse,
    LogRequest, LogResponse, PutRequest, WrittenByRequest, WrittenByResponse,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use tonic::client::GrpcService;
use tonic::codegen::{Body, Bytes, StdError as BoxError};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use tracing::{info, warn};

use airlock_sdk::protocol::{CallError, HostCallLine, calls};

/// The result of one host call: the `result` JSON of `sdk/PROTOCOL.md` (one document, as text) or why
/// the call failed.
pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<String, CallError>> + Send + 'a>>;

/// Where the plugin's host calls go. The supervisor hands each call here with the id of the
/// invocation (or lifecycle hook) being handled and writes what comes back on the plugin's stdin.
///
/// A failure is an answer for the plugin, never an error of the shim: the plugin reads it and
/// decides. Implementations need not check the call's name: the supervisor answers names outside
/// [`calls::ALL`] with [`unimplemented`] itself.
pub trait HostCalls: Send + Sync + fmt::Debug {
    /// Makes `call` on behalf of the plugin, during `invocation_id`.
    fn call<'a>(&'a self, invocation_id: &'a str, call: HostCallLine) -> CallFuture<'a>;
}

/// The failure of a call whose name this shim does not know (a newer plugin, or a typo).
pub fn unimplemented(call: &str) -> CallError {
    CallError {
        code: code_name(Code::Unimplemented).to_string(),
        message: format!(
            "unknown host call {call:?}; this shim knows {}",
            calls::ALL.join(", ")
        ),
    }
}

/// The failure of every call when the shim was started without `--host-api`.
pub fn not_configured() -> CallError {
    CallError {
        code: code_name(Code::Unavailable).to_string(),
        message: "this shim has no host API configured".to_string(),
    }
}

/// The gRPC code name as `sdk/PROTOCOL.md` spells it in a failed call's `code`.
pub fn code_name(code: Code) -> &'static str {
    airlock_core::grpc::code_name(code as i32)
}

/// The one place a host API status becomes what the plugin is told.
fn call_error(status: &Status) -> CallError {
    let code = code_name(status.code());
    CallError {
        code: code.to_string(),
        message: if status.message().is_empty() {
            format!("the host API failed the call with {code}")
        } else {
            status.message().to_string()
        },
    }
}

fn error(code: Code, message: String) -> CallError {
    CallError {
        code: code_name(code).to_string(),
        message,
    }
}

/// What the host API client can run over: a channel to the router ([`GrpcHost`]), or a host API
/// service in this process ([`InProcessHost`]).
pub trait HostTransport:
    GrpcService<
        tonic::body::Body,
        Error: Into<BoxError>,
        Future: Send,
        ResponseBody: Body<Data = Bytes, Error: Into<BoxError> + Send> + Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> HostTransport for T where
    T: GrpcService<
            tonic::body::Body,
            Error: Into<BoxError>,
            Future: Send,
            ResponseBody: Body<Data = Bytes, Error: Into<BoxError> + Send> + Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// A host call turned into its RPC's request.
#[derive(Debug, Clone, PartialEq)]
enum HostRequest {
    Log(LogRequest),
    Get(GetRequest),
    Put(PutRequest),
    Delete(DeleteRequest),
    List(ListRequest),
    WrittenBy(WrittenByRequest),
    Emit(EmitRequest),
}

#[derive(Deserialize)]
struct LogArgs {
    level: String,
    message: String,
}

#[derive(Deserialize)]
struct KeyArgs {
    key: String,
}

#[derive(Deserialize)]
struct PutArgs<'a> {
    key: String,
    // Borrowed raw text: the value goes on exactly as the plugin wrote it (`null` included).
    #[serde(borrow)]
    value: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListArgs {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    page_token: String,
    /// 0 lets the host choose (100); the host cuts more than 1000 to 1000.
    #[serde(default)]
    page_size: u32,
}

#[derive(Deserialize)]
struct EmitArgs<'a> {
    #[serde(rename = "type")]
    event_type: String,
    /// Left out (or `null`): the payload is `null`.
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

impl HostRequest {
    /// The request for `call` made during `invocation_id`. Unknown fields of `args` are ignored
    /// (a newer plugin may send more); missing or mistyped ones are INVALID_ARGUMENT.
    /// `plugin_version` goes with the storage writes.
    fn of(
        invocation_id: &str,
        plugin_version: &str,
        call: &HostCallLine,
    ) -> Result<Self, CallError> {
        fn args<'a, T: Deserialize<'a>>(call: &'a HostCallLine) -> Result<T, CallError> {
            serde_json::from_str(&call.args).map_err(|e| {
                error(
                    Code::InvalidArgument,
                    format!("the args of {} are invalid: {e}", call.call),
                )
            })
        }
        let invocation_id = invocation_id.to_string();
        Ok(match call.call.as_str() {
            calls::LOG => {
                let LogArgs { level, message } = args(call)?;
                Self::Log(LogRequest {
                    invocation_id,
                    level,
                    message,
                })
            }
            calls::STORAGE_GET => {
                let KeyArgs { key } = args(call)?;
                Self::Get(GetRequest { invocation_id, key })
            }
            calls::STORAGE_PUT => {
                let PutArgs { key, value } = args(call)?;
                Self::Put(PutRequest {
                    invocation_id,
                    key,
                    value_json: value.get().to_string(),
                    plugin_version: plugin_version.to_string(),
                })
            }
            calls::STORAGE_DELETE => {
                let KeyArgs { key } = args(call)?;
                Self::Delete(DeleteRequest {
                    invocation_id,
                    key,
                    plugin_version: plugin_version.to_string(),
                })
            }
            calls::STORAGE_LIST => {
                let ListArgs {
                    prefix,
                    page_token,
                    page_size,
                } = args(call)?;
                Self::List(ListRequest {
                    invocation_id,
                    prefix,
                    page_token,
                    page_size,
                })
            }
            calls::STORAGE_WRITTEN_BY => Self::WrittenBy(WrittenByRequest { invocation_id }),
            calls::EMIT => {
                let EmitArgs {
                    event_type,
                    payload,
                } = args(call)?;
                Self::Emit(EmitRequest {
                    invocation_id,
                    event_type,
                    payload_json: payload.map_or("null", RawValue::get).to_string(),
                })
            }
            other => return Err(unimplemented(other)),
        })
    }

    /// Makes the RPC; the result JSON of `sdk/PROTOCOL.md` or the call's failure.
    async fn send<T: HostTransport>(self, client: &mut HostClient<T>) -> Result<String, CallError> {
        let status = |s: Status| call_error(&s);
        match self {
            Self::Log(r) => Ok(log_result(
                &client.log(r).await.map_err(status)?.into_inner(),
            )),
            Self::Get(r) => get_result(client.get(r).await.map_err(status)?.into_inner()),
            Self::Put(r) => client
                .put(r)
                .await
                .map(|_| "{}".to_string())
                .map_err(status),
            Self::Delete(r) => Ok(delete_result(
                &client.delete(r).await.map_err(status)?.into_inner(),
            )),
            Self::List(r) => Ok(list_result(
                &client.list(r).await.map_err(status)?.into_inner(),
            )),
            Self::WrittenBy(r) => Ok(written_by_result(
                &client.written_by(r).await.map_err(status)?.into_inner(),
            )),
            Self::Emit(r) => client
                .emit(r)
                .await
                .map(|_| "{}".to_string())
                .map_err(status),
        }
    }
}

fn log_result(r: &LogResponse) -> String {
    serde_json::json!({ "kept": r.kept, "dropped": r.dropped }).to_string()
}

/// `{"found":true,"value":…}` with the stored text spliced in as it is, or `{"found":false}`.
fn get_result(r: GetResponse) -> Result<String, CallError> {
    if !r.found {
        return Ok(r#"{"found":false}"#.to_string());
    }
    // The value goes into the plugin's stdin unparsed: make sure it is one JSON document, so a
    // broken host cannot break the line.
    let value: &RawValue = serde_json::from_str(&r.value_json).map_err(|e| {
        error(
            Code::Internal,
            format!("the host API returned a stored value that is not JSON: {e}"),
        )
    })?;
    Ok(format!(r#"{{"found":true,"value":{}}}"#, value.get()))
}

fn delete_result(r: &DeleteResponse) -> String {
    serde_json::json!({ "existed": r.existed }).to_string()
}

fn list_result(r: &ListResponse) -> String {
    serde_json::json!({ "keys": r.keys, "nextPageToken": r.next_page_token }).to_string()
}

/// `{"writtenBy":"1.0.0"}`, or `{"writtenBy":null}` when no version is recorded.
fn written_by_result(r: &WrittenByResponse) -> String {
    let version = (!r.written_by.is_empty()).then_some(r.written_by.as_str());
    serde_json::json!({ "writtenBy": version }).to_string()
}

/// The files of the shim's TLS identity, used as the client side of the mutual TLS to the host
/// API: the same files the shim serves with (`--tls-dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The CA that issued the router's certificate (PEM).
    pub ca: PathBuf,
    /// The shim's certificate chain (PEM): the plugin's identity.
    pub cert: PathBuf,
    /// The shim's private key (PEM).
    pub key: PathBuf,
}

impl ClientTlsFiles {
    /// `ca.crt`, `tls.crt` and `tls.key` in `dir` (see [`crate::tls`]).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join(airlock_tls::CA_FILE),
            cert: dir.join(airlock_tls::CERT_FILE),
            key: dir.join(airlock_tls::KEY_FILE),
        }
    }
}

/// Why the host API client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HostApiError {
    /// The address is not usable.
    #[error("the host API address {addr:?} is not usable (HOST:PORT expected): {reason}")]
    Address {
        /// The address given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A TLS file could not be read.
    #[error("cannot read {} for the host API's mutual TLS: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS files do not make a client configuration.
    #[error("cannot use the TLS files for the host API's mutual TLS: {0}")]
    Tls(String),
}

/// An error and its sources on one line: tonic's transport errors say little at the top.
fn chain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// How often the certificate file is checked for a re-issued one.
pub const RECHECK_CERTIFICATE_EVERY: Duration = Duration::from_secs(30);

/// Gives up connecting to the host API after this long (the invocation's deadline, usually much
/// shorter, still bounds every call).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// [`HostCalls`] over gRPC to the router's `airlock.host.v1.Host`.
#[derive(Debug)]
pub struct GrpcHost {
    addr: String,
    tls: Option<ClientTlsFiles>,
    recheck_every: Duration,
    /// The verified manifest's version, sent with each storage write (`PutRequest.plugin_version`).
    plugin_version: String,
    current: Mutex<Current>,
}

/// The channel in use and the certificate it was built with.
#[derive(Debug)]
struct Current {
    client: HostClient<Channel>,
    /// The certificate file's content when the channel was built (`None` without TLS).
    cert_pem: Option<Vec<u8>>,
    checked: Instant,
}

impl GrpcHost {
    /// A client of the host API at `addr` (HOST:PORT) that connects on its first call. With
    /// `tls`, the connection is `https://addr`, mutual TLS with the shim's certificate, and the
    /// server must present the router's identity issued by the CA in `tls.ca`. The files are read
    /// now (so a missing or broken one is reported at start) and again when the certificate file
    /// changes. Must be called within a tokio runtime.
    pub fn connect_lazy(addr: &str, tls: Option<ClientTlsFiles>) -> Result<Self, HostApiError> {
        let (client, cert_pem) = build(addr, tls.as_ref())?;
        Ok(Self {
            addr: addr.to_string(),
            tls,
            recheck_every: RECHECK_CERTIFICATE_EVERY,
            plugin_version: String::new(),
            current: Mutex::new(Current {
                client,
                cert_pem,
                checked: Instant::now(),
            }),
        })
    }

    /// Says `version` (the verified manifest's) with each storage write, so the router records
    /// which version wrote the plugin's storage (`status.writtenBy`).
    pub fn with_plugin_version(mut self, version: &str) -> Self {
        self.plugin_version = version.to_string();
        self
    }

    /// Checks the certificate file for a change at most this often (default
    /// [`RECHECK_CERTIFICATE_EVERY`]).
    pub fn recheck_certificate_every(mut self, every: Duration) -> Self {
        self.recheck_every = every;
        self
    }

    /// The client to use now: a new channel if the certificate file changed since the last one
    /// was built (checked at most every `recheck_every`). Calls in flight keep their channel.
    fn client(&self) -> HostClient<Channel> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tls) = &self.tls
            && current.checked.elapsed() >= self.recheck_every
        {
            current.checked = Instant::now();
            // A few KiB from a mounted Secret, at most twice a minute: not worth a blocking task.
            match std::fs::read(&tls.cert) {
                Ok(pem) if current.cert_pem.as_ref() != Some(&pem) => {
                    match build(&self.addr, Some(tls)) {
                        Ok((client, cert_pem)) => {
                            info!("the TLS certificate was re-issued; using it for the host API");
                            current.client = client;
                            current.cert_pem = cert_pem;
                        }
                        Err(e) => {
                            warn!(error = %e, "cannot use the new TLS certificate for the host API; keeping the current one");
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(path = %tls.cert.display(), error = %e, "cannot re-read the TLS certificate; keeping the current one");
                }
            }
        }
        current.client.clone()
    }
}

/// A lazily connecting client for `addr`, and the certificate it uses.
fn build(
    addr: &str,
    tls: Option<&ClientTlsFiles>,
) -> Result<(HostClient<Channel>, Option<Vec<u8>>), HostApiError> {
    let address_error = |reason: String| HostApiError::Address {
        addr: addr.to_string(),
        reason,
    };
    if addr.contains("://") {
        return Err(address_error(
            "give HOST:PORT without a scheme; TLS follows --tls-dir".to_string(),
        ));
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| address_error(chain(&e)))?
        .connect_timeout(CONNECT_TIMEOUT);
    let Some(tls) = tls else {
        return Ok((HostClient::new(endpoint.connect_lazy()), None));
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| HostApiError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(&tls.cert)?;
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
        .identity(Identity::from_pem(&cert_pem, read(&tls.key)?))
        .domain_name(airlock_core::identity::ROUTER_IDENTITY);
    let endpoint = endpoint
        .tls_config(config)
        .map_err(|e| HostApiError::Tls(chain(&e)))?;
    Ok((HostClient::new(endpoint.connect_lazy()), Some(cert_pem)))
}

impl HostCalls for GrpcHost {
    fn call<'a>(&'a self, invocation_id: &'a str, call: HostCallLine) -> CallFuture<'a> {
        Box::pin(async move {
            let request = HostRequest::of(invocation_id, &self.plugin_version, &call)?;
            request.send(&mut self.client()).await
        })
    }
}

/// [`HostCalls`] answered by a host API service in this process: the same requests and answers
/// as over gRPC (each call encoded, served and decoded), with no socket. `kubectl airlock run`
/// hands the router's own service for the one plugin it runs here, so an author's plugin gets
/// the cluster's answers.
pub struct InProcessHost<T> {
    client: HostClient<T>,
    plugin_version: String,
}

impl<T: HostTransport> InProcessHost<T> {
    /// Calls go to `service`; storage writes say `plugin_version` wrote them.
    pub fn new(service: T, plugin_version: &str) -> Self {
        Self {
            client: HostClient::new(service),
            plugin_version: plugin_version.to_string(),
        }
    }
}

impl<T> fmt::Debug for InProcessHost<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessHost")
            .field("plugin_version", &self.plugin_version)
            .finish_non_exhaustive()
    }
}

impl<T: HostTransport> HostCalls for InProcessHost<T> {
    fn call<'a>(&'a self, invocation_id: &'a str, call: HostCallLine) -> CallFuture<'a> {
        Box::pin(async move {
            let request = HostRequest::of(invocation_id, &self.plugin_version, &call)?;
            request.send(&mut self.client.clone()).await
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn call(name: &str, args: &str) -> HostCallLine {
        HostCallLine {
            call: name.to_string(),
            call_id: "c1".to_string(),
            args: args.to_string(),
            request: None,
        }
    }

    fn request(name: &str, args: &str) -> Result<HostRequest, CallError> {
        HostRequest::of("inv-7", "1.2.3", &call(name, args))
    }

    #[test]
    fn each_call_becomes_its_rpc_with_the_invocation_id() {
        assert_eq!(
            request("log", r#"{"level":"warn","message":"hi","extra":1}"#),
            Ok(HostRequest::Log(LogRequest {
                invocation_id: "inv-7".into(),
                level: "warn".into(),
                message: "hi".into(),
            }))
        );
        assert_eq!(
            request("storage.get", r#"{"key":"orders/42"}"#),
            Ok(HostRequest::Get(GetRequest {
                invocation_id: "inv-7".into(),
                key: "orders/42".into(),
            }))
        );
        assert_eq!(
            request("storage.delete", r#"{"key":"k"}"#),
            Ok(HostRequest::Delete(DeleteRequest {
                invocation_id: "inv-7".into(),
                key: "k".into(),
                plugin_version: "1.2.3".into(),
            }))
        );
        assert_eq!(
            request("storage.list", "{}"),
            Ok(HostRequest::List(ListRequest {
                invocation_id: "inv-7".into(),
                prefix: String::new(),
                page_token: String::new(),
                page_size: 0,
            }))
        );
        assert_eq!(
            request(
                "storage.list",
                r#"{"prefix":"orders/","pageToken":"t","pageSize":5}"#
            ),
            Ok(HostRequest::List(ListRequest {
                invocation_id: "inv-7".into(),
                prefix: "orders/".into(),
                page_token: "t".into(),
                page_size: 5,
            }))
        );
    }

    #[test]
    fn values_and_payloads_are_passed_on_as_written() {
        let Ok(HostRequest::Put(put)) = request(
            "storage.put",
            r#"{"key":"k","value":{"total": 1.10, "big": 123456789012345678901234567890}}"#,
        ) else {
            panic!("not a put")
        };
        assert_eq!(
            put.value_json,
            r#"{"total": 1.10, "big": 123456789012345678901234567890}"#
        );
        // Each write says which version of the plugin made it.
        assert_eq!(put.plugin_version, "1.2.3");
        // null is a value like any other.
        let Ok(HostRequest::Put(put)) = request("storage.put", r#"{"key":"k","value":null}"#)
        else {
            panic!("not a put")
        };
        assert_eq!(put.value_json, "null");

        assert_eq!(
            request("emit", r#"{"type":"order.created","payload":[1.10, "x"]}"#),
            Ok(HostRequest::Emit(EmitRequest {
                invocation_id: "inv-7".into(),
                event_type: "order.created".into(),
                payload_json: r#"[1.10, "x"]"#.into(),
            }))
        );
        let Ok(HostRequest::Emit(emit)) = request("emit", r#"{"type":"t"}"#) else {
            panic!("not an emit")
        };
        assert_eq!(emit.payload_json, "null");
    }

    #[test]
    fn malformed_args_are_invalid_argument_and_unknown_calls_unimplemented() {
        for (name, args) in [
            ("log", r#"{"level":"info"}"#),
            ("log", r#"{"level":1,"message":"m"}"#),
            ("storage.get", "{}"),
            ("storage.put", r#"{"key":"k"}"#),
            ("storage.delete", r#"{"key":["k"]}"#),
            ("storage.list", r#"{"pageSize":-1}"#),
            ("storage.list", r#"{"pageSize":4294967296}"#),
            ("emit", r#"{"payload":{}}"#),
        ] {
            let err = request(name, args).unwrap_err();
            assert_eq!(err.code, "INVALID_ARGUMENT", "{name} {args}");
            assert!(err.message.contains(name), "{}", err.message);
        }
        let err = request("storage.drop", "{}").unwrap_err();
        assert_eq!(err.code, "UNIMPLEMENTED");
        assert!(err.message.contains("storage.drop"), "{}", err.message);
        assert!(err.message.contains("storage.list"), "{}", err.message);
    }

    #[test]
    fn responses_become_the_results_of_protocol_md() {
        let parse = |s: String| serde_json::from_str::<Value>(&s).unwrap();
        assert_eq!(
            parse(log_result(&LogResponse {
                kept: false,
                dropped: 3
            })),
            json!({"kept": false, "dropped": 3})
        );
        assert_eq!(
            get_result(GetResponse {
                found: true,
                value_json: r#"{"n":1.10,"big":123456789012345678901234567890}"#.into(),
            }),
            Ok(r#"{"found":true,"value":{"n":1.10,"big":123456789012345678901234567890}}"#.into())
        );
        assert_eq!(
            get_result(GetResponse {
                found: false,
                value_json: String::new(),
            }),
            Ok(r#"{"found":false}"#.into())
        );
        assert_eq!(
            get_result(GetResponse {
                found: true,
                value_json: "{broken".into(),
            })
            .unwrap_err()
            .code,
            "INTERNAL"
        );
        assert_eq!(
            parse(delete_result(&DeleteResponse { existed: true })),
            json!({"existed": true})
        );
        assert_eq!(
            parse(list_result(&ListResponse {
                keys: vec!["a".into(), "b\"".into()],
                next_page_token: "t".into(),
            })),
            json!({"keys": ["a", "b\""], "nextPageToken": "t"})
        );
    }

    #[test]
    fn statuses_become_call_errors_with_the_code_name() {
        assert_eq!(
            call_error(&Status::permission_denied(
                "storage.put needs storage:write"
            )),
            CallError {
                code: "PERMISSION_DENIED".into(),
                message: "storage.put needs storage:write".into(),
            }
        );
        assert_eq!(
            call_error(&Status::resource_exhausted("")),
            CallError {
                code: "RESOURCE_EXHAUSTED".into(),
                message: "the host API failed the call with RESOURCE_EXHAUSTED".into(),
            }
        );
        for (code, name) in [
            (Code::InvalidArgument, "INVALID_ARGUMENT"),
            (Code::Unavailable, "UNAVAILABLE"),
            (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
            (Code::Unauthenticated, "UNAUTHENTICATED"),
        ] {
            assert_eq!(code_name(code), name);
        }
    }

    #[tokio::test]
    async fn addresses_and_tls_files_are_checked_at_start() {
        let err = GrpcHost::connect_lazy("http://router:50053", None).unwrap_err();
        assert!(err.to_string().contains("without a scheme"), "{err}");
        let err = GrpcHost::connect_lazy("bad host:1", None).unwrap_err();
        assert!(matches!(err, HostApiError::Address { .. }), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = GrpcHost::connect_lazy("router:50053", Some(ClientTlsFiles::in_dir(dir.path())))
            .unwrap_err();
        assert!(
            matches!(&err, HostApiError::Read { path, .. } if path.ends_with("tls.crt")),
            "{err}"
        );
        // Without TLS nothing is dialled yet.
        GrpcHost::connect_lazy("router.airlock-system:50053", None).unwrap();
    }
}
