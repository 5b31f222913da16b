//! `ark certs`: a cluster CA and the node and client certificates it signs (rcgen), an
//! intermediate CA under it, CSRs for an external CA, signing a CSR, and the expiry check.
//!
//! Node certificates carry DNS names `ark-node` (verified by clients) and `node-<id>`
//! (verified by peers), plus `localhost`, loopback and any extra names or IPs given. A
//! client certificate's common name is the client's name. Default lifetimes:
//! [`CA_DAYS`], [`NODE_DAYS`], [`CLIENT_DAYS`] (docs/security.md, "Certificates").
//!
//! A folder with `ca.pem` and `ca.key` is an issuer; when `ca.pem` is an intermediate (not
//! self-signed), every certificate it issues is written with the intermediates after it,
//! so that the chain a client or node presents reaches the cluster's root.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    DnValue, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

const CA_CN: &str = "Ark cluster CA";
const CA_ORG: &str = "Ark";
/// Default lifetime of a cluster CA, in days (ten years: replacing it means reissuing
/// every certificate).
pub const CA_DAYS: u32 = 3650;
/// Default lifetime of an intermediate CA, in days.
pub const INTERMEDIATE_DAYS: u32 = 1825;
/// Default lifetime of a node certificate, in days (nodes reload a new one without a
/// restart).
pub const NODE_DAYS: u32 = 365;
/// Default lifetime of a client certificate, in days.
pub const CLIENT_DAYS: u32 = 90;
/// Longest lifetime `--days` accepts (100 years).
const DAYS_MAX: u32 = 36_500;

/// Valid from an hour ago (clocks differ) for `days`.
fn validity(p: &mut CertificateParams, days: u32) -> anyhow::Result<()> {
    if days == 0 || days > DAYS_MAX {
        bail!("a certificate's lifetime must be 1 to {DAYS_MAX} days, not {days}");
    }
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(i64::from(days));
    Ok(())
}

fn ca_params(days: u32) -> anyhow::Result<CertificateParams> {
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
    validity(&mut p, days)?;
    Ok(p)
}

/// Writes `text` to `path` readable by its owner only (0600), synced: keys and secrets.
pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn write_public(path: &Path, pem: &str) -> anyhow::Result<()> {
    std::fs::write(path, pem).with_context(|| format!("cannot write {}", path.display()))
}

/// Creates `ca.pem` and `ca.key` in `dir`, valid for [`CA_DAYS`]. Refuses to overwrite an
/// existing CA.
pub fn create_ca(dir: &Path) -> anyhow::Result<PathBuf> {
    create_ca_days(dir, CA_DAYS)
}

fn refuse_existing_ca(cert_path: &Path) -> anyhow::Result<()> {
    if cert_path.exists() {
        bail!(
            "{} already exists; refusing to replace a CA (every certificate it signed would stop working)",
            cert_path.display()
        );
    }
    Ok(())
}

/// Creates `ca.pem` and `ca.key` in `dir`, valid for `days`. Refuses to overwrite an
/// existing CA.
pub fn create_ca_days(dir: &Path, days: u32) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cert_path = dir.join("ca.pem");
    refuse_existing_ca(&cert_path)?;
    let key = KeyPair::generate().context("generating CA key")?;
    let cert = ca_params(days)?.self_signed(&key).context("signing CA certificate")?;
    write_private(&dir.join("ca.key"), &key.serialize_pem())?;
    write_public(&cert_path, &cert.pem())?;
    Ok(cert_path)
}

/// An issuer loaded from a folder: what rcgen signs with, and the intermediates (PEM) to
/// write after every certificate it issues.
struct Issuer {
    cert: Certificate,
    key: KeyPair,
    chain_pem: String,
}

/// Loads the issuer in `dir` (`ca.pem`, `ca.key`). rcgen signs with the key and the
/// subject name, both read from the files.
fn load_issuer(dir: &Path) -> anyhow::Result<Issuer> {
    let key_path = dir.join("ca.key");
    let pem = std::fs::read_to_string(&key_path).with_context(|| {
        format!(
            "cannot read CA key {} (create one with `ark certs ca`)",
            key_path.display()
        )
    })?;
    let key = KeyPair::from_pem(&pem).with_context(|| format!("{} is not a valid private key", key_path.display()))?;
    let cert_path = dir.join("ca.pem");
    let ca_pem = std::fs::read_to_string(&cert_path)
        .with_context(|| format!("cannot read CA certificate {}", cert_path.display()))?;
    let params = CertificateParams::from_ca_cert_pem(&ca_pem)
        .with_context(|| format!("{} is not a CA certificate", cert_path.display()))?;
    let cert = params.self_signed(&key).context("rebuilding the CA issuer")?;
    // Every certificate of ca.pem but self-signed ones (the root the verifier trusts).
    let mut chain_pem = String::new();
    for c in read_pem_certs(&cert_path)? {
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&c).map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?;
        if parsed.subject() != parsed.issuer() {
            chain_pem.push_str(&pem_of(&c));
        }
    }
    Ok(Issuer { cert, key, chain_pem })
}

fn pem_of(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}

/// The DER of every certificate in a PEM file (keys and requests skipped).
fn read_pem_certs(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for p in x509_parser::pem::Pem::iter_from_buffer(&bytes) {
        let p = p.map_err(|e| anyhow::anyhow!("{} is not valid PEM: {e}", path.display()))?;
        if p.label == "CERTIFICATE" {
            out.push(p.contents);
        }
    }
    Ok(out)
}

fn leaf(sans: Vec<String>, cn: &str, server: bool, days: u32) -> anyhow::Result<CertificateParams> {
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
    validity(&mut p, days)?;
    Ok(p)
}

fn issue(ca_dir: &Path, out: &Path, name: &str, params: CertificateParams) -> anyhow::Result<(PathBuf, PathBuf)> {
    let issuer = load_issuer(ca_dir)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let key = KeyPair::generate().context("generating key")?;
    let cert = params
        .signed_by(&key, &issuer.cert, &issuer.key)
        .context("signing certificate")?;
    let cert_path = out.join(format!("{name}.pem"));
    let key_path = out.join(format!("{name}.key"));
    write_private(&key_path, &key.serialize_pem())?;
    write_public(&cert_path, &format!("{}{}", cert.pem(), issuer.chain_pem))?;
    Ok((cert_path, key_path))
}

/// Issues `node-<id>.pem` / `.key` in `out`, signed by the CA in `ca_dir`, valid for
/// [`NODE_DAYS`].
pub fn create_node(ca_dir: &Path, out: &Path, id: u64, extra_names: &[String]) -> anyhow::Result<(PathBuf, PathBuf)> {
    create_node_days(ca_dir, out, id, extra_names, NODE_DAYS)
}

/// Issues `node-<id>.pem` / `.key` in `out`, signed by the CA in `ca_dir`, valid for `days`.
pub fn create_node_days(
    ca_dir: &Path,
    out: &Path,
    id: u64,
    extra_names: &[String],
    days: u32,
) -> anyhow::Result<(PathBuf, PathBuf)> {
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
    let params = leaf(sans, &format!("ark node {id}"), true, days)?;
    issue(ca_dir, out, &format!("node-{id}"), params)
}

fn check_client_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        bail!("client name must be 1 to 64 letters, digits, '-' or '_', not {name:?}");
    }
    Ok(())
}

/// Issues `<name>.pem` / `.key` for a client (CLI, SDK, load generator), common name
/// `name`, valid for [`CLIENT_DAYS`].
pub fn create_client(ca_dir: &Path, out: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    create_client_days(ca_dir, out, name, CLIENT_DAYS)
}

/// Issues `<name>.pem` / `.key` for a client, common name `name`, valid for `days`.
pub fn create_client_days(ca_dir: &Path, out: &Path, name: &str, days: u32) -> anyhow::Result<(PathBuf, PathBuf)> {
    check_client_name(name)?;
    let params = leaf(vec![], name, false, days)?;
    issue(ca_dir, out, name, params)
}

/// Creates an intermediate CA signed by the issuer in `ca_dir`: `out/ca.pem` (the
/// intermediate, then the issuer's own intermediates) and `out/ca.key`. `out` then works
/// as a `--ca-dir`; nodes and clients keep trusting the root's `ca.pem` only.
pub fn create_intermediate(ca_dir: &Path, out: &Path, days: u32) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cert_path = out.join("ca.pem");
    refuse_existing_ca(&cert_path)?;
    let issuer = load_issuer(ca_dir)?;
    let mut p = ca_params(days)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Ark intermediate CA");
    dn.push(DnType::OrganizationName, CA_ORG);
    p.distinguished_name = dn;
    // It issues end entities only, no further CAs.
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let key = KeyPair::generate().context("generating intermediate key")?;
    let cert = p
        .signed_by(&key, &issuer.cert, &issuer.key)
        .context("signing intermediate certificate")?;
    write_private(&out.join("ca.key"), &key.serialize_pem())?;
    write_public(&cert_path, &format!("{}{}", cert.pem(), issuer.chain_pem))?;
    Ok(cert_path)
}

/// Creates a private key `<name>.key` and a certificate signing request `<name>.csr` in
/// `out` for a client named `name` (the common name), for an external CA or
/// [`sign_csr`]. The key never leaves this folder.
pub fn create_csr(out: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    check_client_name(name)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let csr_path = out.join(format!("{name}.csr"));
    let key_path = out.join(format!("{name}.key"));
    if key_path.exists() {
        bail!(
            "{} already exists; refusing to replace a private key",
            key_path.display()
        );
    }
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    let key = KeyPair::generate().context("generating key")?;
    let csr = p.serialize_request(&key).context("making the signing request")?;
    write_private(&key_path, &key.serialize_pem())?;
    write_public(&csr_path, &csr.pem().context("encoding the signing request")?)?;
    Ok((csr_path, key_path))
}

/// Signs the client CSR at `csr` with the issuer in `ca_dir`, valid for `days`; writes
/// `<name>.pem` in `out` (with the issuer's intermediates) and answers its path and the
/// name. Only the request's key and common name are taken: the certificate is a client
/// certificate (client-auth usage, no other names), whatever else the request asks for.
pub fn sign_csr(ca_dir: &Path, csr: &Path, out: &Path, days: u32) -> anyhow::Result<(PathBuf, String)> {
    let pem = std::fs::read_to_string(csr).with_context(|| format!("cannot read {}", csr.display()))?;
    let req = CertificateSigningRequestParams::from_pem(&pem).with_context(|| {
        format!(
            "{} is not a valid signing request (or its signature is wrong)",
            csr.display()
        )
    })?;
    let name = match req.params.distinguished_name.get(&DnType::CommonName) {
        Some(DnValue::Utf8String(s)) => s.clone(),
        Some(DnValue::PrintableString(s)) => s.as_str().to_owned(),
        Some(DnValue::Ia5String(s)) => s.as_str().to_owned(),
        _ => bail!("{} has no common name to name the client by", csr.display()),
    };
    check_client_name(&name)?;
    let issuer = load_issuer(ca_dir)?;
    let signed = CertificateSigningRequestParams {
        params: leaf(vec![], &name, false, days)?,
        public_key: req.public_key,
    }
    .signed_by(&issuer.cert, &issuer.key)
    .context("signing the request")?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cert_path = out.join(format!("{name}.pem"));
    write_public(&cert_path, &format!("{}{}", signed.pem(), issuer.chain_pem))?;
    Ok((cert_path, name))
}

/// One certificate found by [`check`].
#[derive(Debug, Clone)]
pub struct CertStatus {
    /// The file it is in.
    pub file: PathBuf,
    /// Its place in that file (0: the first).
    pub index: usize,
    /// Its subject, as text.
    pub subject: String,
    /// Its notAfter, seconds since the Unix epoch.
    pub not_after: i64,
    /// Its notAfter, as text (UTC).
    pub not_after_text: String,
    /// Seconds from `now` to notAfter (negative: expired).
    pub seconds_left: i64,
}

impl CertStatus {
    /// Days left, rounded to the nearest day (a fresh 90-day certificate has 90).
    pub fn days_left(&self) -> i64 {
        (self.seconds_left + 43_200).div_euclid(86_400)
    }

    /// Whether it has expired or expires within `days`.
    pub fn expires_within(&self, days: i64) -> bool {
        self.seconds_left < days.saturating_mul(86_400)
    }
}

/// Every certificate in `paths` (PEM files, or folders whose `*.pem` files are read; keys
/// and requests are skipped), with the days each has left at `now` (Unix seconds).
pub fn check(paths: &[PathBuf], now: i64) -> anyhow::Result<Vec<CertStatus>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot read {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|e| e == "pem"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    let mut out = Vec::new();
    for file in files {
        for (index, der) in read_pem_certs(&file)?.into_iter().enumerate() {
            let (_, c) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| anyhow::anyhow!("{}: certificate {index} cannot be read: {e}", file.display()))?;
            let not_after = c.validity().not_after.timestamp();
            out.push(CertStatus {
                file: file.clone(),
                index,
                subject: c.subject().to_string(),
                not_after,
                not_after_text: c.validity().not_after.to_string(),
                seconds_left: not_after - now,
            });
        }
    }
    Ok(out)
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

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn default_lifetimes_and_days_are_what_check_reads() {
        let d = tempfile::tempdir().unwrap();
        create_ca(d.path()).unwrap();
        create_node(d.path(), d.path(), 1, &[]).unwrap();
        create_client(d.path(), d.path(), "ops").unwrap();
        create_client_days(d.path(), d.path(), "brief", 3).unwrap();
        assert!(create_client_days(d.path(), d.path(), "never", 0).is_err());
        let found = check(&[d.path().to_path_buf()], now()).unwrap();
        let days = |file: &str| {
            found
                .iter()
                .find(|c| c.file.file_name().unwrap() == file)
                .map(CertStatus::days_left)
                .unwrap()
        };
        assert_eq!(found.len(), 4, "{found:?}");
        assert_eq!(days("ca.pem"), i64::from(CA_DAYS));
        assert_eq!(days("node-1.pem"), i64::from(NODE_DAYS));
        assert_eq!(days("ops.pem"), i64::from(CLIENT_DAYS));
        assert_eq!(days("brief.pem"), 3);
        let brief = found.iter().find(|c| c.file.ends_with("brief.pem")).unwrap();
        assert!(brief.expires_within(4) && !brief.expires_within(2));
        let ops = found.iter().find(|c| c.file.ends_with("ops.pem")).unwrap();
        assert!(ops.subject.contains("CN=ops"), "{}", ops.subject);
        // A year on, the client certificates have expired.
        let later = check(&[d.path().join("ops.pem")], now() + 365 * 86_400).unwrap();
        assert!(later[0].days_left() < 0 && later[0].expires_within(0));
    }

    #[test]
    fn a_signed_request_is_a_client_certificate_with_its_common_name_and_key() {
        let d = tempfile::tempdir().unwrap();
        create_ca(d.path()).unwrap();
        let req = tempfile::tempdir().unwrap();
        let (csr, key) = create_csr(req.path(), "billing").unwrap();
        assert!(create_csr(req.path(), "billing").is_err(), "a key is never overwritten");
        let (cert, name) = sign_csr(d.path(), &csr, req.path(), 30).unwrap();
        assert_eq!(name, "billing");
        let der = read_pem_certs(&cert).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&der[0]).unwrap();
        assert!(c.subject().to_string().contains("CN=billing"));
        let spki = c.public_key().raw.to_vec();
        let key = KeyPair::from_pem(&std::fs::read_to_string(key).unwrap()).unwrap();
        assert_eq!(spki, key.public_key_der(), "the certificate is for the request's key");
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(
            eku.client_auth && !eku.server_auth,
            "a signed request never makes a node certificate"
        );
        std::fs::write(req.path().join("junk.csr"), "not a request").unwrap();
        assert!(sign_csr(d.path(), &req.path().join("junk.csr"), req.path(), 30).is_err());
    }

    #[test]
    fn an_intermediate_issues_chains_that_end_below_the_root() {
        let d = tempfile::tempdir().unwrap();
        create_ca(d.path()).unwrap();
        let sub = d.path().join("sub");
        create_intermediate(d.path(), &sub, 30).unwrap();
        assert!(create_intermediate(d.path(), &sub, 30).is_err());
        let (cert, _) = create_client(&sub, &sub, "team").unwrap();
        let chain = read_pem_certs(&cert).unwrap();
        assert_eq!(chain.len(), 2, "leaf, then the intermediate");
        assert_eq!(chain[1], read_pem_certs(&sub.join("ca.pem")).unwrap()[0]);
    }
}
