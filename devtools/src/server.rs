//! A background axum server (on 127.0.0.1 unless told otherwise) that stops when dropped.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running server. Dropping it aborts the serving task (the port is released with it).
pub struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves `app` on `127.0.0.1:port` (`0` picks a free port, kept by the server: no race).
    pub async fn start(app: Router, port: u16) -> Result<Server> {
        Server::start_on(app, "127.0.0.1", port).await
    }

    /// Serves `app` on `host:port`; `0.0.0.0` listens on every interface (e.g. in a container).
    pub async fn start_on(app: Router, host: &str, port: u16) -> Result<Server> {
        let listener = TcpListener::bind((host, port))
            .await
            .with_context(|| format!("binding {host}:{port}"))?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("server on {addr} stopped: {err}");
            }
        });
        Ok(Server { addr, task })
    }

    /// A server already serving on `addr` in `task` (e.g. over TLS), stopped when dropped.
    pub(crate) fn adopt(addr: SocketAddr, task: JoinHandle<()>) -> Server {
        Server { addr, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}
