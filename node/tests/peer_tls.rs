//! The peer transport accepts only peers whose certificate the cluster CA signed, and
//! carries requests between nodes that it does accept.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::sync::Arc;
use std::time::Duration;

use ark_node::net::{NetError, PeerEndpoint, PeerHandler, PeerPool, TlsMaterial, PEER_UDP_PAYLOAD_MAX};
use ark_proto::v1::{peer_response, PeerRequest, PeerResponse};

struct Echo;

impl PeerHandler for Echo {
    async fn handle(&self, req: PeerRequest) -> PeerResponse {
        PeerResponse {
            body: Some(peer_response::Body::Failure(format!("echo from {}", req.from))),
        }
    }
}

fn node_tls(ca_dir: &std::path::Path, id: u64) -> TlsMaterial {
    let (cert, key) = ark_playground::certs::create_node(ca_dir, ca_dir, id, &[]).unwrap();
    TlsMaterial::load(&ca_dir.join("ca.pem"), &cert, &key).unwrap()
}

/// Node 1 of the cluster whose CA is in `ca_dir`, answering every request with [`Echo`].
struct EchoServer {
    endpoint: PeerEndpoint,
    addr: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    fn start(ca_dir: &std::path::Path) -> Self {
        let endpoint = PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), &node_tls(ca_dir, 1)).unwrap();
        let addr = endpoint.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let srv = endpoint.clone();
        let task = tokio::spawn(async move {
            srv.serve(Arc::new(Echo), async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            endpoint,
            addr,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.endpoint.close();
        let _ = self.task.await;
    }
}

fn request() -> PeerRequest {
    PeerRequest {
        from: 2,
        raft_codec: 1,
        body: None,
    }
}

#[tokio::test]
async fn peers_signed_by_the_cluster_ca_talk_and_others_are_refused() {
    let cluster = tempfile::tempdir().unwrap();
    let rogue = tempfile::tempdir().unwrap();
    ark_playground::certs::create_ca(cluster.path()).unwrap();
    ark_playground::certs::create_ca(rogue.path()).unwrap();

    let server = EchoServer::start(cluster.path());
    let addr = server.addr.clone();

    // A peer of the same cluster gets an answer.
    let good = PeerPool::new(PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), &node_tls(cluster.path(), 2)).unwrap());
    let resp = good.call(1, &addr, &request(), Duration::from_secs(5)).await.unwrap();
    assert_eq!(resp.body, Some(peer_response::Body::Failure("echo from 2".into())));

    // A peer whose certificate another CA signed is refused during the handshake.
    let bad = PeerPool::new(PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), &node_tls(rogue.path(), 2)).unwrap());
    let err = bad
        .call(1, &addr, &request(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(err, NetError::Unreachable { .. } | NetError::Io { .. }),
        "{err}"
    );

    // A peer that dials node 1 but reaches a server that is not node 1 is refused too: the
    // certificate of node 1 does not carry the name node-3.
    let err = good
        .call(3, &addr, &request(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Unreachable { .. }), "{err}");

    server.stop().await;
}

fn request_from(from: u64) -> PeerRequest {
    PeerRequest { from, ..request() }
}

fn refused(resp: &PeerResponse) -> bool {
    matches!(&resp.body, Some(peer_response::Body::Failure(m)) if m.starts_with("refused:"))
}

#[tokio::test]
async fn the_peer_plane_speaks_only_to_nodes_and_believes_only_their_certificates() {
    let cluster = tempfile::tempdir().unwrap();
    ark_playground::certs::create_ca(cluster.path()).unwrap();
    let server = EchoServer::start(cluster.path());
    let addr = server.addr.clone();

    // A client certificate of the same CA (the playground's client.pem) is refused in the
    // handshake: it is not a node certificate.
    let (cert, key) = ark_playground::certs::create_client(cluster.path(), cluster.path(), "client").unwrap();
    let client_tls = TlsMaterial::load(&cluster.path().join("ca.pem"), &cert, &key).unwrap();
    let intruder = PeerPool::new(PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), &client_tls).unwrap());
    let err = intruder
        .call(1, &addr, &request_from(4242), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(err, NetError::Unreachable { .. } | NetError::Io { .. }),
        "{err}"
    );

    // Node 2 claiming to be node 4242 is refused, and so is a later request on the same
    // connection claiming another node; its own id is answered.
    let node2 =
        PeerPool::new(PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), &node_tls(cluster.path(), 2)).unwrap());
    let resp = node2
        .call(1, &addr, &request_from(4242), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(refused(&resp), "{resp:?}");
    let resp = node2
        .call(1, &addr, &request_from(2), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(resp.body, Some(peer_response::Body::Failure("echo from 2".into())));
    let resp = node2
        .call(1, &addr, &request_from(3), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(refused(&resp), "{resp:?}");
    server.stop().await;
}

#[tokio::test]
async fn on_loopback_peers_discover_datagrams_larger_than_ethernet_allows() {
    // Path MTU discovery may go past quinn's default 1452 bytes up to PEER_UDP_PAYLOAD_MAX;
    // loopback (MTU 65536) allows all of it, so bulk transfers there take fewer datagrams.
    // Above 1500 no Ethernet path could carry them. (In a network namespace whose loopback
    // has MTU 1500, discovery stops at 1466 of the 1472 bytes IPv4 allows, and this fails.)
    let cluster = tempfile::tempdir().unwrap();
    ark_playground::certs::create_ca(cluster.path()).unwrap();
    let server = EchoServer::start(cluster.path());
    let addr = server.addr.clone();
    let pool = PeerPool::new(PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), &node_tls(cluster.path(), 2)).unwrap());
    let mut mtu = 0;
    // Discovery is a binary search, one probe per round trip: well under a second here.
    for _ in 0..100 {
        pool.call(1, &addr, &request(), Duration::from_secs(5)).await.unwrap();
        let links = pool.link_stats().snapshot();
        mtu = links.iter().filter_map(|l| l.conn).map(|c| c.mtu).max().unwrap_or(0);
        if mtu >= PEER_UDP_PAYLOAD_MAX - 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        mtu > 1500 && mtu <= PEER_UDP_PAYLOAD_MAX,
        "path MTU after discovery on loopback: {mtu}"
    );
    server.stop().await;
}

#[test]
fn pem_files_without_the_expected_item_or_with_bad_pem_are_clear_errors() {
    let cluster = tempfile::tempdir().unwrap();
    ark_playground::certs::create_ca(cluster.path()).unwrap();
    let (cert, key) = ark_playground::certs::create_node(cluster.path(), cluster.path(), 1, &[]).unwrap();
    let ca = cluster.path().join("ca.pem");
    assert!(TlsMaterial::load(&ca, &cert, &key).is_ok());
    // A certificate where the key should be: no private key in it.
    let err = TlsMaterial::load(&ca, &cert, &cert).unwrap_err().to_string();
    assert!(
        err.contains("contains no PEM private key") && err.contains("ark certs"),
        "{err}"
    );
    // A section that never ends.
    let broken = cluster.path().join("broken.pem");
    let text = std::fs::read_to_string(&cert).unwrap();
    std::fs::write(&broken, &text[..text.len() / 2]).unwrap();
    let err = TlsMaterial::load(&ca, &broken, &key).unwrap_err().to_string();
    assert!(err.contains("cannot read certificate"), "{err}");
}
