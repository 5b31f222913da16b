//! Which nodes receive copies: a pure function of the current holders, the candidates, the
//! policy and a salt, so that it is easy to test and the same on every node.
//!
//! Rule: sites that hold no copy yet come first (so `min_sites` is met with the fewest
//! copies), one node per site in turn; once every site has a copy, further copies go to the
//! remaining nodes round-robin over the sites. Which site comes first and which node of a
//! site is taken are ranked by a hash of the salt with the site's name or the node's id
//! (rendezvous hashing), so copies spread over every node instead of piling onto the
//! lowest id of the first site, while one salt always gives the same answer. Callers salt
//! with what must land together: an object's namespace and key (every version of a key goes
//! to the same nodes, so unchanged chunks are already there), or a chunk's id.

use std::collections::{BTreeMap, BTreeSet};

use crate::raft::members::Peer;
use crate::raft::NodeId;

/// The salt for an object's copies: the same for every version of `ns`/`key`.
pub fn object_salt(ns: &str, key: &str) -> u64 {
    // FNV-1a: fixed across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ns.bytes().chain([0u8]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The salt for a chunk's copies: its id is already a uniform hash.
pub fn chunk_salt(id: &[u8]) -> u64 {
    id.iter().take(8).fold(0u64, |h, b| (h << 8) | u64::from(*b))
}

/// Rank of `x` under `salt` (splitmix64's finaliser: every input bit moves every output bit).
fn rank(salt: u64, x: u64) -> u64 {
    let mut z = salt ^ x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Picks up to `want` new nodes from `candidates` (nodes already in `holders` are skipped),
/// given the sites that already hold a copy; `salt` ranks sites and nodes (see the module
/// doc).
pub fn choose(
    holders_sites: &BTreeSet<String>,
    holders: &[NodeId],
    candidates: &[Peer],
    want: usize,
    salt: u64,
) -> Vec<Peer> {
    let mut by_site: BTreeMap<&str, Vec<&Peer>> = BTreeMap::new();
    for c in candidates {
        if !holders.contains(&c.id) {
            by_site.entry(c.site.as_str()).or_default().push(c);
        }
    }
    for nodes in by_site.values_mut() {
        // pop() takes the best-ranked node; the id breaks (improbable) ties.
        nodes.sort_by_key(|p| std::cmp::Reverse((rank(salt, p.id), p.id)));
    }
    let mut sites: Vec<(&str, Vec<&Peer>)> = by_site.into_iter().collect();
    // A site's name is hashed the way an object's is (with an empty key), then ranked.
    sites.sort_by_key(|(site, _)| (rank(salt, object_salt(site, "")), *site));
    let mut out: Vec<Peer> = Vec::new();
    let mut covered: BTreeSet<String> = holders_sites.clone();
    // First, one node in each site without a copy.
    for (site, nodes) in sites.iter_mut() {
        if out.len() == want {
            return out;
        }
        if !covered.contains(*site) {
            if let Some(p) = nodes.pop() {
                covered.insert(site.to_string());
                out.push(p.clone());
            }
        }
    }
    // Then round-robin over the sites for the remaining copies.
    loop {
        let mut progressed = false;
        for (_, nodes) in sites.iter_mut() {
            if out.len() == want {
                return out;
            }
            if let Some(p) = nodes.pop() {
                out.push(p.clone());
                progressed = true;
            }
        }
        if !progressed {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: NodeId, site: &str) -> Peer {
        Peer {
            id,
            site: site.into(),
            addr: format!("n{id}"),
        }
    }

    fn sites(s: &[&str]) -> BTreeSet<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn ids(v: &[Peer]) -> Vec<NodeId> {
        v.iter().map(|p| p.id).collect()
    }

    #[test]
    fn new_sites_come_first() {
        let c = [p(2, "a"), p(3, "b"), p(4, "b"), p(5, "c")];
        for salt in 0..200 {
            let got = choose(&sites(&["a"]), &[1], &c, 2, salt);
            let s: BTreeSet<&str> = got.iter().map(|p| p.site.as_str()).collect();
            assert_eq!(s, ["b", "c"].into_iter().collect(), "salt {salt}: {:?}", ids(&got));
        }
    }

    #[test]
    fn fills_remaining_copies_round_robin() {
        let c = [p(2, "a"), p(3, "b"), p(4, "b")];
        for salt in 0..200 {
            let got = choose(&sites(&["a"]), &[1], &c, 3, salt);
            // The uncovered site first, then one per site in turn: all three, b's first.
            assert_eq!(got.len(), 3);
            assert_eq!(got[0].site, "b", "salt {salt}");
            let mut all = ids(&got);
            all.sort();
            assert_eq!(all, vec![2, 3, 4]);
        }
    }

    #[test]
    fn skips_holders_and_stops_when_out_of_candidates() {
        let c = [p(1, "a"), p(2, "b")];
        assert_eq!(ids(&choose(&sites(&["a"]), &[1], &c, 5, 7)), vec![2]);
        assert!(choose(&sites(&[]), &[], &[], 2, 7).is_empty());
    }

    #[test]
    fn same_salt_same_answer_and_object_versions_share_a_salt() {
        let c = [p(1, "a"), p(2, "a"), p(3, "b"), p(4, "b"), p(5, "c"), p(6, "c")];
        let s = object_salt("ckpt", "model.bin");
        assert_eq!(s, object_salt("ckpt", "model.bin"));
        assert_ne!(s, object_salt("ckpt", "model.bi"));
        assert_ne!(object_salt("ab", "c"), object_salt("a", "bc"));
        assert_eq!(
            ids(&choose(&sites(&["a"]), &[1], &c, 2, s)),
            ids(&choose(&sites(&["a"]), &[1], &c, 2, s))
        );
    }

    #[test]
    fn copies_spread_over_every_node_of_a_site() {
        // Second copies of objects received by node 1: each node of sites b and c should
        // take about a quarter of them, not the lowest id of the first site all of them.
        let c = [p(2, "a"), p(3, "b"), p(4, "b"), p(5, "c"), p(6, "c")];
        let mut count: BTreeMap<NodeId, usize> = BTreeMap::new();
        let n = 4000;
        for i in 0..n {
            let salt = object_salt("ns", &format!("key-{i}"));
            for t in choose(&sites(&["a"]), &[1], &c, 1, salt) {
                *count.entry(t.id).or_default() += 1;
            }
        }
        assert_eq!(count.get(&2), None, "a second copy stays out of the receiver's site");
        for id in [3, 4, 5, 6] {
            let share = count.get(&id).copied().unwrap_or(0) as f64 / n as f64;
            assert!(
                (0.2..0.3).contains(&share),
                "node {id} took {share:.3} of the copies: {count:?}"
            );
        }
    }
}
