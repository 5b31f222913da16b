//! `ark kv`: small linearizable key/value records (put, get, del, ls).

use std::process::ExitCode;

use ark_client::ArkClient;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum KvCmd {
    /// Write a value.
    Put {
        /// Key (non-empty, at most 1024 bytes).
        key: String,
        /// Value (at most 64 KiB).
        value: String,
    },
    /// Read a value (linearizable unless --stale).
    Get {
        /// Key.
        key: String,
        /// Read this node's replica without confirming leadership.
        #[arg(long)]
        stale: bool,
    },
    /// Delete a key.
    Del {
        /// Key.
        key: String,
    },
    /// List keys with a prefix.
    Ls {
        /// Prefix (empty: all keys).
        #[arg(default_value = "")]
        prefix: String,
        /// Also print values.
        #[arg(long)]
        values: bool,
        /// At most this many keys (0: all; they are fetched and printed page by page).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// Read this node's replica without confirming leadership.
        #[arg(long)]
        stale: bool,
    },
}

/// Runs one KV command.
pub async fn run(c: &ArkClient, k: &KvCmd) -> anyhow::Result<ExitCode> {
    match k {
        KvCmd::Put { key, value } => {
            let rev = c.put(key, value.as_bytes()).await?;
            outln!("OK revision {rev}");
        }
        KvCmd::Get { key, stale } => match c.get(key, &ark_client::ReadOptions { stale: *stale }).await? {
            Some(v) => outln!("{}", String::from_utf8_lossy(&v.value)),
            None => {
                eprintln!("key {key:?} not found");
                return Ok(ExitCode::from(1));
            }
        },
        KvCmd::Del { key } => {
            let existed = c.delete(key).await?;
            outln!(
                "{}",
                if existed {
                    "deleted"
                } else {
                    "not found (nothing deleted)"
                }
            );
        }
        KvCmd::Ls {
            prefix,
            values,
            limit,
            stale,
        } => {
            // Page by page, so that a long listing starts printing at once and is never
            // held whole in memory.
            let mut cursor = String::new();
            let mut printed = 0u32;
            loop {
                let page = c
                    .list_page(
                        prefix,
                        &ark_client::ListKeysOptions {
                            limit: limit.saturating_sub(printed),
                            stale: *stale,
                        },
                        &cursor,
                    )
                    .await?;
                for (k, v) in &page.items {
                    if *values {
                        outln!("{k}\t{}", String::from_utf8_lossy(&v.value));
                    } else {
                        outln!("{k}");
                    }
                }
                printed = printed.saturating_add(page.items.len() as u32);
                if page.more && (page.next_cursor.is_empty() || (*limit != 0 && printed >= *limit)) {
                    eprintln!("(more keys match; raise --limit)");
                }
                if page.next_cursor.is_empty() || (*limit != 0 && printed >= *limit) {
                    break;
                }
                if page.next_cursor == cursor {
                    anyhow::bail!("the node answered the page after {cursor:?} with the same cursor");
                }
                cursor = page.next_cursor;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
