//! TLS trust for PVE hosts: system roots, a CA bundle, or — what PVE users actually do with
//! self-signed hosts — a pinned SHA-256 fingerprint of the server certificate. Always rustls
//! with the ring provider; there is no "insecure" mode.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// SHA-256 of a certificate's DER, as `AA:BB:…` (what `pvenode cert info` prints).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint(pub [u8; 32]);

impl CertFingerprint {
    pub fn of(der: &[u8]) -> CertFingerprint {
        CertFingerprint(Sha256::digest(der).into())
    }
}

impl FromStr for CertFingerprint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hex: String = s.chars().filter(|c| *c != ':').collect();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "expected 32 hex bytes, optionally ':'-separated; got {} hex digits",
                hex.len()
            ));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(&hex, &mut out).map_err(|e| e.to_string())?;
        Ok(CertFingerprint(out))
    }
}

impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|b| format!("{b:02X}")).collect();
        f.write_str(&parts.join(":"))
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFingerprint({self})")
    }
}

#[derive(Debug, Clone)]
pub enum TlsTrust {
    SystemRoots,
    CaFile(PathBuf),
    Pinned(CertFingerprint),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a verifier refused the server's certificate, carried through rustls, hyper and reqwest
/// as a `rustls::Error::Other` so that the client can tell it from a network failure and
/// classify it once ([`ApiError::Certificate`]).
#[derive(Debug, Clone)]
pub(crate) struct CertRejected {
    pub expected: Option<CertFingerprint>,
    pub presented: CertFingerprint,
    pub reason: String,
}

impl fmt::Display for CertRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.expected {
            Some(pin) => write!(
                f,
                "{}: pinned {pin}, server presented {}",
                self.reason, self.presented
            ),
            None => write!(f, "{} (server presented {})", self.reason, self.presented),
        }
    }
}

impl std::error::Error for CertRejected {}

impl From<CertRejected> for rustls::Error {
    fn from(r: CertRejected) -> rustls::Error {
        rustls::Error::Other(rustls::OtherError(Arc::new(r)))
    }
}

/// A CA-file or system-roots verifier (webpki) that, when it refuses, says which certificate
/// it was shown, so the error can name the presented fingerprint as a pin mismatch does.
#[derive(Debug)]
struct Naming(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for Naming {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
            .map_err(|e| {
                CertRejected {
                    expected: None,
                    presented: CertFingerprint::of(end_entity.as_ref()),
                    reason: format!("server certificate not trusted: {e}"),
                }
                .into()
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts exactly the pinned end-entity certificate (name and chain are not checked: a pin
/// is stronger), and still verifies the handshake signatures, so the server must hold the
/// certificate's private key.
#[derive(Debug)]
struct PinnedVerifier {
    pin: CertFingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = CertFingerprint::of(end_entity.as_ref());
        if seen == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(CertRejected {
                expected: Some(self.pin),
                presented: seen,
                reason: "server certificate fingerprint mismatch".into(),
            }
            .into())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// webpki's verifier over `roots`, wrapped so that a refusal names the presented certificate.
fn with_roots(
    builder: rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>,
    roots: rustls::RootCertStore,
) -> Result<rustls::ClientConfig, ApiError> {
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| ApiError::InvalidInput {
                field: "tls".into(),
                message: e.to_string(),
            })?;
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Naming(verifier)))
        .with_no_client_auth())
}

/// The certificate refusal somewhere in an error's source chain (rustls's error sits inside
/// an `io::Error` inside hyper's inside reqwest's), if that is what the error is.
pub(crate) fn cert_rejection(e: &(dyn std::error::Error + 'static)) -> Option<CertRejected> {
    if let Some(r) = e.downcast_ref::<CertRejected>() {
        return Some(r.clone());
    }
    if let Some(rustls::Error::Other(rustls::OtherError(o))) = e.downcast_ref::<rustls::Error>() {
        if let Some(r) = o.downcast_ref::<CertRejected>() {
            return Some(r.clone());
        }
    }
    // An `io::Error`'s `source()` skips the error it wraps (and io errors nest here), so
    // look inside it explicitly.
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        if let Some(r) = cert_rejection(inner) {
            return Some(r);
        }
    }
    e.source().and_then(cert_rejection)
}

pub(crate) fn tls_config(trust: &TlsTrust) -> Result<rustls::ClientConfig, ApiError> {
    let tls_err = |m: String| ApiError::InvalidInput {
        field: "tls".into(),
        message: m,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?;
    let mut cfg = match trust {
        TlsTrust::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pin: *pin,
                provider: provider(),
            }))
            .with_no_client_auth(),
        TlsTrust::SystemRoots => {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(tls_err(
                    "no system root certificates found; pin the fingerprint or give a CA file"
                        .into(),
                ));
            }
            with_roots(builder, roots)?
        }
        TlsTrust::CaFile(path) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| tls_err(format!("cannot read CA file {}: {e}", path.display())))?;
            for c in certs {
                let c =
                    c.map_err(|e| tls_err(format!("bad certificate in {}: {e}", path.display())))?;
                roots.add(c).map_err(|e| {
                    tls_err(format!(
                        "unusable CA certificate in {}: {e}",
                        path.display()
                    ))
                })?;
            }
            if roots.is_empty() {
                return Err(tls_err(format!(
                    "no certificates in CA file {}",
                    path.display()
                )));
            }
            with_roots(builder, roots)?
        }
    };
    // HTTP/1.1 only: PVE speaks nothing else, and its error text lives in the HTTP/1 reason
    // phrase on servers before 8.3 (reference §0); HTTP/2 has no reason phrase.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_formats() {
        let fp = CertFingerprint::of(b"hello");
        let s = fp.to_string();
        assert_eq!(s.len(), 95);
        assert_eq!(s.parse::<CertFingerprint>().unwrap(), fp);
        assert_eq!(
            s.replace(':', "")
                .to_lowercase()
                .parse::<CertFingerprint>()
                .unwrap(),
            fp
        );
        assert!("AA:BB".parse::<CertFingerprint>().is_err());
        assert!("ZZ".repeat(32).parse::<CertFingerprint>().is_err());
        assert!(format!("{fp:?}").contains(&s));
    }

    #[test]
    fn pinned_verifier_accepts_only_the_pin() {
        let ck = rcgen::generate_simple_self_signed(vec!["pve".to_string()]).unwrap();
        let der = ck.cert.der().clone();
        let pin = CertFingerprint::of(der.as_ref());
        let name = ServerName::try_from("any.name.at.all").unwrap();
        let ok = PinnedVerifier {
            pin,
            provider: provider(),
        };
        assert!(ok
            .verify_server_cert(&der, &[], &name, &[], UnixTime::now())
            .is_ok());
        let wrong = CertFingerprint([0x11; 32]);
        let bad = PinnedVerifier {
            pin: wrong,
            provider: provider(),
        };
        let e = bad
            .verify_server_cert(&der, &[], &name, &[], UnixTime::now())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&wrong.to_string()) && e.contains(&pin.to_string()),
            "{e}"
        );
        // Signature checks use ring's algorithms, never "accept anything".
        assert!(!ok.supported_verify_schemes().is_empty());
    }

    #[test]
    fn tls_configs_build() {
        let pinned = tls_config(&TlsTrust::Pinned(CertFingerprint([0; 32]))).unwrap();
        assert_eq!(pinned.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(matches!(
            tls_config(&TlsTrust::CaFile("/nonexistent/ca.pem".into())),
            Err(ApiError::InvalidInput { .. })
        ));
    }
}
