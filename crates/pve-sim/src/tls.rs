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
    if cert_path.exists() && key_path.exists() {
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| e.to_string())?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(|e| e.to_string())?;
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
    write_private(&key_path, &key_pem)?;
    std::fs::write(&cert_path, &cert_pem).map_err(|e| e.to_string())?;
    let fingerprint = fingerprint_of_pem(&cert_pem)?;
    Ok(CertPair {
        cert_pem,
        key_pem,
        fingerprint,
    })
}

/// Write a file only its owner can read.
pub fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| e.to_string())
}
