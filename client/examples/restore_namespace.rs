//! Restores a whole namespace into a folder: the latest version of every live key, or the
//! state at a point in time (Unix milliseconds) when one is given.
//!
//! ```sh
//! cargo run -p ark-client --example restore_namespace -- CLIENT_TOML NAMESPACE DIR [AT_UNIX_MS]
//! ```
//!
//! Every object is verified (SHA-256) before it appears in DIR; objects that fail are
//! listed and the example exits non-zero.

use std::path::Path;
use std::process::ExitCode;

use ark_client::restore::{RestoreOptions, RestorePoint};
use ark_client::{ArkClient, ClientConfig};

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (config, ns, dir, at) = match args.as_slice() {
        [_, config, ns, dir] => (config, ns, dir, None),
        [_, config, ns, dir, at] => (config, ns, dir, Some(at.parse::<u64>()?)),
        _ => return Err("usage: restore_namespace CLIENT_TOML NAMESPACE DIR [AT_UNIX_MS]".into()),
    };
    let client = ArkClient::new(&ClientConfig::load(config.as_ref())?)?;
    let opts = RestoreOptions {
        point: at.map_or(RestorePoint::Latest, RestorePoint::At),
        ..RestoreOptions::default()
    };
    let report = client.restore_namespace(ns, Path::new(dir), &opts).await?;
    println!(
        "{ns} -> {dir}: {} of {} objects restored ({} bytes)",
        report.restored, report.selected, report.bytes
    );
    for f in &report.failed {
        eprintln!("  {} version {}: {}", f.key, f.version, f.error);
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
