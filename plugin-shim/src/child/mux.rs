//! One multiplexed plugin process (`multiplexed: true` in the manifest; `sdk/PROTOCOL.md`,
//! "Multiplexed plugins"): several requests in flight on its stdio at once, answered by `id` in
//! any order.
//!
//! [`MuxProcess`] owns the process's pipes: stdin behind one lock (every line is written whole,
//! never interleaved), stdout read by one task that hands each answer to the request waiting for
//! it and runs each host call (through [`HostCalls`], with its request's invocation id) in a task
//! of its own, writing the result when it is ready. [`InFlight`] is the pure bookkeeping behind
//! that dispatch. The first fault ends the process for every request in flight on it: a crash,
//! a line that breaks the protocol, or a kill by the supervisor (a request missed its deadline).
//! Deadlines, restarts and backoff are the supervisor's.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

use super::exchange::{ExchangeError, answer_call};
use super::spawn::Running;
use super::{Exit, InvokeError};
use crate::host::HostCalls;
use airlock_sdk::protocol::{self, HostCallLine, MAX_HOST_CALLS, StdoutLine};

/// What a request in flight gets: the plugin's answer (`Ok(output)` or `Err(message)` for
/// `"ok": false`), or the fault that ended the process first.
pub(super) type Outcome = Result<Result<String, String>, InvokeError>;

/// Why a multiplexed process ended, as every request in flight on it is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fault {
    /// It is gone: it exited (how), or the shim killed it (why).
    Exited(Exit),
    /// It wrote a line that breaks the protocol.
    Protocol(String),
    /// It wrote a line over the size limit.
    TooLarge,
}

impl Fault {
    fn error(&self) -> InvokeError {
        match self {
            Fault::Exited(exit) => exit.error(),
            Fault::Protocol(why) => InvokeError::Protocol(why.clone()),
            Fault::TooLarge => InvokeError::OutputTooLarge,
        }
    }
}

/// The requests and host calls in flight on one process, and where each stdout line goes.
/// Generic over what waits for an answer, so the dispatch is tested without a process.
#[derive(Debug)]
pub(super) struct InFlight<W> {
    /// By the `id` the plugin was given.
    requests: HashMap<String, Request<W>>,
    /// The `callId`s of the host calls not yet answered.
    calls: HashSet<String>,
}

#[derive(Debug)]
struct Request<W> {
    waiter: W,
    /// The caller's invocation id, what the host is told (the plugin's `id` may have a suffix).
    invocation: String,
    host_calls: u32,
}

/// What to do with one line of the plugin's stdout.
#[derive(Debug)]
pub(super) enum Dispatch<W> {
    /// The answer to a request in flight, for its waiter.
    Answer(W, Result<String, String>),
    /// A host call to make for `invocation` and answer on stdin.
    Call {
        invocation: String,
        call: HostCallLine,
    },
    /// The line breaks the protocol: the process must be replaced.
    Broken(String),
}

impl<W> Default for InFlight<W> {
    fn default() -> Self {
        Self {
            requests: HashMap::new(),
            calls: HashSet::new(),
        }
    }
}

impl<W> InFlight<W> {
    /// Puts a request for `invocation` in flight and returns the `id` to send it with: the
    /// invocation id itself, unless a request with that id is already in flight (two callers
    /// chose the same one): then it gets a suffix, so every answer still finds its caller.
    pub(super) fn add(&mut self, invocation: &str, waiter: W) -> String {
        let mut id = invocation.to_string();
        let mut n = 1u32;
        while self.requests.contains_key(&id) {
            n += 1;
            id = format!("{invocation}#{n}");
        }
        self.requests.insert(
            id.clone(),
            Request {
                waiter,
                invocation: invocation.to_string(),
                host_calls: 0,
            },
        );
        id
    }

    /// What `line` (one line of stdout) means.
    pub(super) fn dispatch(&mut self, line: &str) -> Dispatch<W> {
        let call = match protocol::parse_stdout_line(line) {
            Ok(StdoutLine::Response(response)) => {
                return match self.requests.remove(&response.id) {
                    Some(request) => Dispatch::Answer(request.waiter, response.result),
                    None => Dispatch::Broken(format!(
                        "answered id {:?}, which is not a request in flight",
                        response.id
                    )),
                };
            }
            Ok(StdoutLine::HostCall(call)) => call,
            Err(e) => {
                return Dispatch::Broken(format!(
                    "{e}; stdout is for answers and host calls only, write logs to stderr"
                ));
            }
        };
        let Some(id) = call.request.clone() else {
            return Dispatch::Broken(format!(
                "host call {:?} has no \"request\"; a multiplexed plugin names the id of the \
                 request each host call is made for",
                call.call_id
            ));
        };
        let Some(request) = self.requests.get_mut(&id) else {
            return Dispatch::Broken(format!(
                "host call {:?} is for request {id:?}, which is not in flight",
                call.call_id
            ));
        };
        request.host_calls += 1;
        if request.host_calls > MAX_HOST_CALLS {
            return Dispatch::Broken(format!(
                "more than {MAX_HOST_CALLS} host calls while handling request {id:?}"
            ));
        }
        if !self.calls.insert(call.call_id.clone()) {
            return Dispatch::Broken(format!(
                "callId {:?} is already used by a host call in flight; give each call in flight \
                 its own callId",
                call.call_id
            ));
        }
        Dispatch::Call {
            invocation: request.invocation.clone(),
            call,
        }
    }

    /// The host call `call_id` is answered: its id may be used again.
    pub(super) fn call_done(&mut self, call_id: &str) {
        self.calls.remove(call_id);
    }

    /// Takes every request out of flight: their waiters.
    pub(super) fn drain(&mut self) -> Vec<W> {
        self.calls.clear();
        self.requests.drain().map(|(_, r)| r.waiter).collect()
    }
}

/// What the reader task, the host-call tasks and the callers share.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// `None` once closed (at shutdown, so that the plugin's read loop ends).
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    host: Option<Arc<dyn HostCalls>>,
    /// True once the process ended (see [`State::ended`]).
    ended: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct State {
    in_flight: InFlight<oneshot::Sender<Outcome>>,
    /// Why the process ended, and whether it ended by itself (a crash, which the supervisor
    /// counts for its backoff) rather than being killed.
    ended: Option<(Fault, bool)>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the process (the first fault wins): every request in flight fails with `fault`.
    fn end(&self, fault: Fault, crashed: bool) {
        let waiters = {
            let mut state = self.state();
            if state.ended.is_some() {
                return;
            }
            state.ended = Some((fault.clone(), crashed));
            state.in_flight.drain()
        };
        for waiter in waiters {
            let _ = waiter.send(Err(fault.error()));
        }
        self.ended.send_replace(true);
    }

    /// Writes one line (newline included) to the plugin's stdin, whole.
    async fn write_line(&self, line: &str) -> std::io::Result<()> {
        let mut stdin = self.stdin.lock().await;
        let Some(stdin) = stdin.as_mut() else {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        };
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await
    }
}

/// A running multiplexed plugin process. Dropping it (or [`MuxProcess::kill`]) kills its process
/// group and fails whatever is still in flight.
#[derive(Debug)]
pub(super) struct MuxProcess {
    pub(super) pid: i32,
    shared: Arc<Shared>,
    /// Owns the process handle: aborting it kills the process group and every host call in
    /// progress.
    reader: JoinHandle<()>,
}

impl Drop for MuxProcess {
    fn drop(&mut self) {
        self.kill(Fault::Exited(Exit::Status(
            "stopped by the shim".to_string(),
        )));
    }
}

impl MuxProcess {
    /// Takes over the pipes of a just started process. Its host calls go to `host`.
    pub(super) fn start(mut running: Running, host: Option<Arc<dyn HostCalls>>) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            stdin: tokio::sync::Mutex::new(running.stdin.take()),
            host,
            ended: watch::Sender::new(false),
        });
        let pid = running.pid;
        let reader = tokio::spawn(read(Arc::clone(&shared), running));
        Self {
            pid,
            shared,
            reader,
        }
    }

    /// `Some(crashed)` once the process ended: by itself (`true`) or killed.
    pub(super) fn ended(&self) -> Option<bool> {
        self.shared
            .state()
            .ended
            .as_ref()
            .map(|(_, crashed)| *crashed)
    }

    /// Puts a request for `invocation` in flight and writes its line, `line(id)` for the id it
    /// is sent with; the receiver gets its outcome. Fails at once if the process has ended.
    pub(super) async fn send(
        &self,
        invocation: &str,
        line: impl FnOnce(&str) -> String,
    ) -> Result<oneshot::Receiver<Outcome>, InvokeError> {
        let (waiter, outcome) = oneshot::channel();
        let id = {
            let mut state = self.shared.state();
            if let Some((fault, _)) = &state.ended {
                return Err(fault.error());
            }
            state.in_flight.add(invocation, waiter)
        };
        if self.shared.write_line(&line(&id)).await.is_err() {
            // stdin is closed: the process is exiting (or closed it itself, which is as good).
            self.shared.end(
                Fault::Exited(Exit::Status(
                    "the plugin process closed its stdin".to_string(),
                )),
                true,
            );
        }
        Ok(outcome)
    }

    /// Kills the process group; every request in flight fails with `fault` (unless the process
    /// had already ended).
    pub(super) fn kill(&self, fault: Fault) {
        self.shared.end(fault, false);
        self.reader.abort();
    }

    /// Why the process ended, as a request would have been told; `None` while it runs.
    pub(super) fn fault(&self) -> Option<InvokeError> {
        self.shared
            .state()
            .ended
            .as_ref()
            .map(|(fault, _)| fault.error())
    }

    /// Closes the plugin's stdin (its read loop ends) and waits up to `grace` for it to exit.
    pub(super) async fn close(&self, grace: std::time::Duration) -> bool {
        self.shared.stdin.lock().await.take();
        let mut ended = self.shared.ended.subscribe();
        tokio::time::timeout(grace, ended.wait_for(|e| *e))
            .await
            .is_ok()
    }
}

/// The reader task: dispatches each line of stdout until the process ends, then fails what is
/// still in flight. Owns `running`, so the process group dies with this task.
async fn read(shared: Arc<Shared>, mut running: Running) {
    let mut calls = JoinSet::new();
    let (fault, crashed) = loop {
        // Reap finished host calls (their futures hold nothing after writing the result).
        while calls.try_join_next().is_some() {}
        let text = match running.read_line().await {
            Ok(text) => text,
            Err(ExchangeError::Closed) => break (Fault::Exited(running.exit_status().await), true),
            Err(ExchangeError::Fatal(InvokeError::Protocol(why))) => {
                break (Fault::Protocol(why), false);
            }
            Err(ExchangeError::Fatal(_)) => break (Fault::TooLarge, false),
        };
        let dispatch = shared.state().in_flight.dispatch(&text);
        match dispatch {
            Dispatch::Answer(waiter, result) => {
                // The caller may have given up (its deadline passed just now): nothing to do.
                let _ = waiter.send(Ok(result));
            }
            Dispatch::Call { invocation, call } => {
                let shared = Arc::clone(&shared);
                calls.spawn(async move {
                    let call_id = call.call_id.clone();
                    let result = answer_call(shared.host.as_deref(), &invocation, call).await;
                    // Free before the plugin can read the result and reuse the id.
                    shared.state().in_flight.call_done(&call_id);
                    let line = protocol::encode_call_result(&call_id, &result);
                    if shared.write_line(&line).await.is_err() {
                        debug!(
                            call_id,
                            "the plugin's stdin closed before a host call result"
                        );
                    }
                });
            }
            Dispatch::Broken(why) => break (Fault::Protocol(why), false),
        }
    };
    shared.end(fault, crashed);
    // Dropping `running` kills the process group, dropping `calls` the host calls in progress.
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(call_id: &str, request: Option<&str>) -> String {
        protocol::encode_request_host_call(request, "log", call_id, &serde_json::json!({}))
    }

    #[test]
    fn answers_reach_their_request_in_any_order() {
        let mut in_flight = InFlight::default();
        assert_eq!(in_flight.add("a", 1), "a");
        assert_eq!(in_flight.add("b", 2), "b");
        let answer = |id: &str| format!("{{\"id\":\"{id}\",\"ok\":true,\"output\":\"{id}\"}}");
        assert!(matches!(
            in_flight.dispatch(&answer("b")),
            Dispatch::Answer(2, Ok(out)) if out == "\"b\""
        ));
        assert!(matches!(
            in_flight.dispatch(&answer("a")),
            Dispatch::Answer(1, Ok(_))
        ));
        assert!(in_flight.drain().is_empty());
        // Answered already: no longer in flight.
        let Dispatch::Broken(why) = in_flight.dispatch(&answer("a")) else {
            panic!("a second answer to a is accepted")
        };
        assert!(why.contains("not a request in flight"), "{why}");
    }

    #[test]
    fn a_second_request_with_an_id_in_flight_gets_an_id_of_its_own() {
        let mut in_flight = InFlight::default();
        assert_eq!(in_flight.add("x", 1), "x");
        assert_eq!(in_flight.add("x", 2), "x#2");
        assert_eq!(in_flight.add("x", 3), "x#3");
        // Host calls of the renamed request still reach the host with the caller's id.
        let Dispatch::Call { invocation, call } =
            in_flight.dispatch(&self::call("c1", Some("x#2")))
        else {
            panic!("a host call for x#2 is refused")
        };
        assert_eq!((invocation.as_str(), call.call_id.as_str()), ("x", "c1"));
        assert!(matches!(
            in_flight.dispatch(r#"{"id":"x#2","ok":false,"error":"e"}"#),
            Dispatch::Answer(2, Err(_))
        ));
        assert_eq!(in_flight.drain().len(), 2);
    }

    #[test]
    fn host_calls_name_a_request_in_flight_and_a_call_id_not_in_use() {
        let mut in_flight = InFlight::default();
        in_flight.add("a", ());
        in_flight.add("b", ());
        assert!(matches!(
            in_flight.dispatch(&call("c1", Some("a"))),
            Dispatch::Call { ref invocation, .. } if invocation == "a"
        ));
        let broken = |in_flight: &mut InFlight<()>, line: &str| match in_flight.dispatch(line) {
            Dispatch::Broken(why) => why,
            other => panic!("{line} was accepted: {other:?}"),
        };
        // The same callId while the first is in flight, even for another request.
        let why = broken(&mut in_flight, &call("c1", Some("b")));
        assert!(why.contains("\"c1\" is already used"), "{why}");
        // Once answered, it may be used again.
        in_flight.call_done("c1");
        assert!(matches!(
            in_flight.dispatch(&call("c1", Some("b"))),
            Dispatch::Call { .. }
        ));
        let why = broken(&mut in_flight, &call("c2", None));
        assert!(why.contains("has no \"request\""), "{why}");
        let why = broken(&mut in_flight, &call("c3", Some("zzz")));
        assert!(why.contains("\"zzz\", which is not in flight"), "{why}");
        let why = broken(&mut in_flight, "print debugging");
        assert!(why.contains("write logs to stderr"), "{why}");
    }

    #[test]
    fn host_calls_are_counted_per_request() {
        let mut in_flight = InFlight::default();
        in_flight.add("a", ());
        in_flight.add("b", ());
        for n in 0..MAX_HOST_CALLS {
            assert!(matches!(
                in_flight.dispatch(&call(&format!("a{n}"), Some("a"))),
                Dispatch::Call { .. }
            ));
            in_flight.call_done(&format!("a{n}"));
        }
        // b has its own 64.
        assert!(matches!(
            in_flight.dispatch(&call("b0", Some("b"))),
            Dispatch::Call { .. }
        ));
        let Dispatch::Broken(why) = in_flight.dispatch(&call("a-more", Some("a"))) else {
            panic!("a 65th call of a is accepted")
        };
        assert!(why.contains("more than 64 host calls"), "{why}");
    }
}
