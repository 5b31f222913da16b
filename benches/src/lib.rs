//! Criterion micro-benchmarks and the cluster load generator live here. The KV load generator is `ark bench kv` in the client crate.
