//! `ark certs`: a cluster CA and the node and client certificates it signs (rcgen).
//!
//! Node certificates carry DNS names `ark-node` (verified by clients) and `node-<id>`
//! (verified by peers), plus `localhost`, loopback and any extra names or IPs given.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const CA_CN: &str = "Ark cluster CA";
const CA_ORG: &str = "Ark";
/// Years a certificate stays valid.
const VALID_YEARS: i32 = 10;

fn this_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

fn validity(p: &mut CertificateParams) {
    let y = this_year();
    p.not_before = rcgen::date_time_ymd(y - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(y + VALID_YEARS, 1, 1);
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    dn.push(DnType::OrganizationName, CA_ORG);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p);
    p
}

fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn write_public(path: &Path, pem: &str) -> anyhow::Result<()> {
    std::fs::write(path, pem).with_context(|| format!("cannot write {}", path.display()))
}

/// Creates `ca.pem` and `ca.key` in `dir`. Refuses to overwrite an existing CA.
pub fn create_ca(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cert_path = dir.join("ca.pem");
    if cert_path.exists() {
        bail!(
            "{} already exists; refusing to replace a cluster CA (every certificate it signed would stop working)",
            cert_path.display()
        );
    }
    let key = KeyPair::generate().context("generating CA key")?;
    let cert = ca_params().self_signed(&key).context("signing CA certificate")?;
    write_private(&dir.join("ca.key"), &key.serialize_pem())?;
    write_public(&cert_path, &cert.pem())?;
    Ok(cert_path)
}

/// Loads the CA key from `dir` and rebuilds an issuer for it. rcgen signs with the key and
/// the subject name, both of which are the same as in the original `ca.pem`.
fn load_ca(dir: &Path) -> anyhow::Result<(Certificate, KeyPair)> {
    let key_path = dir.join("ca.key");
    let pem = std::fs::read_to_string(&key_path).with_context(|| {
        format!(
            "cannot read CA key {} (create one with `ark certs ca`)",
            key_path.display()
        )
    })?;
    let key = KeyPair::from_pem(&pem).with_context(|| format!("{} is not a valid private key", key_path.display()))?;
    let cert = ca_params().self_signed(&key).context("rebuilding CA issuer")?;
    Ok((cert, key))
}

fn leaf(sans: Vec<String>, cn: &str, server: bool) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(sans).context("certificate names")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, CA_ORG);
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = if server {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    validity(&mut p);
    Ok(p)
}

fn issue(ca_dir: &Path, out: &Path, name: &str, params: CertificateParams) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (ca, ca_key) = load_ca(ca_dir)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let key = KeyPair::generate().context("generating key")?;
    let cert = params.signed_by(&key, &ca, &ca_key).context("signing certificate")?;
    let cert_path = out.join(format!("{name}.pem"));
    let key_path = out.join(format!("{name}.key"));
    write_private(&key_path, &key.serialize_pem())?;
    write_public(&cert_path, &cert.pem())?;
    Ok((cert_path, key_path))
}

/// Issues `node-<id>.pem` / `.key` in `out`, signed by the CA in `ca_dir`.
pub fn create_node(ca_dir: &Path, out: &Path, id: u64, extra_names: &[String]) -> anyhow::Result<(PathBuf, PathBuf)> {
    if id == 0 {
        bail!("node id must be a positive integer");
    }
    let mut sans = vec![
        "ark-node".to_string(),
        format!("node-{id}"),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    sans.extend(extra_names.iter().cloned());
    let params = leaf(sans, &format!("ark node {id}"), true)?;
    issue(ca_dir, out, &format!("node-{id}"), params)
}

/// Issues `<name>.pem` / `.key` for a client (CLI, SDK, load generator).
pub fn create_client(ca_dir: &Path, out: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        bail!("client name must be non-empty letters, digits, '-' or '_'");
    }
    let params = leaf(vec![], &format!("ark client {name}"), false)?;
    issue(ca_dir, out, name, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_not_overwritten() {
        let d = tempfile::tempdir().unwrap();
        create_ca(d.path()).unwrap();
        let first = std::fs::read(d.path().join("ca.pem")).unwrap();
        assert!(create_ca(d.path()).is_err());
        assert_eq!(first, std::fs::read(d.path().join("ca.pem")).unwrap());
    }

    #[test]
    fn node_and_client_certs_are_issued() {
        let d = tempfile::tempdir().unwrap();
        create_ca(d.path()).unwrap();
        let (c, k) = create_node(d.path(), d.path(), 7, &[]).unwrap();
        assert!(std::fs::read_to_string(c).unwrap().contains("BEGIN CERTIFICATE"));
        assert!(std::fs::read_to_string(k).unwrap().contains("PRIVATE KEY"));
        assert!(create_client(d.path(), d.path(), "bad name!").is_err());
        create_client(d.path(), d.path(), "ops").unwrap();
    }
}
