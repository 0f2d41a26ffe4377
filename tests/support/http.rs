//! A small HTTP/1.1 file server on 127.0.0.1, built on std::net. It stands in for GitHub's
//! release server and releases.ubuntu.com, which cannot be reached from the tests (the
//! network rule: loopback only). It serves in-memory files, honours `Range: bytes=N-`,
//! can cut a transfer after N bytes (once), answers 404 for unknown paths, and records
//! every request so a test can assert what was asked.
//!
//! ```ignore
//! let srv = TestServer::start(vec![("/iso/ubuntu.iso", iso_bytes)]);
//! let url = format!("{}/iso/ubuntu.iso", srv.url());
//! ```
use sha2::Digest;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One request the server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Percent-decoded path, e.g. `/k3s/v1.28.15+k3s1/k3s`.
    pub path: String,
    /// The `Range` header as sent, e.g. `bytes=1000-`.
    pub range: Option<String>,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    /// Path -> bytes to send before closing the connection (used once).
    cuts: HashMap<String, usize>,
    ignore_range: bool,
    /// Path -> path it answers 302 to (as GitHub sends release downloads elsewhere).
    redirects: HashMap<String, String>,
    requests: Vec<Request>,
}

pub struct TestServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts serving `files` (path, bytes) on 127.0.0.1 at a free port.
    pub fn start<P: Into<String>, B: Into<Vec<u8>>>(files: Vec<(P, B)>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the test HTTP server");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        for (path, bytes) in files {
            state
                .lock()
                .unwrap()
                .files
                .insert(path.into(), bytes.into());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = conn {
                        let state = state.clone();
                        std::thread::spawn(move || {
                            let _ = serve(stream, &state);
                        });
                    }
                }
            })
        };
        TestServer {
            addr,
            state,
            stop,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds or replaces a file.
    pub fn put(&self, path: &str, bytes: impl Into<Vec<u8>>) {
        let mut st = self.state.lock().unwrap();
        st.files.insert(path.to_string(), bytes.into());
    }

    /// Removes a file (it then answers 404).
    pub fn remove(&self, path: &str) {
        self.state.lock().unwrap().files.remove(path);
    }

    /// The next GET of `path` sends the full length header but only `after` bytes of
    /// the body, then closes the connection. Later requests are served normally.
    pub fn cut_once(&self, path: &str, after: usize) {
        self.state
            .lock()
            .unwrap()
            .cuts
            .insert(path.to_string(), after);
    }

    /// `from` answers `302 Found` with `Location: to` (a path on this server).
    pub fn redirect(&self, from: &str, to: &str) {
        let mut st = self.state.lock().unwrap();
        st.redirects.insert(from.to_string(), to.to_string());
    }

    /// Answer Range requests with the whole file (200), like servers without Range support.
    pub fn ignore_range(&self, ignore: bool) {
        self.state.lock().unwrap().ignore_range = ignore;
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The `Range` header of every request for `path` so far, in order.
    pub fn ranges(&self, path: &str) -> Vec<Option<String>> {
        let state = self.state.lock().unwrap();
        let for_path = state.requests.iter().filter(|r| r.path == path);
        for_path.map(|r| r.range.clone()).collect()
    }

    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// `sha256sum` output for these files: `<hex>  <name>` lines.
pub fn sha256sums(files: &[(&str, &[u8])]) -> String {
    files
        .iter()
        .map(|(name, bytes)| format!("{}  {name}\n", hex::encode(sha2::Sha256::digest(bytes))))
        .collect()
}

/// A K3s release laid out as GitHub serves it, under `/k3s/<version>/`, with its
/// `sha256sum-amd64.txt`: point the profile's `k3s.release_base_url` at `{url}/k3s`.
pub fn k3s_release(version: &str, files: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(name, bytes)| (format!("/k3s/{version}/{name}"), bytes.to_vec()))
        .collect();
    out.push((
        format!("/k3s/{version}/sha256sum-amd64.txt"),
        sha256sums(files).into_bytes(),
    ));
    out
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let raw_path = parts.next().unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    let path = percent_decode(raw_path.split('?').next().unwrap_or("/"));
    let (body, cut, ignore_range) = {
        let mut st = state.lock().unwrap();
        st.requests.push(Request {
            method: method.clone(),
            path: path.clone(),
            range: range.clone(),
        });
        if let Some(to) = st.redirects.get(&path).cloned() {
            drop(st);
            let mut out = stream;
            write!(
                out,
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return out.flush();
        }
        let body = st.files.get(&path).cloned();
        let cut = st.cuts.remove(&path);
        (body, cut, st.ignore_range)
    };
    let mut out = stream;
    let Some(body) = body else {
        let msg = b"not found\n";
        write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            msg.len()
        )?;
        out.write_all(msg)?;
        return out.flush();
    };
    let total = body.len();
    let start = match (&range, ignore_range) {
        (Some(r), false) => r
            .strip_prefix("bytes=")
            .and_then(|r| r.split('-').next())
            .and_then(|n| n.parse::<usize>().ok()),
        _ => None,
    };
    let (head, slice) = match start {
        Some(s) if s >= total => {
            write!(
                out,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return out.flush();
        }
        Some(s) => (
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{total}\r\nContent-Length: {}\r\n",
                total - 1,
                total - s
            ),
            &body[s..],
        ),
        None => (
            format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n"),
            &body[..],
        ),
    };
    out.write_all(head.as_bytes())?;
    out.write_all(b"Accept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")?;
    if method == "HEAD" {
        return out.flush();
    }
    match cut {
        Some(n) => {
            out.write_all(&slice[..n.min(slice.len())])?;
            out.flush()?;
            // Close mid-body: the client sees fewer bytes than Content-Length promised.
            out.shutdown(std::net::Shutdown::Both)
        }
        None => {
            out.write_all(slice)?;
            out.flush()
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
