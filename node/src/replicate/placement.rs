//! Which nodes receive copies: a pure function of the current holders, the candidates and
//! the policy, so that it is easy to test and the same everywhere.
//!
//! Rule: sites that hold no copy yet come first (so `min_sites` is met with the fewest
//! copies), one node per site in turn, sites in name order and nodes in id order; once every
//! site has a copy, further copies go to the remaining nodes in the same order.

use std::collections::{BTreeMap, BTreeSet};

use super::Peer;
use crate::raft::NodeId;

/// Picks up to `want` new nodes from `candidates` (nodes already in `holders` are skipped),
/// given the sites that already hold a copy.
pub fn choose(holders_sites: &BTreeSet<String>, holders: &[NodeId], candidates: &[Peer], want: usize) -> Vec<Peer> {
    let mut by_site: BTreeMap<&str, Vec<&Peer>> = BTreeMap::new();
    for c in candidates {
        if !holders.contains(&c.id) {
            by_site.entry(c.site.as_str()).or_default().push(c);
        }
    }
    for nodes in by_site.values_mut() {
        nodes.sort_by_key(|p| p.id);
        nodes.reverse(); // pop() takes the lowest id
    }
    let mut out: Vec<Peer> = Vec::new();
    let mut covered: BTreeSet<String> = holders_sites.clone();
    // First, one node in each site without a copy.
    for (site, nodes) in by_site.iter_mut() {
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
        for nodes in by_site.values_mut() {
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

    #[test]
    fn new_sites_come_first() {
        let c = [p(2, "a"), p(3, "b"), p(4, "b"), p(5, "c")];
        let got: Vec<NodeId> = choose(&sites(&["a"]), &[1], &c, 2).iter().map(|p| p.id).collect();
        assert_eq!(got, vec![3, 5]);
    }

    #[test]
    fn fills_remaining_copies_round_robin() {
        let c = [p(2, "a"), p(3, "b"), p(4, "b")];
        let got: Vec<NodeId> = choose(&sites(&["a"]), &[1], &c, 3).iter().map(|p| p.id).collect();
        assert_eq!(got, vec![3, 2, 4]);
    }

    #[test]
    fn skips_holders_and_stops_when_out_of_candidates() {
        let c = [p(1, "a"), p(2, "b")];
        let got: Vec<NodeId> = choose(&sites(&["a"]), &[1], &c, 5).iter().map(|p| p.id).collect();
        assert_eq!(got, vec![2]);
        assert!(choose(&sites(&[]), &[], &[], 2).is_empty());
    }
}
