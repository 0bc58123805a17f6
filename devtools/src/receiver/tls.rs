//! HTTPS for the test receiver: a certificate authority made at test time (rcgen), server
//! certificates it signs, and a listener that speaks TLS with rustls (ring; no OpenSSL).
//!
//! The listener records every TLS handshake, failed ones included, with the SNI the client sent:
//! a test can then tell "Envoy connected and refused our certificate" from "nothing connected".

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::Acceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::util::lock;

/// How long a client may take to finish a TLS handshake (handshakes are accepted one at a time).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A certificate authority for one test. Its certificate is written to a PEM file, for Envoy's
/// `trusted_ca`; the file is deleted when the value is dropped.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem_file: tempfile::NamedTempFile,
}

impl TestCa {
    pub fn new() -> Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "proxy-webhooks test CA");
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pem_file = tempfile::Builder::new()
            .prefix("test-ca-")
            .suffix(".pem")
            .tempfile()?;
        std::fs::write(pem_file.path(), cert.pem()).context("writing the test CA")?;
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            pem_file,
        })
    }

    /// The CA certificate (PEM).
    pub fn pem_path(&self) -> &Path {
        self.pem_file.path()
    }

    /// A server configuration presenting a certificate for `names` (DNS names or IP literals,
    /// each becoming a subject alternative name), signed by this CA.
    pub fn server_config(&self, names: &[&str]) -> Result<Arc<ServerConfig>> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        Ok(Arc::new(config))
    }

    /// A certificate and its key (PEM), signed by this CA, for a server elsewhere (etcd): the
    /// subject `common_name`, a subject alternative name for each of `names`, good for serving
    /// and, as etcd's gateway presents its server certificate to etcd itself, for clients too.
    pub fn server_pem(&self, common_name: &str, names: &[&str]) -> Result<(String, String)> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign_pem(params, Some(common_name))
    }

    /// A client certificate and its key (PEM), signed by this CA, with subject `common_name`
    /// or an empty subject (etcd 3.4's gateway refuses a certificate with a common name once
    /// its authentication is on).
    pub fn client_pem(&self, common_name: Option<&str>) -> Result<(String, String)> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign_pem(params, common_name)
    }

    fn sign_pem(
        &self,
        mut params: CertificateParams,
        common_name: Option<&str>,
    ) -> Result<(String, String)> {
        params.use_authority_key_identifier_extension = true;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(name) = common_name {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// One TLS handshake a client started with the receiver.
#[derive(Clone, Debug)]
pub struct Handshake {
    /// The server name the client asked for (SNI), if it sent one.
    pub sni: Option<String>,
    /// Why the handshake failed (e.g. the client's alert); `None` when it succeeded.
    pub error: Option<String>,
}

/// Who is on the other end of a TLS connection: what each request learns about its connection.
#[derive(Clone, Debug)]
pub struct TlsPeer {
    pub addr: SocketAddr,
    pub sni: Option<String>,
}

impl Connected<IncomingStream<'_, TlsListener>> for TlsPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> TlsPeer {
        stream.remote_addr().clone()
    }
}

/// A TCP listener that hands axum only connections whose TLS handshake succeeded.
pub struct TlsListener {
    tcp: TcpListener,
    config: Arc<ServerConfig>,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
}

impl TlsListener {
    pub fn new(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        handshakes: Arc<Mutex<Vec<Handshake>>>,
    ) -> TlsListener {
        TlsListener {
            tcp,
            config,
            handshakes,
        }
    }

    /// Runs the server side of a handshake; records it, failed or not.
    async fn handshake(&self, tcp: TcpStream) -> Option<(TlsStream<TcpStream>, Option<String>)> {
        let attempt = async {
            let start = LazyConfigAcceptor::new(Acceptor::default(), tcp).await;
            let start = start.map_err(|e| (None, e))?;
            let sni = start.client_hello().server_name().map(str::to_string);
            match start.into_stream(self.config.clone()).await {
                Ok(stream) => Ok((stream, sni)),
                Err(e) => Err((sni, e)),
            }
        };
        let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await;
        let (result, record) = match outcome {
            Ok(Ok((stream, sni))) => (Some((stream, sni.clone())), Handshake { sni, error: None }),
            Ok(Err((sni, e))) => (None, failed(sni, e.to_string())),
            Err(_) => (None, failed(None, "timed out".to_string())),
        };
        lock(&self.handshakes).push(record);
        result
    }
}

fn failed(sni: Option<String>, error: String) -> Handshake {
    Handshake {
        sni,
        error: Some(error),
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = TlsPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                // E.g. too many open files: give the system a moment, as axum's own listener does.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if let Some((stream, sni)) = self.handshake(tcp).await {
                return (stream, TlsPeer { addr, sni });
            }
        }
    }

    fn local_addr(&self) -> io::Result<TlsPeer> {
        Ok(TlsPeer {
            addr: self.tcp.local_addr()?,
            sni: None,
        })
    }
}
