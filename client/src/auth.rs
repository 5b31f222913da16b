//! Grants and the audit log: who am I, grant, revoke, list, lock down, audit tail.
//! Everything but [`ArkClient::who_am_i`] needs an admin identity.

use ark_proto::v1::auth_client::AuthClient;
use ark_proto::v1::{AuditTailRequest, GrantRequest, ListGrantsRequest, LockdownRequest, RevokeRequest, WhoAmIRequest};

use crate::client::{new_request_id, one_attempt_error, ArkClient};
use crate::error::ClientError;
use crate::types::auth::{AuditTail, Grant, Grants, WhoAmI};

impl ArkClient {
    /// Who the cluster thinks this client is, and its grants.
    pub async fn who_am_i(&self) -> Result<WhoAmI, ClientError> {
        Ok(self
            .call_any(|ch| async move { AuthClient::new(ch).who_am_i(WhoAmIRequest {}).await })
            .await?
            .into_inner()
            .into())
    }

    /// Gives `identity` a grant (in force on each node once that node has applied it).
    pub async fn grant(&self, identity: &str, grant: Grant) -> Result<(), ClientError> {
        let req = GrantRequest {
            identity: identity.to_string(),
            grant: Some(grant.into()),
            request_id: new_request_id(),
        };
        self.call(|ch| {
            let req = req.clone();
            async move { AuthClient::new(ch).grant(req).await }
        })
        .await?;
        Ok(())
    }

    /// Takes a grant away.
    pub async fn revoke(&self, identity: &str, grant: Grant) -> Result<(), ClientError> {
        let req = RevokeRequest {
            identity: identity.to_string(),
            grant: Some(grant.into()),
            request_id: new_request_id(),
        };
        self.call(|ch| {
            let req = req.clone();
            async move { AuthClient::new(ch).revoke(req).await }
        })
        .await?;
        Ok(())
    }

    /// Every identity's grants (linearizable: as the leader has them).
    pub async fn list_grants(&self) -> Result<Grants, ClientError> {
        Ok(self
            .call(|ch| async move { AuthClient::new(ch).list_grants(ListGrantsRequest {}).await })
            .await?
            .into_inner()
            .into())
    }

    /// Locks the cluster down: only identities with an explicit admin grant stay admins.
    pub async fn lockdown(&self) -> Result<(), ClientError> {
        let request_id = new_request_id();
        self.call(|ch| {
            let req = LockdownRequest {
                request_id: request_id.clone(),
            };
            async move { AuthClient::new(ch).lockdown(req).await }
        })
        .await?;
        Ok(())
    }

    /// The newest `lines` of the audit log of the node at `addr` (each node keeps its own).
    pub async fn audit_tail(&self, addr: &str, lines: u32) -> Result<AuditTail, ClientError> {
        let ch = self.channel(addr)?;
        AuthClient::new(ch)
            .audit_tail(AuditTailRequest { lines })
            .await
            .map(|r| r.into_inner().into())
            .map_err(|st| one_attempt_error(addr, &st))
    }
}
