//! `airlock-e2e-probe`: what the smoke tests run inside pods. Each subcommand attempts one real
//! operation and prints one `key=result` line, so a test reads the outcome from the pod log instead
//! of trusting that an object was merely created.
//!
//! Subcommands:
//!   echo <text>                 print <text>
//!   unshare                     try to create a user namespace          -> unshare=ok | unshare=EPERM...
//!   mkdir <path>                try to create a directory               -> mkdir=ok | mkdir=EPERM...
//!   serve <port>                answer every TCP connection with a greeting, forever
//!   watch-connect <ip:port>     every 500 ms try to connect and read it -> connect=open | connect=blocked ...
//!   sleep                       sleep forever (a pod that just runs)

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

const GREETING: &str = "airlock-probe";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["echo", text @ ..] => {
            println!("{}", text.join(" "));
            Ok(())
        }
        ["unshare"] => report("unshare", try_unshare()),
        ["mkdir", path] => report("mkdir", std::fs::create_dir(path)),
        ["serve", port] => serve(port),
        ["watch-connect", addr] => watch_connect(addr),
        ["sleep"] => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        _ => Err(format!(
            "usage: airlock-e2e-probe echo TEXT | unshare | mkdir PATH | serve PORT | watch-connect IP:PORT | sleep (got {args:?})"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airlock-e2e-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `name=ok` or `name=<ERRNO NAME> (<message>)`. The attempt failing is an outcome, not an
/// error of the probe, so this returns Ok either way.
fn report(name: &str, outcome: io::Result<()>) -> Result<(), String> {
    match outcome {
        Ok(()) => println!("{name}=ok"),
        Err(e) => println!("{name}={} ({e})", errno_name(&e)),
    }
    Ok(())
}

fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::ENOSYS) => "ENOSYS".into(),
        Some(libc::EINVAL) => "EINVAL".into(),
        Some(libc::EROFS) => "EROFS".into(),
        Some(n) => format!("errno{n}"),
        None => "error".into(),
    }
}

/// A new user namespace needs no capability, so only a seccomp filter (RuntimeDefault blocks
/// `unshare` without CAP_SYS_ADMIN) makes this fail inside an unprivileged container.
fn try_unshare() -> io::Result<()> {
    // SAFETY: unshare(2) takes a flag word and touches no memory of ours; the probe is
    // single-threaded at this point, as CLONE_NEWUSER requires.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn serve(port: &str) -> Result<(), String> {
    let port: u16 = port.parse().map_err(|e| format!("port {port:?}: {e}"))?;
    let listener =
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind port {port}: {e}"))?;
    println!("serve=listening port={port}");
    // A failed accept (client reset) must not stop the server the other tests talk to.
    for mut s in listener.incoming().flatten() {
        let _ = writeln!(s, "{GREETING}");
    }
    Ok(())
}

fn watch_connect(addr: &str) -> Result<(), String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("address {addr:?}: {e}"))?;
    let mut out = io::stdout();
    loop {
        let line = match connect_once(&addr) {
            Ok(()) => "connect=open".to_string(),
            Err(e) => format!("connect=blocked ({e})"),
        };
        writeln!(out, "{line}").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn connect_once(addr: &SocketAddr) -> io::Result<()> {
    let s = TcpStream::connect_timeout(addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if line.trim() == GREETING {
        Ok(())
    } else {
        Err(io::Error::other(format!("unexpected greeting {line:?}")))
    }
}
