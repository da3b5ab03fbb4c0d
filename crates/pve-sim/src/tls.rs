//! The simulator's self-signed certificate: made on first start, kept in the state dir so
//! the pinned fingerprint in a written felhom config stays valid across restarts.

use std::path::Path;

use sha2::{Digest, Sha256};

pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
    pub fingerprint: String,
}

fn fingerprint_of_pem(pem: &str) -> Result<String, String> {
    let der = pem_to_der(pem)?;
    let d = Sha256::digest(&der);
    Ok(d.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| format!("bad certificate PEM: {e}"))
}

pub fn load_or_create(dir: &Path) -> Result<CertPair, String> {
    let cert_path = dir.join("tls-cert.pem");
    let key_path = dir.join("tls-key.pem");
    let text = |p: &Path| -> Result<Option<String>, String> {
        crate::files::read(p, 1 << 20)?
            .map(|b| String::from_utf8(b).map_err(|_| format!("{}: not UTF-8", p.display())))
            .transpose()
    };
    if let (Some(cert_pem), Some(key_pem)) = (text(&cert_path)?, text(&key_path)?) {
        let fingerprint = fingerprint_of_pem(&cert_pem)?;
        return Ok(CertPair {
            cert_pem,
            key_pem,
            fingerprint,
        });
    }
    let ck = rcgen::generate_simple_self_signed(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "pve".to_string(),
    ])
    .map_err(|e| e.to_string())?;
    let cert_pem = ck.cert.pem();
    let key_pem = ck.key_pair.serialize_pem();
    crate::files::write_atomic(dir, "tls-key.pem", key_pem.as_bytes(), 0o600)?;
    crate::files::write_atomic(dir, "tls-cert.pem", cert_pem.as_bytes(), 0o644)?;
    let fingerprint = fingerprint_of_pem(&cert_pem)?;
    Ok(CertPair {
        cert_pem,
        key_pem,
        fingerprint,
    })
}
