//! The physical floors `make bench` compares Airlock's paths with, measured in the same run on the
//! same machine: one bare gRPC hop (a tonic echo server and client over loopback, the same
//! message types as a shim call, nothing else in between), one pipe round trip to a child process
//! that does nothing (`cat`), and the CPU time processes of the node spend (from `/proc`), so a
//! bench can say how many microseconds of CPU the router or the shim spend per call.

use std::process::Stdio;
use std::time::{Duration, Instant};

use airlock_proto::plugin::v1::plugin_client::PluginClient;
use airlock_proto::plugin::v1::plugin_server::{Plugin, PluginServer};
use airlock_proto::plugin::v1::{
    HandshakeRequest, HandshakeResponse, InvokeRequest, InvokeResponse,
};
use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tonic::{Request, Response, Status};

/// Answers every `Invoke` with its payload: the least a gRPC hop can do.
struct Echo;

#[tonic::async_trait]
impl Plugin for Echo {
    async fn handshake(
        &self,
        _: Request<HandshakeRequest>,
    ) -> Result<Response<HandshakeResponse>, Status> {
        Err(Status::unimplemented("the echo floor only answers Invoke"))
    }

    async fn invoke(
        &self,
        request: Request<InvokeRequest>,
    ) -> Result<Response<InvokeResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(InvokeResponse {
            output_json: r.payload_json,
            duration_ms: 0,
            invocation_id: r.invocation_id,
        }))
    }
}

/// A client of a bare tonic echo server on 127.0.0.1 (plain text, TCP_NODELAY), served by a task
/// that lives as long as the runtime.
pub async fn tonic_echo() -> Result<PluginClient<tonic::transport::Channel>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(PluginServer::new(Echo))
            .serve_with_incoming(tokio_stream_of(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("connecting to the echo floor")?;
    Ok(PluginClient::new(channel))
}

/// The listener as the stream of connections tonic serves.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        });
        Some((accepted, listener))
    })
}

/// A child process that answers each line with the same line (`cat`): one pipe round trip per
/// [`PipeEcho::round_trip`], as the shim makes one to its plugin process.
#[derive(Debug)]
pub struct PipeEcho {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: BufReader<tokio::process::ChildStdout>,
    line: String,
}

impl PipeEcho {
    pub fn start() -> Result<Self> {
        let mut child = tokio::process::Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting cat for the pipe floor")?;
        let stdin = child.stdin.take().context("cat's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("cat's stdout")?);
        Ok(Self {
            _child: child,
            stdin,
            stdout,
            line: String::new(),
        })
    }

    /// Writes `line` (without its newline) and reads it back; the time it took.
    pub async fn round_trip(&mut self, line: &str) -> Result<Duration> {
        let started = Instant::now();
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.write_all(b"\n").await?;
        self.stdin.flush().await?;
        self.line.clear();
        self.stdout.read_line(&mut self.line).await?;
        let took = started.elapsed();
        ensure!(self.line.trim_end() == line, "cat answered another line");
        Ok(took)
    }
}

/// CPU time (user + system) used so far by every process on this machine whose command name is
/// `comm` (as `/proc/<pid>/comm` shows it: at most 15 bytes). Processes that exit in between are
/// lost, so measure over a stretch where the processes stay.
pub fn cpu_of(comm: &str) -> Duration {
    let ticks_per_second = match clock_ticks() {
        0 => 100,
        n => n,
    };
    let mut ticks = 0u64;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if name.trim_end() != comm {
            continue;
        }
        if let Some(t) = std::fs::read_to_string(path.join("stat"))
            .ok()
            .and_then(|s| cpu_ticks(&s))
        {
            ticks += t;
        }
    }
    Duration::from_secs_f64(ticks as f64 / ticks_per_second as f64)
}

/// CPU time (user + system) this process used so far, all its threads.
pub fn cpu_of_self() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| cpu_ticks(&s))
        .unwrap_or(0);
    let per_second = match clock_ticks() {
        0 => 100,
        n => n,
    };
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, counted after the command
/// name's closing parenthesis (the name may hold spaces).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`); 0 when it cannot be read.
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        let stat = "7 (a (b) c) S 1 7 7 0 -1 4194560 10 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(cpu_ticks("7 (x"), None);
    }

    #[tokio::test]
    async fn the_floors_answer_what_they_were_sent() {
        let mut pipe = PipeEcho::start().unwrap();
        assert!(pipe.round_trip("{\"a\":1}").await.unwrap() > Duration::ZERO);
        let mut echo = tonic_echo().await.unwrap();
        let out = echo
            .invoke(InvokeRequest {
                hook: "transform".into(),
                payload_json: "{\"a\":1}".into(),
                deadline_ms: 0,
                invocation_id: "floor".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(out.output_json, "{\"a\":1}");
        // This test process burns CPU; its own name is found.
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        let mut spin = 0u64;
        for i in 0..20_000_000u64 {
            spin = spin.wrapping_add(i * i);
        }
        std::hint::black_box(spin);
        assert!(cpu_of(me.trim_end()) > Duration::ZERO);
    }
}
