//! Reads a checkpoint back and proves it is the one that was stored: the expected SHA-256
//! is taken from the namespace listing and handed to the SDK, which refuses a different
//! object before writing a byte and re-hashes every byte it writes; the file then appears
//! only once verified. The example hashes the file once more itself, as a paranoid reader
//! would.
//!
//! ```sh
//! cargo run -p ark-client --example read_verified -- CLIENT_TOML NAMESPACE/KEY OUT_FILE
//! ```

use std::path::Path;

use ark_client::objects::{hex, GetOptions};
use ark_client::{ArkClient, ClientConfig, ListObjectsOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, config, source, out] = args.as_slice() else {
        return Err("usage: read_verified CLIENT_TOML NAMESPACE/KEY OUT_FILE".into());
    };
    let (ns, key) = source.split_once('/').ok_or("the source is NAMESPACE/KEY")?;
    let client = ArkClient::new(&ClientConfig::load(config.as_ref())?)?;

    let listing = ListObjectsOptions {
        prefix: key.to_string(),
        ..ListObjectsOptions::default()
    };
    let (objects, _) = client.list_objects(ns, &listing).await?;
    let listed = objects
        .into_iter()
        .find(|o| o.key == *key)
        .ok_or_else(|| format!("{ns}/{key} is not in the listing"))?;

    let opts = GetOptions {
        version: listed.version,
        expect_sha256: Some(listed.sha256.clone()),
        ..GetOptions::default()
    };
    let got = client.get_object_to_file(ns, key, Path::new(out), &opts).await?;

    let bytes = std::fs::read(out)?;
    let local = ring::digest::digest(&ring::digest::SHA256, &bytes);
    if local.as_ref() != listed.sha256.as_slice() {
        return Err(format!("{out} does not hash to the listed sha256 {}", hex(&listed.sha256)).into());
    }
    println!(
        "{ns}/{key} version {} -> {out}: {} bytes, sha256 {} (checked by the SDK and again here)",
        got.version,
        bytes.len(),
        hex(local.as_ref())
    );
    Ok(())
}
