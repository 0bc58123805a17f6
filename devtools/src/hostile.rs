//! Receivers that misbehave the way receivers on the internet do, on raw TCP sockets: an HTTP
//! library is too polite to send a short body, a 12-digit status or a non-UTF-8 header.
//!
//! Each [`HostilePeer`] reads a request (headers and the declared body), then does what its
//! [`Misbehaviour`] says, on every connection. It counts connections and requests, and the
//! most connections it held open at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What a hostile receiver does once it has read a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Closes with a TCP reset (SO_LINGER 0) before sending anything.
    ResetBeforeHeaders,
    /// Sends a status line and headers, then resets.
    ResetAfterHeaders,
    /// `200` with `content-length: 1000`, 7 bytes of body, then a close.
    ShortBody,
    /// Bytes that are not HTTP at all.
    Garbage,
    /// A 200 KB header (over Envoy's header limits).
    HugeHeader,
    /// `HTTP/1.1 abc OK`.
    NonNumericStatus,
    /// `HTTP/1.1 200000000000 OK`.
    TwelveDigitStatus,
    /// A 500 whose headers carry bytes that are not UTF-8 (`Retry-After` among them).
    NonUtf8Headers,
    /// Reads the request and never answers (holds the connection open).
    Hang,
    /// `200`, then a chunked body that never ends, as fast as the peer reads it.
    EndlessBody,
}

impl Misbehaviour {
    pub const ALL: [Misbehaviour; 10] = [
        Misbehaviour::ResetBeforeHeaders,
        Misbehaviour::ResetAfterHeaders,
        Misbehaviour::ShortBody,
        Misbehaviour::Garbage,
        Misbehaviour::HugeHeader,
        Misbehaviour::NonNumericStatus,
        Misbehaviour::TwelveDigitStatus,
        Misbehaviour::NonUtf8Headers,
        Misbehaviour::Hang,
        Misbehaviour::EndlessBody,
    ];

    /// A name usable in ids and URLs.
    pub fn name(self) -> &'static str {
        match self {
            Misbehaviour::ResetBeforeHeaders => "reset_before_headers",
            Misbehaviour::ResetAfterHeaders => "reset_after_headers",
            Misbehaviour::ShortBody => "short_body",
            Misbehaviour::Garbage => "garbage",
            Misbehaviour::HugeHeader => "huge_header",
            Misbehaviour::NonNumericStatus => "non_numeric_status",
            Misbehaviour::TwelveDigitStatus => "twelve_digit_status",
            Misbehaviour::NonUtf8Headers => "non_utf8_headers",
            Misbehaviour::Hang => "hang",
            Misbehaviour::EndlessBody => "endless_body",
        }
    }
}

/// A raw TCP receiver on 127.0.0.1 that misbehaves on every request.
pub struct HostilePeer {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    open: Arc<Open>,
    task: JoinHandle<()>,
}

/// Connections open now, and the most open at once.
#[derive(Default)]
struct Open {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Open {
    fn opened(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn closed(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl HostilePeer {
    pub async fn start(behaviour: Misbehaviour) -> Result<HostilePeer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a hostile receiver")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(Open::default());
        let (req, conns, opened) = (
            Arc::clone(&requests),
            Arc::clone(&connections),
            Arc::clone(&open),
        );
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let (req, opened) = (Arc::clone(&req), Arc::clone(&opened));
                tokio::spawn(async move {
                    opened.opened();
                    let _ = serve(stream, behaviour, &req).await;
                    opened.closed();
                });
            }
        });
        Ok(HostilePeer {
            addr,
            requests,
            connections,
            open,
            task,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests read in full so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The most connections open at once so far.
    pub fn peak_open(&self) -> usize {
        self.open.peak.load(Ordering::SeqCst)
    }
}

impl Drop for HostilePeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request after another on a connection and misbehaves on each.
async fn serve(
    mut stream: TcpStream,
    behaviour: Misbehaviour,
    requests: &AtomicUsize,
) -> Result<()> {
    let mut buf = Vec::new();
    loop {
        if !read_request(&mut stream, &mut buf).await? {
            return Ok(());
        }
        requests.fetch_add(1, Ordering::SeqCst);
        match behaviour {
            Misbehaviour::ResetBeforeHeaders => return reset(stream),
            Misbehaviour::ResetAfterHeaders => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
                    .await?;
                stream.flush().await?;
                return reset(stream);
            }
            Misbehaviour::ShortBody => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n1234567")
                    .await?;
                return stream.shutdown().await.map_err(Into::into);
            }
            Misbehaviour::Garbage => {
                stream.write_all(b"\x00\xffHELLO THERE\r\n\r\n").await?;
                return stream.shutdown().await.map_err(Into::into);
            }
            Misbehaviour::HugeHeader => {
                let mut answer = b"HTTP/1.1 200 OK\r\nx-huge: ".to_vec();
                answer.resize(answer.len() + 200 * 1024, b'a');
                answer.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
                stream.write_all(&answer).await?;
            }
            Misbehaviour::NonNumericStatus => {
                stream
                    .write_all(b"HTTP/1.1 abc OK\r\ncontent-length: 0\r\n\r\n")
                    .await?;
            }
            Misbehaviour::TwelveDigitStatus => {
                stream
                    .write_all(b"HTTP/1.1 200000000000 OK\r\ncontent-length: 0\r\n\r\n")
                    .await?;
            }
            Misbehaviour::NonUtf8Headers => {
                stream
                    .write_all(
                        b"HTTP/1.1 500 Oops\r\nretry-after: \xff\xfe1\r\nx-bad: \xc3\x28\r\ncontent-length: 0\r\n\r\n",
                    )
                    .await?;
            }
            Misbehaviour::Hang => {
                // Hold the connection until the peer gives up.
                let mut sink = [0u8; 1024];
                while stream.read(&mut sink).await? > 0 {}
                return Ok(());
            }
            Misbehaviour::EndlessBody => return endless_body(stream).await,
        }
    }
}

/// A `200` whose chunked body never ends: 64 KiB chunks until the peer goes away.
async fn endless_body(mut stream: TcpStream) -> Result<()> {
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        .await?;
    let mut chunk = b"10000\r\n".to_vec();
    chunk.resize(chunk.len() + 0x10000, b' ');
    chunk.extend_from_slice(b"\r\n");
    loop {
        stream.write_all(&chunk).await?;
    }
}

/// Closes with RST instead of FIN. (tokio deprecates SO_LINGER because a non-zero linger blocks
/// the thread on drop; a zero linger resets at once and never blocks.)
#[allow(deprecated)]
fn reset(stream: TcpStream) -> Result<()> {
    stream.set_linger(Some(Duration::ZERO))?;
    drop(stream);
    Ok(())
}

/// Reads one request (headers, then `content-length` bytes of body) into `buf`, keeping what
/// follows it; false when the connection ends first.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<bool> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let total = end + 4 + length;
            while buf.len() < total {
                if !read_more(stream, buf).await? {
                    return Ok(false);
                }
            }
            buf.drain(..total);
            return Ok(true);
        }
        if !read_more(stream, buf).await? {
            return Ok(false);
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<bool> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
