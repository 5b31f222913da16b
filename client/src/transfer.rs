//! What every object transfer shares, below both ways of filling an upload: message sizes
//! and the stall limit, the progress callback, the object client, and an upload's request
//! stream with its whole-source producer ([`send_data`]) and the pieces the changed-file
//! producer ([`crate::delta`]) uses too (the queue with its stall limit, the bounded
//! reader, what was sent).
//!
//! Owns those primitives. Must not touch retries, endpoints or the delta protocol
//! (`objects.rs`, `delta.rs`, which both import from here).

use std::sync::Arc;
use std::time::Duration;

use ark_proto::v1::objects_client::ObjectsClient;
use ark_proto::v1::{put_object_request, PutObjectRequest};
use bytes::Bytes;
use futures::Stream;
use ring::digest;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::error::ClientError;

/// Bytes per data message of an upload (the node's own pieces are the same size).
pub const PUT_MESSAGE_BYTES: usize = 1024 * 1024;

/// Longest a transfer may go without progress (a message accepted by the transport on a
/// put, received on a get, or the first answer) before it is treated as a dead connection.
pub const TRANSFER_STALL_MAX: Duration = Duration::from_secs(30);

/// Largest message accepted from a node; the node's own encoding limit.
const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Called with the bytes transferred so far and the total when known. An upload that is
/// retried from the start reports from 0 again.
pub type Progress = Arc<dyn Fn(u64, Option<u64>) + Send + Sync>;

/// An object client on `ch` that accepts the node's largest messages.
pub(crate) fn objects(ch: Channel) -> ObjectsClient<Channel> {
    ObjectsClient::new(ch).max_decoding_message_size(MESSAGE_BYTES_MAX)
}

/// What an upload attempt sent.
#[derive(Debug)]
pub(crate) struct Sent {
    pub bytes: u64,
    pub sha256: Vec<u8>,
    /// Bytes named as chunks of the base version instead of being sent.
    pub reused: u64,
}

/// Why the producer of an upload stopped early.
pub(crate) enum Produce {
    /// The transport no longer takes messages (the RPC ended).
    Closed,
    /// The transport took nothing for [`TRANSFER_STALL_MAX`].
    Stalled,
    Fatal(ClientError),
}

/// Queues `msg` for the transport, waiting at most [`TRANSFER_STALL_MAX`].
pub(crate) async fn queue(
    tx: &mpsc::Sender<Option<PutObjectRequest>>,
    msg: Option<PutObjectRequest>,
) -> Result<(), Produce> {
    match tokio::time::timeout(TRANSFER_STALL_MAX, tx.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Produce::Closed),
        Err(_) => Err(Produce::Stalled),
    }
}

/// The request stream of an upload. It ends cleanly only at the explicit end marker
/// (`None`), which is queued only after the whole source was read and sent. If the sender
/// goes away without it (read error, cancelled attempt), the stream stays pending instead of
/// ending: a clean end would let the node commit a truncated upload of unannounced size. The
/// attempt's RPC is dropped at the same time, which resets the HTTP/2 stream.
pub(crate) fn upload_stream(
    rx: mpsc::Receiver<Option<PutObjectRequest>>,
) -> impl Stream<Item = PutObjectRequest> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Some(Some(m)) => Some((m, rx)),
            Some(None) => None,
            None => futures::future::pending().await,
        }
    })
}

/// Reads `source` in [`PUT_MESSAGE_BYTES`] messages, hashes and queues them, then queues the
/// end marker.
pub(crate) async fn send_data(
    tx: &mpsc::Sender<Option<PutObjectRequest>>,
    source: &mut (dyn AsyncRead + Send + Unpin),
    total: Option<u64>,
    touched: &mut bool,
    progress: Option<&Progress>,
) -> Result<Sent, Produce> {
    let queue = |msg| queue(tx, msg);
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut sent: u64 = 0;
    loop {
        let data = read_message(source)
            .await
            .map_err(|e| Produce::Fatal(ClientError::io("cannot read the upload source", e)))?;
        if data.is_empty() {
            break;
        }
        *touched = true;
        sent += data.len() as u64;
        if total.is_some_and(|t| sent > t) {
            return Err(Produce::Fatal(changed_while_sent(sent, total)));
        }
        ctx.update(&data);
        queue(Some(PutObjectRequest {
            part: Some(put_object_request::Part::Data(data)),
        }))
        .await?;
        if let Some(p) = progress {
            p(sent, total);
        }
    }
    if total.is_some_and(|t| sent != t) {
        return Err(Produce::Fatal(changed_while_sent(sent, total)));
    }
    queue(None).await?;
    Ok(Sent {
        bytes: sent,
        sha256: ctx.finish().as_ref().to_vec(),
        reused: 0,
    })
}

pub(crate) fn changed_while_sent(sent: u64, total: Option<u64>) -> ClientError {
    ClientError::InvalidArgument(format!(
        "the source changed while it was being uploaded ({}{sent} bytes read, {} announced); nothing was committed",
        if total.is_some_and(|t| sent > t) {
            "at least "
        } else {
            ""
        },
        total.unwrap_or_default()
    ))
}

/// Up to [`PUT_MESSAGE_BYTES`] from `source`, fewer only at its end; empty at its end.
async fn read_message(source: &mut (dyn AsyncRead + Send + Unpin)) -> std::io::Result<Bytes> {
    read_up_to(source, PUT_MESSAGE_BYTES).await.map(Bytes::from)
}

/// Up to `len` bytes from `source`, fewer only at its end; empty at its end.
pub(crate) async fn read_up_to(source: &mut (dyn AsyncRead + Send + Unpin), len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}
