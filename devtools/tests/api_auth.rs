//! Subscription API calls are authenticated on their request headers: a caller without a valid
//! key is answered 401 before it sends its body, so Envoy never buffers a body for it. Raw TCP,
//! to send headers that announce a body and then no body at all.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use devtools::Stack;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// SHA-256 of "test-key".
const KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
/// How long an answer to the headers alone may take.
const ANSWER: Duration = Duration::from_secs(5);

/// Sends `POST /webhooks/subscriptions` headers announcing a body of `length` bytes (beyond
/// `api.max_body_bytes` when large), sends none of it, and returns what Envoy answers within
/// [`ANSWER`] (`None`: nothing yet).
async fn headers_only(stack: &Stack, extra: &str, length: usize) -> Result<Option<String>> {
    let mut socket = TcpStream::connect(("127.0.0.1", stack.envoy.listener_port())).await?;
    let head = format!(
        "POST /webhooks/subscriptions HTTP/1.1\r\nhost: api\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\n{extra}\r\n"
    );
    socket.write_all(head.as_bytes()).await?;
    let mut answer = vec![0u8; 4096];
    match tokio::time::timeout(ANSWER, socket.read(&mut answer)).await {
        Ok(read) => {
            let n = read?;
            Ok(Some(String::from_utf8_lossy(&answer[..n]).into_owned()))
        }
        Err(_) => Ok(None),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_calls_are_refused_at_their_headers() -> Result<()> {
    let config = json!({
        "api": {"keys": [{"consumer": "acme", "sha256": KEY_SHA256}], "max_body_bytes": 1024}
    });
    let stack = Stack::start(|_| config).await?;
    for (extra, length) in [
        ("", 100),
        ("authorization: Bearer wrong-key\r\n", 100),
        ("x-api-key: wrong-key\r\n", 100),
        // Larger than max_body_bytes: the caller learns nothing about the API but 401.
        ("", 1_000_000),
    ] {
        let answer = headers_only(&stack, extra, length)
            .await?
            .with_context(|| format!("no answer to headers {extra:?} without a body"))?;
        ensure!(
            answer.starts_with("HTTP/1.1 401") && answer.contains(r#""code":"unauthorized""#),
            "headers {extra:?}: {answer}"
        );
    }
    // With a valid key the body is what decides: Envoy waits for it.
    let waiting = headers_only(&stack, "authorization: Bearer test-key\r\n", 100).await?;
    ensure!(
        waiting.is_none(),
        "a valid key's call was answered before its body: {waiting:?}"
    );
    ensure!(
        stack.upstream.requests().is_empty(),
        "an API call went upstream"
    );
    Ok(())
}
