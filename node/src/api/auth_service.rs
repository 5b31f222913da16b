//! The `ark.v1.Auth` service: who am I, grant, revoke, list grants, lock down, and the audit
//! log's tail. Grants are written through consensus like any write; the rules and their
//! refusals are `raft::auth`'s.
//!
//! Owns validation and status codes of these calls only.

use std::sync::Arc;
use std::time::Duration;

use ark_proto::v1::auth_server::Auth;
use ark_proto::v1::{
    AuditTailRequest, AuditTailResponse, GrantRequest, GrantResponse, GrantSpec, IdentityGrants, ListGrantsRequest,
    ListGrantsResponse, LockdownRequest, RevokeRequest, WhoAmIRequest, WhoAmIResponse,
};
use tonic::{Request, Response, Status};

use super::auth::{caller, Authz};
use super::check_request_id;
use crate::raft::auth::{identity_problem, normalize, parse_permission, permission_name, BOOTSTRAP_ADMIN};
use crate::raft::front::Front;
use crate::raft::types::{AuthCommand, Grant};
use crate::raft::{Command, Op};

/// How long a grant may look for a leader before it fails.
const PROPOSE_DEADLINE: Duration = Duration::from_secs(20);
/// Audit lines returned when the request names no number.
const TAIL_LINES_DEFAULT: u32 = 100;

/// The auth service.
pub struct AuthService {
    authz: Authz,
    front: Arc<Front>,
    node: u64,
}

impl AuthService {
    /// A service deciding with `authz` and writing through `front`.
    pub fn new(authz: Authz, front: Arc<Front>, node: u64) -> Self {
        Self { authz, front, node }
    }

    /// A grant or revoke: the spec checked and normalized, then `make`'s command written.
    async fn change(
        &self,
        identity: String,
        spec: Option<GrantSpec>,
        request_id: Vec<u8>,
        make: fn(String, Grant) -> AuthCommand,
    ) -> Result<(), Status> {
        let grant = grant_of(&identity, spec)?;
        self.write(request_id, make(identity, grant)).await
    }

    async fn write(&self, request_id: Vec<u8>, cmd: AuthCommand) -> Result<(), Status> {
        check_request_id(&request_id)?;
        let r = self
            .front
            .propose(
                Op {
                    request_id,
                    command: Command::Auth(cmd),
                },
                PROPOSE_DEADLINE,
            )
            .await?;
        match r.error {
            None => Ok(()),
            Some(why) if why.starts_with("target") || why.starts_with("identity") || why.contains(" part ") => {
                Err(Status::invalid_argument(why))
            }
            Some(why) if why.contains("does not have") || why.contains("has no grants") => Err(Status::not_found(why)),
            Some(why) => Err(Status::failed_precondition(why)),
        }
    }
}

/// What a grant or revoke is about, for its audit line: `IDENTITY PERMISSION TARGET`.
fn grant_target(identity: &str, spec: &Option<GrantSpec>) -> String {
    let g = spec.as_ref();
    format!(
        "{identity} {} {}",
        g.map_or("", |g| g.permission.as_str()),
        g.map_or("", |g| g.target.as_str())
    )
}

fn spec(g: &Grant) -> GrantSpec {
    GrantSpec {
        permission: permission_name(g.permission).to_string(),
        target: g.target.clone(),
    }
}

/// The identity and grant of a grant or revoke request, checked and normalized.
fn grant_of(identity: &str, spec: Option<GrantSpec>) -> Result<Grant, Status> {
    if let Some(p) = identity_problem(identity) {
        return Err(Status::invalid_argument(p));
    }
    let spec = spec.ok_or_else(|| Status::invalid_argument("a grant is needed: a permission and a target"))?;
    let permission = parse_permission(&spec.permission).ok_or_else(|| {
        Status::invalid_argument(format!(
            "unknown permission {:?}: one of admin, read, write, kv-read, kv-write",
            spec.permission
        ))
    })?;
    normalize(&Grant {
        permission,
        target: spec.target,
    })
    .map_err(Status::invalid_argument)
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn who_am_i(&self, request: Request<WhoAmIRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        let c = caller(&request)?;
        let st = self.authz.state();
        Ok(Response::new(WhoAmIResponse {
            admin: st.is_admin(&c.identity),
            grants: st.grants.get(&c.identity).into_iter().flatten().map(spec).collect(),
            identity: c.identity,
        }))
    }

    async fn grant(&self, request: Request<GrantRequest>) -> Result<Response<GrantResponse>, Status> {
        let r = request.get_ref();
        let call = self
            .authz
            .admin(&request, "Auth/Grant", grant_target(&r.identity, &r.grant))?;
        let r = request.into_inner();
        let res = self
            .change(r.identity, r.grant, r.request_id, |identity, grant| {
                AuthCommand::Grant { identity, grant }
            })
            .await;
        call.done(res).map(|()| Response::new(GrantResponse {}))
    }

    async fn revoke(&self, request: Request<RevokeRequest>) -> Result<Response<GrantResponse>, Status> {
        let r = request.get_ref();
        let call = self
            .authz
            .admin(&request, "Auth/Revoke", grant_target(&r.identity, &r.grant))?;
        let r = request.into_inner();
        let res = self
            .change(r.identity, r.grant, r.request_id, |identity, grant| {
                AuthCommand::Revoke { identity, grant }
            })
            .await;
        call.done(res).map(|()| Response::new(GrantResponse {}))
    }

    async fn list_grants(&self, request: Request<ListGrantsRequest>) -> Result<Response<ListGrantsResponse>, Status> {
        self.authz
            .require(&request, "Auth/ListGrants", crate::raft::auth::Need::Admin)?;
        self.front.linearize().await?;
        let st = self.authz.state();
        Ok(Response::new(ListGrantsResponse {
            identities: st
                .grants
                .iter()
                .map(|(id, g)| IdentityGrants {
                    identity: id.clone(),
                    grants: g.iter().map(spec).collect(),
                })
                .collect(),
            locked: st.locked,
            bootstrap_admin: BOOTSTRAP_ADMIN.to_string(),
        }))
    }

    async fn lockdown(&self, request: Request<LockdownRequest>) -> Result<Response<GrantResponse>, Status> {
        let call = self.authz.admin(&request, "Auth/Lockdown", "")?;
        let r = request.into_inner();
        let res = self.write(r.request_id, AuthCommand::Lockdown).await;
        call.done(res).map(|()| Response::new(GrantResponse {}))
    }

    async fn audit_tail(&self, request: Request<AuditTailRequest>) -> Result<Response<AuditTailResponse>, Status> {
        self.authz
            .require(&request, "Auth/AuditTail", crate::raft::auth::Need::Admin)?;
        let n = match request.get_ref().lines {
            0 => TAIL_LINES_DEFAULT,
            n => n,
        };
        let log = self.authz.audit_log();
        let lines = tokio::task::block_in_place(|| log.tail(n as usize))
            .map_err(|e| Status::internal(format!("reading the audit log: {e}")))?;
        Ok(Response::new(AuditTailResponse {
            lines,
            node_id: self.node,
        }))
    }
}
