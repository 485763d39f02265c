//! Local certificates for the lab, the demo and the tests (rcgen). Three authorities, so each
//! TLS endpoint can trust exactly the peers it should:
//! - `ca`: issues server certificates (service HTTPS, stock API and metrics); clients pin it.
//! - `service-client-ca`: issues the service's client certificate; the stock API trusts only it.
//! - `monitor-ca`: issues the monitoring host's client certificate; stock metrics trust only it.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn authority(name: &str) -> Result<Authority, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    Ok(Authority { cert, key })
}

fn write(dir: &Path, name: &str, pem: &str, mode: u32) -> Result<(), PkiError> {
    crate::fsutil::write_atomic(&dir.join(name), pem.as_bytes(), mode)?;
    Ok(())
}

/// Issues a leaf for `names` (DNS names or IP addresses) and writes `<stem>.pem` / `<stem>.key`.
fn leaf(dir: &Path, ca: &Authority, stem: &str, names: &[String]) -> Result<(), PkiError> {
    let mut p = CertificateParams::new(names.to_vec())?;
    p.distinguished_name.push(DnType::CommonName, stem);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &ca.cert, &ca.key)?;
    write(dir, &format!("{stem}.pem"), &cert.pem(), 0o644)?;
    write(dir, &format!("{stem}.key"), &key.serialize_pem(), 0o600)
}

/// Writes a complete PKI into `dir`: `ca.pem`, `service.{pem,key}` for `service_names`,
/// `stock.{pem,key}` for `stock_names`, `service-client-ca.pem`, `service-client.{pem,key}`,
/// `monitor-ca.pem`, `monitor-client.{pem,key}`. CA private keys are not kept.
pub fn generate(
    dir: &Path,
    service_names: &[String],
    stock_names: &[String],
) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir)?;
    let ca = authority("Stockade lab CA")?;
    write(dir, "ca.pem", &ca.cert.pem(), 0o644)?;
    leaf(dir, &ca, "service", service_names)?;
    leaf(dir, &ca, "stock", stock_names)?;
    let sca = authority("Stockade service-client CA")?;
    write(dir, "service-client-ca.pem", &sca.cert.pem(), 0o644)?;
    leaf(
        dir,
        &sca,
        "service-client",
        &["stockade-service".to_string()],
    )?;
    let mca = authority("Stockade monitor CA")?;
    write(dir, "monitor-ca.pem", &mca.cert.pem(), 0o644)?;
    leaf(
        dir,
        &mca,
        "monitor-client",
        &["stockade-monitor".to_string()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_usable_configs() {
        let d = tempfile::tempdir().unwrap();
        generate(
            d.path(),
            &["127.0.0.1".into(), "localhost".into()],
            &["127.0.0.1".into()],
        )
        .unwrap();
        let p = d.path();
        crate::tls::server_config(
            &p.join("stock.pem"),
            &p.join("stock.key"),
            Some(&p.join("service-client-ca.pem")),
        )
        .unwrap();
        crate::tls::client_config(
            &p.join("ca.pem"),
            Some((&p.join("service-client.pem"), &p.join("service-client.key"))),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(p.join("service.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o600);
    }
}
