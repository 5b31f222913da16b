//! A node's per-peer byte counters (`LinkStats`, the source of the telemetry's
//! `link_*_bytes_per_second:P` and `net_bytes_per_second`) count every byte it exchanges
//! with a peer: on both lanes (control and bulk connections) and on connections either side
//! dialled, not only the connection its latest call used.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::sync::Arc;
use std::time::Duration;

use ark_node::net::{PeerEndpoint, PeerHandler, PeerPool, TlsMaterial};
use ark_proto::v1::{peer_request::Body, peer_response, ChunkGet, ChunkPut, PeerRequest, PeerResponse};
use bytes::Bytes;

/// Chunk bytes node 1 puts on node 2 (bulk lane, a connection node 1 dials).
const PUT_BYTES: usize = 1 << 20;
/// Chunk bytes node 2 serves to node 1's get (bulk lane, the answer on node 1's connection).
const GET_BYTES: usize = 3 << 19;
/// Chunk bytes node 2 puts on node 1 (a connection node 2 dials, which node 1 accepted).
const PUT_BACK_BYTES: usize = 2 << 20;

/// Serves `GET_BYTES` for a chunk get and a short failure text for anything else.
struct Store;

impl PeerHandler for Store {
    async fn handle(&self, req: PeerRequest) -> PeerResponse {
        let body = match req.body {
            Some(Body::ChunkGet(_)) => peer_response::Body::ChunkData(Bytes::from(vec![7u8; GET_BYTES])),
            _ => peer_response::Body::Failure("noted".into()),
        };
        PeerResponse { body: Some(body) }
    }
}

fn node_tls(ca_dir: &std::path::Path, id: u64) -> TlsMaterial {
    let (cert, key) = ark_playground::certs::create_node(ca_dir, ca_dir, id, &[]).unwrap();
    TlsMaterial::load(&ca_dir.join("ca.pem"), &cert, &key).unwrap()
}

/// One node: its endpoint serving [`Store`] and the pool it calls peers with.
struct Node {
    endpoint: PeerEndpoint,
    pool: PeerPool,
    addr: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    fn start(ca_dir: &std::path::Path, id: u64) -> Self {
        let endpoint = PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), &node_tls(ca_dir, id)).unwrap();
        let addr = endpoint.local_addr().unwrap().to_string();
        let pool = PeerPool::new(endpoint.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let srv = endpoint.clone();
        let task = tokio::spawn(async move {
            srv.serve(Arc::new(Store), async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            endpoint,
            pool,
            addr,
            stop,
            task,
        }
    }

    /// (tx, rx) bytes of the link to `peer`, and how many links there are.
    fn bytes_to(&self, peer: u64) -> ((u64, u64), usize) {
        let snap = self.pool.link_stats().snapshot();
        let l = snap.iter().find(|l| l.peer == peer).unwrap();
        ((l.tx_bytes_total, l.rx_bytes_total), snap.len())
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.endpoint.close();
        let _ = self.task.await;
    }
}

fn req(from: u64, body: Body) -> PeerRequest {
    PeerRequest {
        from,
        raft_codec: 1,
        body: Some(body),
    }
}

fn put(len: usize) -> Body {
    Body::ChunkPut(ChunkPut {
        id: vec![1; 32],
        data: Bytes::from(vec![3u8; len]),
        compress: false,
    })
}

#[tokio::test]
async fn link_bytes_count_both_lanes_and_accepted_connections() {
    let ca = tempfile::tempdir().unwrap();
    ark_playground::certs::create_ca(ca.path()).unwrap();
    let one = Node::start(ca.path(), 1);
    let two = Node::start(ca.path(), 2);
    let t = Duration::from_secs(10);

    // Node 1: a control call, the bulk transfers, then control calls again, as Raft
    // heartbeats keep doing while chunks move: the latest call is on the control lane.
    let vote = req(1, Body::Vote(vec![0; 64]));
    one.pool.call(2, &two.addr, &vote, t).await.unwrap();
    one.pool.call(2, &two.addr, &req(1, put(PUT_BYTES)), t).await.unwrap();
    let got = one
        .pool
        .call(2, &two.addr, &req(1, Body::ChunkGet(ChunkGet { id: vec![1; 32] })), t)
        .await
        .unwrap();
    assert!(matches!(got.body, Some(peer_response::Body::ChunkData(d)) if d.len() == GET_BYTES));
    // Node 2 puts a chunk on node 1 over a connection node 2 dials: node 1 only accepts it.
    two.pool
        .call(1, &one.addr, &req(2, put(PUT_BACK_BYTES)), t)
        .await
        .unwrap();
    for _ in 0..3 {
        one.pool.call(2, &two.addr, &vote, t).await.unwrap();
    }

    let ((tx1, rx1), links1) = one.bytes_to(2);
    assert_eq!(links1, 1, "one entry per peer, not per connection");
    assert!(
        tx1 >= PUT_BYTES as u64,
        "node 1 sent a {PUT_BYTES}-byte chunk on the bulk lane but counts {tx1} bytes sent"
    );
    assert!(
        rx1 >= (GET_BYTES + PUT_BACK_BYTES) as u64,
        "node 1 received {GET_BYTES} chunk bytes on its bulk connection and {PUT_BACK_BYTES} on \
         an accepted one but counts {rx1} bytes received"
    );

    // Both ends count the same frames: what one sent the other received. A served answer is
    // counted once quinn took it, which may be just after the caller has read it, so wait
    // (bounded) for the two ends to agree.
    let mut agreed = None;
    for _ in 0..100 {
        let (a, _) = one.bytes_to(2);
        let ((tx2, rx2), links2) = two.bytes_to(1);
        assert_eq!(links2, 1, "one entry per peer, not per connection");
        if a == (rx2, tx2) {
            agreed = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (a, b) = (one.bytes_to(2).0, two.bytes_to(1).0);
    assert!(
        agreed.is_some(),
        "node 1 counts (tx, rx) = {a:?} with node 2, node 2 counts {b:?} with node 1"
    );

    one.stop().await;
    two.stop().await;
}
