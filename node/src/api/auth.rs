//! Who is calling and whether they may: the client's identity from its certificate, the
//! check every RPC handler makes before it does anything ([`Authz::require`]), and the audit
//! lines for denied calls and admin actions.
//!
//! An identity is the name in the client certificate that the TLS handshake verified against
//! the cluster CA: its subject's common name, or when it has none, its first DNS, URI or
//! e-mail subject alternative name. Certificates made by earlier releases of
//! `ark certs client NAME` carry the common name `ark client NAME`; their identity is `NAME`.
//!
//! Owns the mapping from a request to a [`Caller`] and from a refused [`Need`] to a
//! PERMISSION_DENIED status. Must not touch: the rules themselves (`raft::auth`), the audit
//! file (`audit`).

use std::net::SocketAddr;
use std::sync::Arc;

use tonic::{Request, Status};

use super::limits::Limits;
use super::peer::{peer_addr, peer_chain, peer_identity};
use crate::audit::{AuditLog, AuditRecord};
use crate::clock::wall_ms;
pub use crate::net::tls::identity_of_cert;
use crate::raft::auth::{AuthState, AuthView, Need};

/// The caller of one RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The identity the certificate names.
    pub identity: String,
    /// The client's address, when known.
    pub addr: Option<SocketAddr>,
}

/// The caller of `req`: the identity of its verified leaf certificate.
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    // Named once per connection by the acceptor; parsed here only when it did not.
    let identity = match peer_identity(req) {
        Some(id) => Some(id.to_string()),
        None => {
            let chain = peer_chain(req).ok_or_else(|| {
                Status::unauthenticated("no client certificate: use one made with `ark certs client NAME`")
            })?;
            let leaf = chain
                .first()
                .ok_or_else(|| Status::unauthenticated("an empty client certificate chain"))?;
            identity_of_cert(leaf)
        }
    };
    let identity = identity.ok_or_else(|| {
        Status::unauthenticated(
            "the client certificate names no identity (no common name and no DNS, URI or e-mail name)",
        )
    })?;
    Ok(Caller {
        identity,
        addr: peer_addr(req),
    })
}

/// The client plane's authorization: every handler asks it first.
#[derive(Clone, Debug)]
pub struct Authz {
    view: AuthView,
    audit: Arc<AuditLog>,
    node: u64,
    limits: Arc<Limits>,
}

impl Authz {
    /// Decides from `view` (this node's applied grants), writes to `audit`, and admits each
    /// identified call through the per-identity request rate of `limits`.
    pub fn new(view: AuthView, audit: Arc<AuditLog>, node: u64, limits: Arc<Limits>) -> Self {
        Self {
            view,
            audit,
            node,
            limits,
        }
    }

    /// The applied authorization state now.
    pub fn state(&self) -> Arc<AuthState> {
        self.view.get()
    }

    /// The audit log.
    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// Admits `req` to `rpc` if its caller may do what `need` says; otherwise
    /// PERMISSION_DENIED naming the missing permission, and an audit line. An admin need
    /// returns an [`AdminCall`] to report the outcome with.
    pub fn require<T>(&self, req: &Request<T>, rpc: &'static str, need: Need<'_>) -> Result<Caller, Status> {
        let caller = self.identify(req, rpc)?;
        self.check(&caller, rpc, need)?;
        Ok(caller)
    }

    /// The caller of `req`, admitted by its request rate (`limits`, before anything else is
    /// decided, so that a flood of refused calls is throttled too); a call without a usable
    /// identity is refused and audited.
    pub fn identify<T>(&self, req: &Request<T>, rpc: &'static str) -> Result<Caller, Status> {
        let caller = caller(req).inspect_err(|st| {
            let anonymous = Caller {
                identity: String::new(),
                addr: peer_addr(req),
            };
            self.record(rpc, "", &anonymous, "denied", st.message());
            metrics::counter!("ark_auth_denied_total", "permission" => "identity").increment(1);
        })?;
        self.limits.admit(&caller.identity)?;
        Ok(caller)
    }

    /// Whether an identified caller may do what `need` says (for calls whose target arrives
    /// after the request, like an upload's header); a refusal is audited.
    pub fn check(&self, caller: &Caller, rpc: &'static str, need: Need<'_>) -> Result<(), Status> {
        if self.view.get().allows(&caller.identity, &need) {
            return Ok(());
        }
        let missing = need.describe();
        let perm = crate::raft::auth::permission_name(need.permission());
        metrics::counter!("ark_auth_denied_total", "permission" => perm).increment(1);
        self.record(rpc, &target_of(&need), caller, "denied", &format!("missing {missing}"));
        Err(Status::permission_denied(format!(
            "{} may not call {rpc}: missing {missing} (an admin grants it with `ark auth grant {} ...`)",
            caller.identity, caller.identity
        )))
    }

    /// Admits an admin call; report its outcome with [`AdminCall::done`].
    pub fn admin<T>(
        &self,
        req: &Request<T>,
        rpc: &'static str,
        target: impl Into<String>,
    ) -> Result<AdminCall, Status> {
        let target = target.into();
        let caller = self.require(req, rpc, Need::Admin)?;
        Ok(AdminCall {
            authz: self.clone(),
            rpc,
            target,
            caller,
        })
    }

    fn record(&self, rpc: &str, target: &str, caller: &Caller, outcome: &str, detail: &str) {
        let rec = AuditRecord {
            identity: caller.identity.clone(),
            peer: caller.addr.map(|a| a.to_string()).unwrap_or_default(),
            rpc: rpc.to_string(),
            target: target.to_string(),
            outcome: outcome.to_string(),
            detail: detail.to_string(),
            ..AuditRecord::new(self.node, wall_ms())
        };
        // Counted and logged by the log itself; the call is not failed for it.
        let _ = self.audit.append(&rec);
    }
}

fn target_of(need: &Need<'_>) -> String {
    match need {
        Need::Admin => String::new(),
        Need::Read { ns, key } | Need::Write { ns, key } => format!("{ns}/{key}"),
        Need::KvRead { key } | Need::KvWrite { key } => (*key).to_string(),
    }
}

/// An admitted admin call, to be reported when it has run.
#[derive(Debug)]
pub struct AdminCall {
    authz: Authz,
    rpc: &'static str,
    target: String,
    /// Who called.
    pub caller: Caller,
}

impl AdminCall {
    /// Writes the audit line for the call's outcome and hands the result back.
    pub fn done<R>(self, res: Result<R, Status>) -> Result<R, Status> {
        let (outcome, detail) = match &res {
            Ok(_) => ("ok", String::new()),
            Err(st) => ("error", format!("{:?}: {}", st.code(), st.message())),
        };
        self.authz
            .record(self.rpc, &self.target, &self.caller, outcome, &detail);
        res
    }
}

/// Describes this module's metrics to the recorder; called once at start-up by `server`.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "ark_auth_denied_total",
        "Client calls refused for a missing permission (admin, read, write, kv-read, kv-write) or an unusable identity."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        p.distinguished_name = dn;
        p.subject_alt_names = sans;
        p.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    #[test]
    fn the_identity_is_the_common_name_or_else_a_san() {
        assert_eq!(
            identity_of_cert(&cert(Some("trainer"), vec![])).as_deref(),
            Some("trainer")
        );
        assert_eq!(
            identity_of_cert(&cert(Some("ark client ops"), vec![])).as_deref(),
            Some("ops")
        );
        let dns = SanType::DnsName("svc.example".try_into().unwrap());
        assert_eq!(identity_of_cert(&cert(None, vec![dns])).as_deref(), Some("svc.example"));
        assert_eq!(identity_of_cert(&cert(None, vec![])), None);
        assert_eq!(identity_of_cert(b"not a certificate"), None);
    }
}
