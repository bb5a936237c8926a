//! One request on the plugin process's stdio: write the request line, then read lines until the
//! answer for that request comes, answering every host call the plugin makes meanwhile (see
//! [`crate::host`]) on its stdin.
//!
//! It knows nothing of deadlines or restarts: the supervisor runs it under the request's deadline
//! and decides from an [`ExchangeError`] whether the process must be replaced.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use super::InvokeError;
use super::spawn::Running;
use crate::host::HostCalls;
use airlock_sdk::protocol::{
    self, CallError, HostCallLine, MAX_HOST_CALLS, MAX_LINE_BYTES, StdoutLine,
};

/// Why an exchange ended without the answer. Either way the process is of no further use; the
/// supervisor tells a crash (counted, backed off) from a misbehaving plugin by this.
#[derive(Debug)]
pub(super) enum ExchangeError {
    /// stdin or stdout closed: the process is (about to be) gone.
    Closed,
    /// The answer is unusable; the process must be replaced.
    Fatal(InvokeError),
}

impl ExchangeError {
    pub(super) fn describe(&self) -> String {
        match self {
            ExchangeError::Closed => "the plugin process exited".to_string(),
            ExchangeError::Fatal(e) => e.to_string(),
        }
    }
}

/// The result of host call `call`, made during invocation `id` through `host`: a call this shim
/// does not know and a shim without a host API are answered here.
pub(super) async fn answer_call(
    host: Option<&dyn HostCalls>,
    id: &str,
    call: HostCallLine,
) -> Result<String, CallError> {
    let (name, call_id) = (call.call.clone(), call.call_id.clone());
    let result = match host {
        _ if !protocol::calls::ALL.contains(&name.as_str()) => {
            Err(crate::host::unimplemented(&name))
        }
        Some(host) => host.call(id, call).await,
        None => Err(crate::host::not_configured()),
    };
    match &result {
        Ok(_) => debug!(invocation = id, call = %name, call_id, "host call done"),
        Err(e) => {
            debug!(invocation = id, call = %name, call_id, code = %e.code, "host call failed");
        }
    }
    result
}

impl Running {
    /// Writes one request line and reads lines until the answer for `id`, answering the host
    /// calls the plugin makes meanwhile through `host` (with `id` as their invocation id).
    pub(super) async fn exchange(
        &mut self,
        line: &str,
        id: &str,
        host: Option<&dyn HostCalls>,
    ) -> Result<Result<String, String>, ExchangeError> {
        self.write_line(line).await?;
        let mut calls = 0u32;
        loop {
            let text = self.read_line().await?;
            let call = match protocol::parse_stdout_line(&text) {
                Ok(StdoutLine::Response(response)) if response.id == id => {
                    return Ok(response.result);
                }
                Ok(StdoutLine::Response(response)) => {
                    return Err(ExchangeError::Fatal(InvokeError::Protocol(format!(
                        "answered id {:?} to request {id:?}",
                        response.id
                    ))));
                }
                Ok(StdoutLine::HostCall(call)) => call,
                Err(e) => {
                    return Err(ExchangeError::Fatal(InvokeError::Protocol(format!(
                        "{e}; stdout is for answers and host calls only, write logs to stderr"
                    ))));
                }
            };
            calls += 1;
            if calls > MAX_HOST_CALLS {
                return Err(ExchangeError::Fatal(InvokeError::Protocol(format!(
                    "more than {MAX_HOST_CALLS} host calls while handling request {id:?}"
                ))));
            }
            let call_id = call.call_id.clone();
            let result = answer_call(host, id, call).await;
            self.write_line(&protocol::encode_call_result(&call_id, &result))
                .await?;
        }
    }

    /// Writes one line (newline included) to the plugin's stdin.
    async fn write_line(&mut self, line: &str) -> Result<(), ExchangeError> {
        let stdin = self.stdin.as_mut().ok_or(ExchangeError::Closed)?;
        // A write error is a closed pipe (EPIPE): the child is gone.
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|_| ExchangeError::Closed)?;
        stdin.flush().await.map_err(|_| ExchangeError::Closed)
    }

    /// Reads one line (newline included) of the plugin's stdout.
    pub(super) async fn read_line(&mut self) -> Result<String, ExchangeError> {
        let mut buf = Vec::new();
        (&mut self.stdout)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|_| ExchangeError::Closed)?;
        if buf.last() != Some(&b'\n') {
            return Err(if buf.len() > MAX_LINE_BYTES {
                ExchangeError::Fatal(InvokeError::OutputTooLarge)
            } else {
                // EOF, possibly after part of a line.
                ExchangeError::Closed
            });
        }
        String::from_utf8(buf).map_err(|_| {
            ExchangeError::Fatal(InvokeError::Protocol("the answer is not UTF-8".into()))
        })
    }
}
