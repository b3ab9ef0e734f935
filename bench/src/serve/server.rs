//! A server started as a child process for the length of a benchmark: spawned, waited on until
//! `GET /health` answers 200, and stopped (SIGTERM, then a kill) when dropped.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::BenchError;

/// Lines of the child's output kept for error messages.
const LOG_LINES: usize = 40;

type Log = Arc<Mutex<VecDeque<String>>>;

pub struct LocalServer {
    child: Child,
    addr: SocketAddr,
    log: Log,
}

/// A port on 127.0.0.1 that was free a moment ago (bound, read, released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalServer {
    /// Runs `program args`, which must make it listen on 127.0.0.1:`port`, and waits until
    /// `/health` answers 200. Fails with the tail of its output if it exits or `timeout` passes.
    pub fn start(
        program: &Path,
        args: &[String],
        port: u16,
        timeout: Duration,
    ) -> Result<LocalServer, BenchError> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| BenchError::Spawn {
                program: program.display().to_string(),
                source,
            })?;
        let log = Log::default();
        if let Some(out) = child.stdout.take() {
            keep_tail(out, log.clone());
        }
        if let Some(err) = child.stderr.take() {
            keep_tail(err, log.clone());
        }
        let server = LocalServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        };
        server.wait_healthy(timeout)
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The last lines the child wrote (stdout and stderr interleaved).
    pub fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn wait_healthy(mut self, timeout: Duration) -> Result<LocalServer, BenchError> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Give the readers a moment to take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return Err(self.start_error(format!("exited ({status}) before it was healthy")));
            }
            if health(self.addr) == Some(200) {
                return Ok(self);
            }
            if start.elapsed() > timeout {
                let reason = format!(
                    "did not answer /health with 200 within {} s",
                    timeout.as_secs_f64()
                );
                return Err(self.start_error(reason));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_error(&self, reason: String) -> BenchError {
        BenchError::ServerStart {
            reason,
            log: self.log_tail(),
        }
    }

    /// Asks the child to stop (SIGTERM), waits up to 10 s, then kills it.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if sigterm(self.child.id()) {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// SIGTERM through the `kill` command (no libc binding needed); false where that fails.
fn sigterm(pid: u32) -> bool {
    cfg!(unix)
        && Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Reads a pipe to its end on a thread, keeping its last lines.
fn keep_tail(pipe: impl Read + Send + 'static, log: Log) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut line = Vec::new();
        while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            line.clear();
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            if log.len() == LOG_LINES {
                log.pop_front();
            }
            log.push_back(text);
        }
    });
}

/// The status of `GET /health`, or None when nothing answers.
fn health(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let (mut head, mut n) = ([0u8; 64], 0);
    while n < 12 {
        match s.read(&mut head[n..]).ok()? {
            0 => break,
            k => n += k,
        }
    }
    let line = std::str::from_utf8(&head[..n]).ok()?;
    line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn sh(script: &str, timeout_ms: u64) -> Result<LocalServer, BenchError> {
        let port = free_port().unwrap();
        LocalServer::start(
            Path::new("sh"),
            &["-c".into(), script.into()],
            port,
            Duration::from_millis(timeout_ms),
        )
    }

    #[test]
    fn an_exiting_server_reports_its_output() {
        let e = sh("echo loading; echo 'no such model' >&2; exit 3", 10_000)
            .err()
            .unwrap();
        let s = e.to_string();
        assert!(s.contains("exited") && s.contains("no such model"), "{s}");
    }

    #[test]
    fn a_silent_server_times_out_and_is_stopped() {
        let start = Instant::now();
        let e = sh("echo waiting; exec sleep 30", 400).err().unwrap();
        assert!(e.to_string().contains("within 0.4 s"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn health_reads_the_status_line() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 256];
            let _ = c.read(&mut buf).unwrap();
            c.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
                .unwrap();
        });
        assert_eq!(health(addr), Some(503));
        t.join().unwrap();
        assert_eq!(
            health(SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()))),
            None
        );
    }
}
