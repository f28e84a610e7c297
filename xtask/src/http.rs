//! A minimal blocking HTTP/1.0 JSON client for the nodes' control API
//! (std only: xtask keeps few dependencies).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::Value;

/// The most bytes of a response we read.
const MAX_RESPONSE: u64 = 16 << 20;

/// Sends `method path` with an optional JSON body; returns the status and
/// the JSON body (`Value::Null` if empty).
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> anyhow::Result<(u16, Value)> {
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .with_context(|| format!("{method} {path} at {addr}"))?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("malformed response from {addr}{path}")
    };
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in response from {addr}{path}"))?;
    let value = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body)
            .with_context(|| format!("non-JSON response from {addr}{path}: {body}"))?
    };
    Ok((status, value))
}

/// Like [`request`], failing on a non-2xx status with the API's message.
pub(crate) fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let (status, v) = request(addr, method, path, body, timeout)?;
    if !(200..300).contains(&status) {
        let msg = v["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string());
        bail!("{method} {path}: {status}: {msg}");
    }
    Ok(v)
}

/// A long-lived `GET` whose body is JSON lines (the pubsub subscription
/// stream). Lines arrive on the receiver until the stream ends or `stop`
/// is called; empty keep-alive lines are skipped.
pub(crate) struct LineStream {
    pub(crate) lines: std::sync::mpsc::Receiver<String>,
    socket: TcpStream,
}

impl LineStream {
    pub(crate) fn open(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<Self> {
        use std::io::BufRead;
        let mut s = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connect {addr}"))?;
        s.set_write_timeout(Some(timeout))?;
        s.set_read_timeout(Some(timeout))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut reader = std::io::BufReader::new(s.try_clone()?);
        let mut status = String::new();
        reader.read_line(&mut status)?;
        let code: u16 = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no status from {addr}{path}"))?;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
        }
        if code != 200 {
            let mut body = String::new();
            let _ = reader.take(64 * 1024).read_to_string(&mut body);
            bail!("GET {path}: {code}: {body}");
        }
        // Keep-alives arrive every 15 s; anything longer is a dead stream.
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if line.trim().is_empty() {
                    continue;
                }
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            lines: rx,
            socket: s,
        })
    }

    pub(crate) fn stop(&self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

impl Drop for LineStream {
    fn drop(&mut self) {
        self.stop();
    }
}
