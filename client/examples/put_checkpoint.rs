//! Puts a checkpoint file into Ark with progress reporting, the way a training job would.
//!
//! ```sh
//! cargo run -p ark-client --example put_checkpoint -- CLIENT_TOML NAMESPACE/KEY FILE
//! # e.g. against a playground: ark playground up --dir /tmp/pg && ark --config /tmp/pg/client.toml ns create ckpt
//! cargo run -p ark-client --example put_checkpoint -- /tmp/pg/client.toml ckpt/model-0001.bin model.bin
//! ```
//!
//! Progress comes from the SDK's callback ([`PutOptions::progress`]); a terminal UI would
//! draw a bar from the same numbers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ark_client::objects::{hex, PutOptions, PutSource};
use ark_client::{ArkClient, ClientConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, config, target, file] = args.as_slice() else {
        return Err("usage: put_checkpoint CLIENT_TOML NAMESPACE/KEY FILE".into());
    };
    let (ns, key) = target
        .split_once('/')
        .ok_or("the target is NAMESPACE/KEY, e.g. ckpt/model-0001.bin")?;
    let client = ArkClient::new(&ClientConfig::load(config.as_ref())?)?;

    // Report every 10% step once; the callback runs on the SDK's task, so it stays cheap.
    let last_step = Arc::new(AtomicU64::new(u64::MAX));
    let label = target.clone();
    let opts = PutOptions {
        progress: Some(Arc::new(move |sent: u64, total: Option<u64>| {
            let Some(total) = total.filter(|t| *t > 0) else {
                return;
            };
            let step = sent * 10 / total;
            if last_step.swap(step, Ordering::Relaxed) != step {
                eprintln!("{label}: {sent} of {total} bytes ({}%)", step * 10);
            }
        })),
        ..PutOptions::default()
    };
    let put = client
        .put_object(ns, key, PutSource::File(PathBuf::from(file)), &opts)
        .await?;
    println!(
        "{ns}/{key} version {}: {} bytes, sha256 {} ({} attempt(s))",
        put.object.version,
        put.object.size,
        hex(&put.object.sha256),
        put.attempts
    );
    Ok(())
}
