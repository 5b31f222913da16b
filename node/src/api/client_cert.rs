//! The client plane's rule on certificates: callers present client certificates; a node
//! certificate (see `net::tls`) is refused unless the operator opted in with
//! `tls.allow_node_clients`, so a node's key, stolen or misused, is not also a client's.
//!
//! Owns that one check, run before every RPC. Must not touch what a caller may do once
//! admitted.

use tonic::{Request, Status};

use crate::net::live::Live;
use crate::net::tls::NodeIdentity;

/// The check, as a tonic interceptor for every service of the client plane.
#[derive(Clone, Debug)]
pub struct ClientCertRule {
    /// The peer plane's check, replaced on a certificate reload (a new CA's node
    /// certificates are node certificates too).
    nodes: Live<NodeIdentity>,
    allow_node_clients: bool,
}

impl ClientCertRule {
    /// Refuses node certificates of the cluster whose nodes `nodes` recognises, unless
    /// `allow_node_clients`.
    pub fn new(nodes: Live<NodeIdentity>, allow_node_clients: bool) -> Self {
        Self {
            nodes,
            allow_node_clients,
        }
    }

    /// Admits or refuses one call.
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        if self.allow_node_clients {
            return Ok(req);
        }
        if let Some(chain) = super::peer::peer_chain(&req) {
            if self.nodes.get().is_node(&chain) {
                metrics::counter!("ark_client_node_certificates_refused_total").increment(1);
                return Err(Status::permission_denied(
                    "a node certificate is not a client certificate: use one made with `ark certs client NAME` \
                     (or set tls.allow_node_clients = true on the nodes)",
                ));
            }
        }
        Ok(req)
    }
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at start-up by
/// `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::describe_counter;
    describe_counter!(
        "ark_client_node_certificates_refused_total",
        "Client API calls refused because they came with a node certificate (tls.allow_node_clients is off)."
    );
}
