//! The run loop of a multiplexed plugin (`multiplexed: true` in `plugin.yaml`; `PROTOCOL.md`,
//! "Multiplexed plugins"): the shim sends up to `--concurrency` requests at once on one process
//! and takes their answers in any order.
//!
//! The calling thread reads stdin: each request starts a thread of its own (at most
//! `max_in_flight` run the handler at once, the others wait for one to finish), each host-call
//! result goes to the thread that made the call (by `callId`). Every line on stdout is written
//! whole under one lock. Threads only: the crate keeps `serde_json` as its one dependency.

use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, mpsc};

use serde_json::Value;

use crate::protocol::{self, CallResult};
use crate::{Host, HostError, Link};

/// Host calls of concurrent requests over one pair of pipes (what [`Host`] needs of it).
pub(crate) trait Calls: Sync {
    /// Makes host call `call` with `args` for `request` and waits for its result.
    fn call(&self, request: &str, call: &str, args: &Value) -> Result<Value, HostError>;
}

/// [`crate::run`] for a multiplexed plugin: `handler` runs on a thread per request, at most
/// `max_in_flight` at once (the `concurrency` the plugin is deployed with; the shim never sends
/// more), so it must be `Send + Sync`: keep shared state behind a `Mutex` or atomics.
pub fn run_multiplexed<F>(max_in_flight: usize, handler: F) -> io::Result<()>
where
    F: Fn(&str, Value) -> Result<Value, String> + Send + Sync,
{
    run_multiplexed_with_host(
        max_in_flight,
        move |_host: &mut Host<'_>, hook: &str, payload| handler(hook, payload),
    )
}

/// [`run_multiplexed`] for a handler that makes host calls: each request's [`Host`] names its
/// request on every call, so calls of concurrent requests do not mix.
pub fn run_multiplexed_with_host<F>(max_in_flight: usize, handler: F) -> io::Result<()>
where
    F: Fn(&mut Host<'_>, &str, Value) -> Result<Value, String> + Send + Sync,
{
    let stdin = io::stdin();
    serve_multiplexed_with_host(max_in_flight, stdin.lock(), io::stdout(), handler)
}

/// [`run_multiplexed_with_host`] over any reader and writer, for tests. Returns once `input`
/// ends and every request read so far is answered, or with the first IO error.
pub fn serve_multiplexed_with_host<R, W, F>(
    max_in_flight: usize,
    mut input: R,
    output: W,
    handler: F,
) -> io::Result<()>
where
    R: BufRead,
    W: Write + Send,
    F: Fn(&mut Host<'_>, &str, Value) -> Result<Value, String> + Send + Sync,
{
    let shared = Shared {
        output: Mutex::new(output),
        waiting: Mutex::new(Some(HashMap::new())),
        next_call: AtomicU64::new(0),
        slots: Slots::new(max_in_flight.max(1)),
        failed: Mutex::new(None),
    };
    let (shared, handler) = (&shared, &handler);
    std::thread::scope(|scope| {
        let mut line = String::new();
        let read = loop {
            line.clear();
            match input.read_line(&mut line) {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
            if line.trim().is_empty() {
                continue;
            }
            if is_call_result(&line) {
                shared.deliver(&line);
                continue;
            }
            let request = match protocol::parse_request(&line) {
                Ok(request) => request,
                Err(e) => {
                    shared.write(&crate::unreadable(&e));
                    continue;
                }
            };
            scope.spawn(move || {
                let _slot = shared.slots.take();
                let id = request.id.clone();
                let mut host = Host {
                    link: Link::Shared {
                        request: &id,
                        mux: shared,
                    },
                    calls: 0,
                };
                let answer = crate::answer(request, &mut |hook: &str, payload: Value| {
                    handler(&mut host, hook, payload)
                });
                shared.write(&answer);
            });
        };
        // No more results can come: calls still waiting fail rather than wait forever.
        shared.close();
        read
    })?;
    match lock(&shared.failed).take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Whether a stdin line is the result of a host call (it has a `callId`) rather than a request.
fn is_call_result(line: &str) -> bool {
    matches!(
        serde_json::from_str::<Value>(line.trim_end()),
        Ok(Value::Object(obj)) if obj.contains_key("callId")
    )
}

/// What the threads of one plugin process share.
struct Shared<W> {
    output: Mutex<W>,
    /// The calls waiting for their result, by `callId`; `None` once stdin ended.
    waiting: Mutex<Option<HashMap<String, mpsc::Sender<CallResult>>>>,
    /// Numbers the calls: a `callId` is unique among the process's calls, as the shim requires.
    next_call: AtomicU64,
    slots: Slots,
    /// The first write that failed (stdout closed).
    failed: Mutex<Option<io::Error>>,
}

impl<W: Write> Shared<W> {
    /// Writes one line whole (and flushes it); a failure is kept for the run loop to return.
    fn write(&self, line: &str) {
        if let Err(e) = self.try_write(line) {
            lock(&self.failed).get_or_insert(e);
        }
    }

    fn try_write(&self, line: &str) -> io::Result<()> {
        let mut output = lock(&self.output);
        output.write_all(line.as_bytes())?;
        output.flush()
    }

    /// Hands a host-call result to the call waiting for it.
    fn deliver(&self, line: &str) {
        let result = match protocol::parse_call_result(line) {
            Ok(result) => result,
            Err(e) => {
                eprintln!("airlock-sdk: ignoring an unreadable host-call result: {e}");
                return;
            }
        };
        let waiter = lock(&self.waiting)
            .as_mut()
            .and_then(|w| w.remove(&result.call_id));
        match waiter {
            // The caller may have given up (its thread panicked): nothing to do.
            Some(waiter) => drop(waiter.send(result)),
            None => eprintln!(
                "airlock-sdk: ignoring the result of host call {:?}, which no request is waiting for",
                result.call_id
            ),
        }
    }

    /// stdin ended: every waiting call fails, and later ones fail at once.
    fn close(&self) {
        lock(&self.waiting).take();
    }
}

impl<W: Write + Send> Calls for Shared<W> {
    fn call(&self, request: &str, call: &str, args: &Value) -> Result<Value, HostError> {
        let call_id = format!("c{}", self.next_call.fetch_add(1, Ordering::Relaxed) + 1);
        let closed = || {
            HostError::new(
                "UNAVAILABLE",
                "stdin closed while waiting for the result of a host call",
            )
        };
        let (send, receive) = mpsc::channel();
        // Waiting before the call is written: its result may come before this thread runs again.
        lock(&self.waiting)
            .as_mut()
            .ok_or_else(closed)?
            .insert(call_id.clone(), send);
        let line = protocol::encode_request_host_call(Some(request), call, &call_id, args);
        if let Err(e) = self.try_write(&line) {
            if let Some(w) = lock(&self.waiting).as_mut() {
                w.remove(&call_id);
            }
            return Err(HostError::new(
                "UNAVAILABLE",
                format!("cannot talk to the shim over stdin/stdout: {e}"),
            ));
        }
        let result = receive.recv().map_err(|_| closed())?;
        result.result.map_err(|e| HostError {
            code: e.code,
            message: e.message,
        })
    }
}

/// At most `max` handlers at once (a counting semaphore).
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn new(max: usize) -> Self {
        Self {
            free: Mutex::new(max),
            freed: Condvar::new(),
        }
    }

    fn take(&self) -> Slot<'_> {
        let mut free = lock(&self.free);
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Slot(self)
    }
}

/// A handler's place among the `max_in_flight`; given back when dropped (also on a panic).
struct Slot<'a>(&'a Slots);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *lock(&self.0.free) += 1;
        self.0.freed.notify_one();
    }
}

/// A lock that a panicked handler thread does not poison for the others.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    /// A pipe: what is written to the [`Writer`] is read from the [`Reader`] (a `BufRead`), so a
    /// test can play the shim, answering host calls as they come.
    fn pipe() -> (Writer, io::BufReader<Reader>) {
        let (send, receive) = mpsc::channel();
        (
            Writer(send),
            io::BufReader::new(Reader {
                receive,
                pending: Vec::new(),
            }),
        )
    }

    struct Writer(mpsc::Sender<Vec<u8>>);

    impl Write for Writer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .send(buf.to_vec())
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Reader {
        receive: mpsc::Receiver<Vec<u8>>,
        pending: Vec<u8>,
    }

    impl Read for Reader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pending.is_empty() {
                match self.receive.recv() {
                    Ok(bytes) => self.pending = bytes,
                    Err(_) => return Ok(0),
                }
            }
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            Ok(n)
        }
    }

    /// Reads the next line the plugin wrote, as JSON.
    fn next(from: &mut impl BufRead) -> Value {
        let mut line = String::new();
        from.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    fn request(id: &str, payload: Value) -> String {
        protocol::encode_request(id, "transform", &payload.to_string(), 1000)
    }

    /// Plays the shim against a multiplexed plugin run by [`serve_multiplexed_with_host`] with
    /// `handler`: `script` gets the shim's end of both pipes.
    fn with_plugin<F>(
        max_in_flight: usize,
        handler: F,
        script: impl FnOnce(&mut Writer, &mut io::BufReader<Reader>),
    ) where
        F: Fn(&mut Host<'_>, &str, Value) -> Result<Value, String> + Send + Sync + 'static,
    {
        let (mut to_plugin, plugin_in) = pipe();
        let (plugin_out, mut from_plugin) = pipe();
        let plugin = std::thread::spawn(move || {
            serve_multiplexed_with_host(max_in_flight, plugin_in, plugin_out, handler)
        });
        script(&mut to_plugin, &mut from_plugin);
        drop(to_plugin);
        plugin.join().unwrap().unwrap();
    }

    #[test]
    fn requests_run_side_by_side_and_answer_in_the_order_they_finish() {
        // Request "slow" is held until the shim has read the answer to "fast", which came after
        // it: only possible side by side.
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let held = Arc::clone(&release);
        with_plugin(
            2,
            move |_host, _hook, payload| {
                if payload["slow"] == json!(true) {
                    let (released, cv) = &*held;
                    let guard = released.lock().unwrap();
                    let (_guard, wait) = cv
                        .wait_timeout_while(guard, Duration::from_secs(5), |r| !*r)
                        .unwrap();
                    assert!(!wait.timed_out(), "slow was never released");
                }
                Ok(payload)
            },
            |to, from| {
                to.write_all(request("slow", json!({"slow": true})).as_bytes())
                    .unwrap();
                to.write_all(request("fast", json!({"slow": false})).as_bytes())
                    .unwrap();
                assert_eq!(next(from)["id"], "fast");
                let (released, cv) = &*release;
                *released.lock().unwrap() = true;
                cv.notify_all();
                let slow = next(from);
                assert_eq!(slow["id"], "slow");
                assert_eq!(slow["output"], json!({"slow": true}));
            },
        );
    }

    #[test]
    fn host_calls_name_their_request_and_results_reach_the_caller_by_call_id() {
        with_plugin(
            2,
            |host, _hook, payload| {
                let key = payload["key"].as_str().unwrap_or_default().to_string();
                let value = host.get(&key).map_err(|e| e.to_string())?;
                Ok(json!({ "key": key, "value": value }))
            },
            |to, from| {
                to.write_all(request("r1", json!({"key": "one"})).as_bytes())
                    .unwrap();
                to.write_all(request("r2", json!({"key": "two"})).as_bytes())
                    .unwrap();
                // Both calls are in flight before either result is sent.
                let calls = [next(from), next(from)];
                let mut ids = Vec::new();
                for call in &calls {
                    assert_eq!(call["call"], "storage.get", "{call}");
                    let request = call["request"].as_str().unwrap();
                    assert_eq!(
                        call["args"]["key"],
                        if request == "r1" { "one" } else { "two" }
                    );
                    ids.push(call["callId"].as_str().unwrap().to_string());
                }
                assert_ne!(ids[0], ids[1], "callIds are unique in the process");
                // Results in reverse order, each carrying the key of its own call.
                for call in calls.iter().rev() {
                    let result = json!({"found": true, "value": call["args"]["key"]});
                    let line = protocol::encode_call_result(
                        call["callId"].as_str().unwrap(),
                        &Ok(result.to_string()),
                    );
                    to.write_all(line.as_bytes()).unwrap();
                }
                let answers = [next(from), next(from)];
                for answer in answers {
                    let expected = if answer["id"] == "r1" { "one" } else { "two" };
                    assert_eq!(
                        answer["output"],
                        json!({"key": expected, "value": expected}),
                        "{answer}"
                    );
                }
            },
        );
    }

    #[test]
    fn no_more_than_max_in_flight_handlers_run_at_once() {
        let running = Arc::new(AtomicU64::new(0));
        let most = Arc::new(AtomicU64::new(0));
        let (r, m) = (Arc::clone(&running), Arc::clone(&most));
        with_plugin(
            2,
            move |_host, _hook, payload| {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
                r.fetch_sub(1, Ordering::SeqCst);
                Ok(payload)
            },
            |to, from| {
                for i in 0..5 {
                    to.write_all(request(&format!("r{i}"), json!(i)).as_bytes())
                        .unwrap();
                }
                let mut ids: Vec<String> = (0..5)
                    .map(|_| next(from)["id"].as_str().unwrap().to_string())
                    .collect();
                ids.sort();
                assert_eq!(ids, ["r0", "r1", "r2", "r3", "r4"]);
            },
        );
        // Two at once at most (fewer only if the machine is too slow to overlap 50 ms sleeps).
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} handlers ran at once");
    }

    #[test]
    fn a_call_waiting_when_stdin_ends_fails_and_the_request_still_answers() {
        with_plugin(
            1,
            |host, _hook, _payload| Err(host.get("k").unwrap_err().to_string()),
            |to, from| {
                to.write_all(request("r1", json!({})).as_bytes()).unwrap();
                assert_eq!(next(from)["call"], "storage.get");
                // The shim closes stdin without answering (it is stopping the plugin).
                let (closed, _) = pipe();
                let open = std::mem::replace(to, closed);
                drop(open);
                let answer = next(from);
                assert_eq!(answer["id"], "r1");
                let error = answer["error"].as_str().unwrap();
                assert!(error.starts_with("UNAVAILABLE: stdin closed"), "{error}");
            },
        );
    }
}
