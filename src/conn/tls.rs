//! rustls client configuration following libpq's `sslmode` semantics: no verification (but
//! handshake signatures are checked), chain verification (`verify-ca`, or `require` with a root
//! file) and chain + host name (`verify-full`, with libpq's CN fallback). The crypto provider is
//! always aws-lc-rs, passed explicitly; no process-wide default is used or installed.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::resolve::{Resolved, SslRootCert, Verify};
use super::x509;

/// A TLS setting that cannot be used (unreadable or empty certificate files, …).
#[derive(Debug, Clone)]
pub(super) struct TlsSetupError {
    pub(super) message: String,
    pub(super) help: String,
}

fn setup_error(message: String, help: &str) -> TlsSetupError {
    TlsSetupError { message, help: help.to_owned() }
}

/// Builds the rustls configuration for `r` (used for every TLS attempt of one connect call).
pub(super) fn client_config(r: &Resolved) -> Result<ClientConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut versions = Vec::new();
    if r.tls12 {
        versions.push(&rustls::version::TLS12);
    }
    if r.tls13 {
        versions.push(&rustls::version::TLS13);
    }
    let (roots, pinned) = match (&r.sslrootcert, r.verify) {
        (_, Verify::None) | (None, _) => (RootCertStore::empty(), Vec::new()),
        (Some(SslRootCert::File(path)), _) => load_roots(path)?,
        (Some(SslRootCert::System), _) => (load_system_roots()?, Vec::new()),
    };
    let verifier = PgVerifier {
        verify: r.verify,
        roots: Arc::new(roots),
        pinned,
        algorithms: provider.signature_verification_algorithms,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| {
            setup_error(format!("cannot set up TLS: {e}"), "check ssl_*_protocol_version")
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match (&r.sslcert, &r.sslkey) {
        (Some(cert), Some(key)) => {
            let (chain, key_der) = load_client_cert(cert, key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                setup_error(
                    format!("cannot use client certificate \"{}\": {e}", cert.display()),
                    "check that sslkey is the private key of sslcert",
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.enable_sni = r.sslsni;
    Ok(config)
}

fn load_roots(path: &Path) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            setup_error(
                format!("cannot read root certificate file \"{}\": {e}", path.display()),
                "sslrootcert must be a PEM file of CA certificates",
            )
        })?;
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs.iter().cloned());
    if ignored > 0 {
        tracing::warn!(path = %path.display(), ignored, "unparsable root certificates skipped");
    }
    if added == 0 {
        return Err(setup_error(
            format!("no usable certificates in root certificate file \"{}\"", path.display()),
            "sslrootcert must be a PEM file of CA certificates",
        ));
    }
    Ok((roots, certs))
}

fn load_system_roots() -> Result<RootCertStore, TlsSetupError> {
    let result = rustls_native_certs::load_native_certs();
    for e in &result.errors {
        tracing::debug!(error = %e, "while loading the system trust store");
    }
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(result.certs);
    if added == 0 {
        return Err(setup_error(
            "sslrootcert=system, but no certificates were found in the system trust store"
                .to_owned(),
            "install the CA certificates package, or set sslrootcert to a CA file",
        ));
    }
    Ok(roots)
}

fn load_client_cert(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsSetupError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            setup_error(
                format!("cannot read client certificate \"{}\": {e}", cert.display()),
                "sslcert must be a PEM certificate file",
            )
        })?;
    if chain.is_empty() {
        return Err(setup_error(
            format!("no certificate in client certificate file \"{}\"", cert.display()),
            "sslcert must be a PEM certificate file",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        setup_error(
            format!("cannot read private key file \"{}\": {e}", key.display()),
            "sslkey must be an unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)",
        )
    })?;
    Ok((chain, key))
}

/// Server certificate checks as libpq does them, on top of webpki.
#[derive(Debug)]
struct PgVerifier {
    verify: Verify,
    roots: Arc<RootCertStore>,
    /// The certificates of the root file, to accept a self-signed server certificate trusted
    /// directly (webpki refuses a CA certificate as end entity; OpenSSL/libpq accept it).
    pinned: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PgVerifier {
    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        parsed: &ParsedCertificate<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let result = verify_server_cert_signed_by_trust_anchor(
            parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        );
        let Err(error) = result else {
            return Ok(());
        };
        if !self.pinned.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            return Err(error);
        }
        // The server presented exactly a certificate from sslrootcert (and proves it holds the
        // key through the handshake signature): trusted, if within its validity period.
        let info = x509::parse(end_entity)
            .ok_or(rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if now < info.not_before {
            return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidYet));
        }
        if now > info.not_after {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
        }
        tracing::debug!("server certificate is itself in sslrootcert; trusted directly");
        Ok(())
    }
}

impl ServerCertVerifier for PgVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.verify == Verify::None {
            return Ok(ServerCertVerified::assertion());
        }
        let parsed = ParsedCertificate::try_from(end_entity)?;
        self.verify_chain(end_entity, &parsed, intermediates, now)?;
        if self.verify == Verify::Full
            && let Err(error) = verify_server_name(&parsed, server_name)
        {
            // libpq also accepts the subject CN when the certificate has no SAN of the
            // relevant type, and IP addresses spelled in dNSName SANs.
            let host = server_name.to_str();
            let matches =
                x509::parse(end_entity).is_some_and(|info| x509::libpq_name_matches(&info, &host));
            if !matches {
                return Err(error);
            }
            tracing::debug!(host = %host, "host name matched the certificate by libpq's rules");
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
