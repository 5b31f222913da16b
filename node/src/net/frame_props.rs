//! Property tests of the peer framing and the protobuf envelope: whatever bytes a peer sends,
//! [`read_frame`] and the `PeerRequest`/`PeerResponse` decoders give a value or an error,
//! never a panic, and a frame longer than [`FRAME_BYTES_MAX`] is refused from its header.
//! Valid frames (built the way [`PeerPool::call`] builds them) round-trip.
//!
//! Allocation bounds are checked in `node/tests/decode_alloc.rs` (one counting allocator per
//! test binary). `scripts/fuzz-decoders.sh` runs these with millions of cases.

#![allow(clippy::unwrap_used)]

use ark_proto::v1::{PeerRequest, PeerResponse};
use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;

use super::{encode_request, encode_response, read_frame, FRAME_BYTES_MAX};
use crate::damage_props::{damage, Damage};

/// One frame as it goes on the wire: the length, then the pieces joined.
fn frame(parts: Vec<Bytes>) -> Vec<u8> {
    let body = parts.concat();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn read(bytes: &[u8]) -> anyhow::Result<Bytes> {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut r = bytes;
    rt.block_on(read_frame(&mut r))
}

fn blob(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn ids() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(blob(40), 0..8)
}

fn arb_request() -> impl Strategy<Value = PeerRequest> {
    use ark_proto::v1::peer_request::Body;
    use ark_proto::v1::*;
    let body = prop_oneof![
        blob(512).prop_map(Body::AppendEntries),
        blob(64).prop_map(Body::Vote),
        blob(512).prop_map(Body::InstallSnapshot),
        ids().prop_map(|ids| Body::ChunkHave(ChunkIds {
            ids,
            presence_only: false
        })),
        (blob(40), blob(4096), any::<bool>()).prop_map(|(id, data, compress)| Body::ChunkPut(ChunkPut {
            id,
            data: data.into(),
            compress
        })),
        blob(40).prop_map(|id| Body::ChunkGet(ChunkGet { id })),
        ids().prop_map(|ids| Body::ChunkVerify(ChunkIds {
            ids,
            presence_only: false
        })),
        (
            ids(),
            proptest::collection::vec((any::<u64>(), ".{0,20}"), 0..4),
            any::<bool>()
        )
            .prop_map(|(ids, sources, compress)| Body::ChunkPull(ChunkPull {
                ids,
                sources: sources.into_iter().map(|(id, addr)| PeerAddr { id, addr }).collect(),
                compress
            })),
        blob(256).prop_map(Body::ForwardWrite),
        Just(Body::ScrubRun(ScrubRun {})),
        Just(Body::ReadIndex(ReadIndex {})),
        Just(Body::NsLag(NsLag {})),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec((".{0,24}", -1e12f64..1e12), 0..6),
            proptest::collection::vec((".{0,8}", ".{0,8}", -1e12f64..1e12), 0..4)
        )
            .prop_map(
                |(node_id, sampled_at_unix_ms, samples, hot)| Body::Telemetry(TelemetryReport {
                    node_id,
                    sampled_at_unix_ms,
                    samples: samples
                        .into_iter()
                        .map(|(series, value)| TelemetrySample { series, value })
                        .collect(),
                    hot: hot
                        .into_iter()
                        .map(|(namespace, key, reads)| HotObject { namespace, key, reads })
                        .collect(),
                })
            ),
        proptest::collection::vec((".{0,8}", ".{0,8}"), 0..4).prop_map(|o| Body::Prestage(Prestage {
            objects: o
                .into_iter()
                .map(|(namespace, key)| ObjectRef { namespace, key })
                .collect()
        })),
    ];
    (any::<u64>(), 0i32..3, proptest::option::weighted(0.95, body)).prop_map(|(from, raft_codec, body)| PeerRequest {
        from,
        raft_codec,
        body,
    })
}

fn arb_response() -> impl Strategy<Value = PeerResponse> {
    use ark_proto::v1::peer_response::Body;
    use ark_proto::v1::*;
    let body = prop_oneof![
        blob(512).prop_map(Body::Ok),
        blob(128).prop_map(Body::RaftError),
        ".{0,40}".prop_map(Body::Failure),
        ids().prop_map(|ids| Body::ChunkIds(ChunkIds {
            ids,
            presence_only: false
        })),
        blob(4096).prop_map(|d| Body::ChunkData(d.into())),
        proptest::collection::vec(0i32..4, 0..16).prop_map(|states| Body::ChunkStates(ChunkStates { states })),
        any::<[u64; 5]>().prop_map(|[a, b, c, d, e]| Body::Scrub(ScrubResult {
            chunks_checked: a,
            bytes_checked: b,
            corrupt: c,
            missing: d,
            repaired: e
        })),
        ".{0,40}".prop_map(Body::DiskFull),
        ".{0,40}".prop_map(Body::ChunkUnavailable),
        any::<u32>().prop_map(|points_stored| Body::TelemetryAck(TelemetryAck { points_stored })),
        (any::<[u32; 4]>(), any::<u64>()).prop_map(|([fetched, cached, local, failed], bytes_fetched)| {
            Body::PrestageAck(PrestageAck {
                fetched,
                cached,
                local,
                failed,
                bytes_fetched,
            })
        }),
    ];
    proptest::option::weighted(0.95, body).prop_map(|body| PeerResponse { body })
}

/// A valid encoding changed the way damage or a hostile peer would change it: overwrites
/// put varints at their widest (a length field set huge inside the protobuf body).
fn arb_mutation() -> impl Strategy<Value = Damage> {
    crate::damage_props::arb_damage(prop_oneof![
        blob(8),
        Just(vec![0xff; 10]),
        Just(vec![0xff, 0xff, 0xff, 0xff, 0x0f]),
        Just(vec![0x80, 0x80, 0x80, 0x80, 0x20])
    ])
}

/// Reads a frame and decodes it both ways, as the endpoint and a caller do. Panics only if a
/// decoder does (or if `read_frame` accepts a frame over the limit).
fn read_and_decode(bytes: &[u8]) {
    if let Ok(body) = read(bytes) {
        assert!(body.len() <= FRAME_BYTES_MAX);
        let announced = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        assert_eq!(body.len(), announced, "a frame is exactly as long as its header says");
        let _ = PeerRequest::decode(body.clone());
        let _ = PeerResponse::decode(body);
    }
}

proptest! {
    #[test]
    fn random_bytes_are_a_frame_or_an_error(bytes in blob(2048)) {
        read_and_decode(&bytes);
    }

    #[test]
    fn random_bodies_decode_or_fail(bytes in blob(2048)) {
        let _ = PeerRequest::decode(bytes.as_slice());
        let _ = PeerResponse::decode(bytes.as_slice());
    }

    #[test]
    fn requests_round_trip_through_a_frame(req in arb_request()) {
        let bytes = frame(encode_request(&req));
        let body = read(&bytes).unwrap();
        prop_assert_eq!(PeerRequest::decode(body).unwrap(), req);
    }

    #[test]
    fn responses_round_trip_through_a_frame(resp in arb_response()) {
        let bytes = frame(encode_response(&resp));
        let body = read(&bytes).unwrap();
        prop_assert_eq!(PeerResponse::decode(body).unwrap(), resp);
    }

    #[test]
    fn mutated_request_frames_are_a_value_or_an_error(req in arb_request(), m in arb_mutation()) {
        read_and_decode(&damage(frame(encode_request(&req)), &m));
        // The body alone too: a mutation of the length prefix above mostly ends in a short read.
        let body = encode_request(&req).concat();
        let _ = PeerRequest::decode(damage(body, &m).as_slice());
    }

    #[test]
    fn mutated_response_frames_are_a_value_or_an_error(resp in arb_response(), m in arb_mutation()) {
        read_and_decode(&damage(frame(encode_response(&resp)), &m));
        let body = encode_response(&resp).concat();
        let _ = PeerResponse::decode(damage(body, &m).as_slice());
    }

    #[test]
    fn a_frame_cut_short_is_an_error(req in arb_request(), cut in any::<usize>()) {
        let bytes = frame(encode_request(&req));
        let keep = cut % bytes.len();
        prop_assert!(read(&bytes[..keep]).is_err());
    }

    #[test]
    fn a_length_over_the_limit_is_refused_from_the_header(
        len in (FRAME_BYTES_MAX as u32 + 1)..=u32::MAX,
        rest in blob(64),
    ) {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&rest);
        let err = read(&bytes).unwrap_err().to_string();
        prop_assert!(err.contains("over the limit"), "{}", err);
    }
}
