//! The seeded choice of each round's network fault: which site, which nodes or which links a
//! partition cuts, given the cluster's layout and its current leader.
//!
//! Owns: the shape of the partition scenarios' rounds. Pure (a layout, a leader and a seeded
//! RNG in, a [`NetState`] out), so it is unit-tested without processes. Must not touch files,
//! processes or clocks: [`crate::drill`] applies the plans through [`crate::netfault`].

use rand::seq::SliceRandom;
use rand::Rng;

use crate::netfault::{NetState, NodeId};

/// One node of the layout, as far as planning needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub id: NodeId,
    /// Site name.
    pub site: String,
}

/// Which partition scenario a round belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionKind {
    /// One whole site cut off from all others; the leader's site in two rounds of three.
    Site,
    /// Two nodes cut off from the other three (5 nodes); every other round the two hold the
    /// leader.
    Minority,
    /// One-directional drops and bridges, in turn: the leader cannot hear a follower; a
    /// follower cannot hear the leader; two nodes cut from each other while a third reaches
    /// both.
    Asymmetric,
}

/// A round's plan: the network to install and what it means, for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    /// The network during the round.
    pub state: NetState,
    /// What was cut, for a human (node ids; the leader is named).
    pub what: String,
}

/// Plans round `round` (0-based) of a `kind` scenario on `members`, whose leader is `leader`.
/// `offset` (drawn once per run from the seed) shifts the cycle of round shapes, so that
/// different seeds start with different shapes; `rng` makes the remaining choices.
pub fn plan_round(
    kind: PartitionKind,
    members: &[Member],
    leader: NodeId,
    round: usize,
    offset: usize,
    rng: &mut impl Rng,
) -> Round {
    let all: Vec<NodeId> = members.iter().map(|m| m.id).collect();
    let followers: Vec<NodeId> = all.iter().copied().filter(|id| *id != leader).collect();
    let mut state = NetState::healthy();
    let step = round.wrapping_add(offset);
    let what = match kind {
        PartitionKind::Site => {
            let mut sites: Vec<&str> = members.iter().map(|m| m.site.as_str()).collect();
            sites.sort_unstable();
            sites.dedup();
            let leader_site = members.iter().find(|m| m.id == leader).map_or("", |m| m.site.as_str());
            let others: Vec<&str> = sites.iter().copied().filter(|s| *s != leader_site).collect();
            let site = if step % 3 != 2 || others.is_empty() {
                leader_site
            } else {
                others.choose(rng).copied().unwrap_or(leader_site)
            };
            let group: Vec<NodeId> = members.iter().filter(|m| m.site == site).map(|m| m.id).collect();
            state.isolate(&group, &all);
            format!("{site} (nodes {group:?}) isolated from all other sites; leader {leader}")
        }
        PartitionKind::Minority => {
            // By turns (`is_multiple_of` is newer than the workspace's rust-version).
            let group: Vec<NodeId> = match step % 2 {
                0 => {
                    let mut g = vec![leader];
                    g.extend(followers.choose(rng).copied());
                    g
                }
                _ => followers.choose_multiple(rng, 2).copied().collect(),
            };
            state.isolate(&group, &all);
            let with = if group.contains(&leader) { "with" } else { "without" };
            format!("minority {group:?} ({with} the leader {leader}) cut from the majority")
        }
        PartitionKind::Asymmetric => {
            let f = followers.choose(rng).copied().unwrap_or(leader);
            match step % 3 {
                0 => {
                    state.block(f, leader);
                    format!("leader {leader} cannot hear follower {f} (it still sends to {f})")
                }
                1 => {
                    state.block(leader, f);
                    format!("follower {f} cannot hear leader {leader} (it still sends to {leader})")
                }
                _ => {
                    // A bridge: the leader on the cut edge, or in the middle, by turns.
                    let (a, c, b) = if rng.gen_bool(0.5) {
                        let bridge = followers.iter().copied().find(|x| *x != f).unwrap_or(f);
                        (leader, f, bridge)
                    } else {
                        let other = followers.iter().copied().find(|x| *x != f).unwrap_or(f);
                        (f, other, leader)
                    };
                    state.cut(a, c);
                    format!("bridge: {a}<->{c} cut, {b} reaches both; leader {leader}")
                }
            }
        }
    };
    Round { state, what }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn layout(sites: u32, per_site: u32) -> Vec<Member> {
        (0..sites * per_site)
            .map(|i| Member {
                id: u64::from(i) + 1,
                site: ark_playground::playground::site_name(i / per_site),
            })
            .collect()
    }

    fn cut_off(state: &NetState, group: &[NodeId], all: &[Member]) -> bool {
        all.iter().all(|a| {
            all.iter().all(|b| {
                let across = group.contains(&a.id) != group.contains(&b.id);
                a.id == b.id || state.is_blocked(a.id, b.id) == across
            })
        })
    }

    #[test]
    fn site_rounds_isolate_a_whole_site_mostly_the_leaders() {
        let m = layout(3, 2);
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..9 {
            let r = plan_round(PartitionKind::Site, &m, 3, round, 0, &mut rng);
            let site_b = [3, 4];
            if round % 3 == 2 {
                assert!(
                    cut_off(&r.state, &[1, 2], &m) || cut_off(&r.state, &[5, 6], &m),
                    "{r:?}"
                );
            } else {
                assert!(cut_off(&r.state, &site_b, &m), "{r:?}");
                assert!(r.what.contains("site-b"));
            }
        }
    }

    #[test]
    fn minority_rounds_cut_two_of_five_alternately_with_the_leader() {
        let m = layout(5, 1);
        let mut rng = StdRng::seed_from_u64(1);
        for round in 0..10 {
            let r = plan_round(PartitionKind::Minority, &m, 2, round, 1, &mut rng);
            let ids: Vec<NodeId> = m.iter().map(|x| x.id).collect();
            let group: Vec<NodeId> = ids.iter().copied().filter(|id| r.state.is_blocked(*id, 1)).collect();
            // Node 1 may itself be in the minority: then the group is the other side's view.
            let group = if group.len() == 3 {
                ids.iter().copied().filter(|id| !group.contains(id)).collect()
            } else {
                group
            };
            assert_eq!(group.len(), 2, "{r:?}");
            assert!(cut_off(&r.state, &group, &m), "{r:?}");
            assert_eq!(group.contains(&2), round % 2 == 1, "{r:?}");
        }
    }

    #[test]
    fn asymmetric_rounds_cycle_through_one_way_drops_and_bridges() {
        let m = layout(3, 1);
        let mut rng = StdRng::seed_from_u64(3);
        let leader = 1;
        for round in 0..9 {
            let r = plan_round(PartitionKind::Asymmetric, &m, leader, round, 0, &mut rng);
            let d = r.state.describe();
            match round % 3 {
                0 => assert!(d == "2->1" || d == "3->1", "{d}"),
                1 => assert!(d == "1->2" || d == "1->3", "{d}"),
                _ => {
                    assert!(!d.contains("->") || d.contains("<->"), "{d}");
                    assert_eq!(d.matches("<->").count(), 1, "{d}");
                }
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        let m = layout(5, 1);
        let plans = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..6)
                .map(|r| plan_round(PartitionKind::Minority, &m, 3, r, 0, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(plans(5), plans(5));
    }
}
