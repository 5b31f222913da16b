//! Namespaces and their policy, both ways (policies are sent, namespaces received).

use ark_proto::v1 as pb;

use crate::types::{DurabilityMode, NamespaceInfo, NamespacePolicy};

/// The mode a wire value stands for; one this SDK does not know reads as
/// [`DurabilityMode::Unspecified`].
fn mode_from_wire(v: i32) -> DurabilityMode {
    match pb::DurabilityMode::try_from(v) {
        Ok(pb::DurabilityMode::Sync) => DurabilityMode::Sync,
        Ok(pb::DurabilityMode::Async) => DurabilityMode::Async,
        Ok(pb::DurabilityMode::Unspecified) | Err(_) => DurabilityMode::Unspecified,
    }
}

impl From<DurabilityMode> for pb::DurabilityMode {
    fn from(m: DurabilityMode) -> Self {
        match m {
            DurabilityMode::Unspecified => pb::DurabilityMode::Unspecified,
            DurabilityMode::Sync => pb::DurabilityMode::Sync,
            DurabilityMode::Async => pb::DurabilityMode::Async,
        }
    }
}

impl From<pb::NamespacePolicy> for NamespacePolicy {
    fn from(p: pb::NamespacePolicy) -> Self {
        Self {
            copies: p.copies,
            min_sites: p.min_sites,
            mode: mode_from_wire(p.mode),
            max_lag_ms: p.max_lag_ms,
            priority: p.priority,
            versions_kept: p.versions_kept,
            compress: p.compress,
        }
    }
}

impl From<NamespacePolicy> for pb::NamespacePolicy {
    fn from(p: NamespacePolicy) -> Self {
        Self {
            copies: p.copies,
            min_sites: p.min_sites,
            mode: pb::DurabilityMode::from(p.mode) as i32,
            max_lag_ms: p.max_lag_ms,
            priority: p.priority,
            versions_kept: p.versions_kept,
            compress: p.compress,
        }
    }
}

impl From<pb::Namespace> for NamespaceInfo {
    fn from(n: pb::Namespace) -> Self {
        Self {
            name: n.name,
            policy: n.policy.map(NamespacePolicy::from).unwrap_or_default(),
            objects: n.objects,
            bytes: n.bytes,
            behind: n.behind,
            lag_ms: n.lag_ms,
            encrypted: n.encrypted,
            key_generations: n.key_generations,
            kek_ids: n.kek_ids,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_survives_the_round_trip_through_the_wire_type() {
        for mode in [DurabilityMode::Unspecified, DurabilityMode::Sync, DurabilityMode::Async] {
            let p = NamespacePolicy {
                copies: 3,
                min_sites: 2,
                mode,
                max_lag_ms: 5,
                priority: 7,
                versions_kept: 4,
                compress: true,
            };
            assert_eq!(NamespacePolicy::from(pb::NamespacePolicy::from(p)), p);
        }
        assert_eq!(mode_from_wire(99), DurabilityMode::Unspecified);
    }
}
