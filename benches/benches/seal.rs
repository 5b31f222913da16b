//! Criterion bench of encryption at rest's CPU cost: sealing (HMAC-SHA256 synthetic nonce,
//! then AES-256-GCM) and opening one 1 MiB and one 4 MiB chunk (the chunker's average and
//! largest), and the SHA-256 chunk id every chunk costs anyway, for scale. CPU per GiB is
//! 1 GiB divided by the throughput criterion prints.
//!
//! `cargo bench -p ark-bench --bench seal` (numbers in docs/benchmarks.md).

use ark_node::chunks::chunk_id;
use ark_node::chunks::seal::{ChunkSealer, Secret};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

/// Incompressible bytes (a xorshift stream; no RNG dependency needed).
fn bytes(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn seal(c: &mut Criterion) {
    let sealer = ChunkSealer::new(&Secret::from_bytes([7; 32]), 1);
    for (name, len) in [("1MiB", 1 << 20), ("4MiB", 4 << 20)] {
        let plain = bytes(len);
        let sealed = match sealer.seal(&plain, false) {
            Ok(s) => s,
            Err(e) => panic!("sealing failed: {e}"),
        };
        let mut g = c.benchmark_group(format!("chunk_{name}"));
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function("seal", |b| b.iter(|| sealer.seal(black_box(&plain), false)));
        g.bench_function("open", |b| b.iter(|| sealer.open(black_box(&sealed))));
        g.bench_function("sha256_id", |b| b.iter(|| chunk_id(black_box(&plain))));
        g.finish();
    }
}

criterion_group!(benches, seal);
criterion_main!(benches);
