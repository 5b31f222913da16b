//! Network namespaces for drills: every node in a namespace of its own with its own address,
//! so that partitions cut real traffic (nftables, see [`crate::netfault::Nftables`]).
//!
//! Layout of one run, all names starting with the run's prefix `ark<pid in hex><seq>`:
//!
//! ```text
//!  harness (root ns) ── <prefix>u ══ up0 ── router ns <prefix>r ── br<site> ══ eth0 ── node ns <prefix>n<id>
//!   10.T.255.1/30                   10.T.255.2   (forwards)   10.T.<site>.1/24       10.T.<site>.<10+k>/24
//! ```
//!
//! One bridge per site in a router namespace that routes between the sites and up to the
//! harness, which reaches every node's client port through a route for `10.T.0.0/16`. The
//! router namespace has its own (empty) firewall and forwarding switched on inside it only, so
//! the host's forwarding policy is not touched. `T` is chosen per run, under a lock, from the
//! second octets that no address or route of the host uses, so concurrent drills never share a
//! subnet.
//!
//! Owns: creating, naming and deleting the namespaces and links of a run (on drop too, after
//! killing whatever still runs in them), and sweeping those of dead runs. Must not touch:
//! arkd's config (the playground writes it from [`NodeNet`]) or fault rules.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use ark_playground::playground::{process_alive, NodeNet, NodePlacer};

/// First three letters of every namespace and root-namespace link this module makes.
const NAME_PREFIX: &str = "ark";
/// Linux limit on interface names (IFNAMSIZ - 1); namespace names are kept within it too.
const IFNAME_LEN_MAX: usize = 15;
/// Second octets a run may use: away from the 10.0.x.x and 10.255.x.x that hosts favour.
const TAGS: std::ops::RangeInclusive<u8> = 100..=239;
/// Third octet of the harness's uplink (/30): harness `.1`, router `.2`.
const UPLINK_OCTET: u8 = 255;
/// Sites per run (third octets 1..=SITES_MAX) and nodes per site (hosts 10..10+NODES_PER_SITE_MAX).
const SITES_MAX: usize = 200;
const NODES_PER_SITE_MAX: u8 = 200;
/// Serialises subnet choice between concurrent runs on one host.
const LOCK_FILE: &str = "/run/ark-chaos-netns.lock";

/// Runs started by this process so far, so two runs in one process get distinct prefixes.
static RUNS: AtomicU32 = AtomicU32::new(0);

/// The name prefix of run number `seq` of process `pid`: `ark`, the pid in hex, one hex
/// digit of `seq`. At most 10 characters, leaving room for `n<node id>` within 15.
pub fn run_prefix(pid: u32, seq: u32) -> String {
    format!("{NAME_PREFIX}{pid:x}{:x}", seq % 16)
}

/// What a name made by this module names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The namespace of a node.
    Node(u64),
    /// The router namespace.
    Router,
    /// The root-namespace end of the uplink.
    Uplink,
    /// A namespace made only to see whether namespaces can be made.
    Probe,
}

/// Parses a name made by this module: `(pid, seq, role)`; `None` for any other name.
pub fn parse_name(name: &str) -> Option<(u32, u32, Role)> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let hex_len = rest.chars().take_while(char::is_ascii_hexdigit).count();
    if !(2..=9).contains(&hex_len) {
        return None;
    }
    let (hex, role) = rest.split_at(hex_len);
    let (pid_hex, seq_hex) = hex.split_at(hex_len - 1);
    let pid = u32::from_str_radix(pid_hex, 16).ok()?;
    let seq = u32::from_str_radix(seq_hex, 16).ok()?;
    let role = match role {
        "r" => Role::Router,
        "u" => Role::Uplink,
        "p" => Role::Probe,
        _ => {
            let id = role.strip_prefix('n')?;
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            Role::Node(id.parse().ok()?)
        }
    };
    Some((pid, seq, role))
}

/// Second octets `10.X.` that an `ip -o addr` / `ip route` listing mentions.
pub fn used_tags(listing: &str) -> BTreeSet<u8> {
    let mut used = BTreeSet::new();
    for word in listing.split(|c: char| c.is_whitespace() || c == '/') {
        let mut octets = word.split('.');
        if let (Some("10"), Some(second)) = (octets.next(), octets.next()) {
            if let Ok(t) = second.parse::<u8>() {
                used.insert(t);
            }
        }
    }
    used
}

/// The first tag of [`TAGS`] at or after `start` (wrapping) that is not `used`.
pub fn pick_tag(used: &BTreeSet<u8>, start: u32) -> Option<u8> {
    let span = u32::from(TAGS.end() - TAGS.start()) + 1;
    (0..span)
        .filter_map(|i| u8::try_from((start + i) % span).ok())
        .map(|off| TAGS.start() + off)
        .find(|t| !used.contains(t))
}

/// Address of host `k` (0-based) of site `site` (0-based) in subnet `tag`.
pub fn node_ip(tag: u8, site: usize, k: u8) -> anyhow::Result<Ipv4Addr> {
    if site >= SITES_MAX || k >= NODES_PER_SITE_MAX {
        bail!("site {site} node {k} is beyond the {SITES_MAX} sites x {NODES_PER_SITE_MAX} nodes of a netns run");
    }
    Ok(Ipv4Addr::new(10, tag, site_octet(site), 10 + k))
}

fn site_octet(site: usize) -> u8 {
    // Bounded by SITES_MAX < 255 where it matters (node_ip checks first).
    u8::try_from(site + 1).unwrap_or(u8::MAX)
}

/// Runs `ip` (or any command) and fails with its stderr when it fails.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program} (is iproute2/nftables installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of the host's network namespaces.
fn list_namespaces() -> anyhow::Result<Vec<String>> {
    // Lines are `name` or `name (id: N)`.
    Ok(run("ip", &["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// Kills whatever still runs in namespace `ns` (our arkd processes), then deletes it; the
/// kernel destroys its links with it (the other end of each veth too).
fn delete_namespace(ns: &str) -> anyhow::Result<()> {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        // A namespace outlives its name while a process holds it; wait (bounded) for them.
        for _ in 0..100 {
            if run("ip", &["netns", "pids", ns])
                .map(|p| p.trim().is_empty())
                .unwrap_or(true)
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    run("ip", &["netns", "delete", ns]).map(|_| ())
}

/// Whether this host lets us make network namespaces and nftables rules: makes one and
/// deletes it. `Err` says why not (for the report).
pub fn probe() -> anyhow::Result<()> {
    run("nft", &["--version"]).context("nftables (nft) is needed for partitions in netns mode")?;
    let ns = format!("{}p", run_prefix(std::process::id(), RUNS.load(Ordering::Relaxed)));
    run("ip", &["netns", "add", &ns]).context("cannot create a network namespace (root needed)")?;
    let listed =
        run("ip", &["netns", "exec", &ns, "nft", "list", "tables"]).context("cannot run nft in a network namespace");
    delete_namespace(&ns)?;
    listed.map(|_| ())
}

/// Deletes namespaces and uplinks left by runs whose process is gone (killed harnesses).
/// Returns the names deleted.
pub fn sweep_stale() -> anyhow::Result<Vec<String>> {
    let mut deleted = Vec::new();
    for ns in list_namespaces()? {
        if let Some((pid, _, role)) = parse_name(&ns) {
            if role != Role::Uplink && !process_alive(pid) {
                delete_namespace(&ns)?;
                deleted.push(ns);
            }
        }
    }
    for line in run("ip", &["-o", "link", "show"])?.lines() {
        // `12: arkXu@if3: <...>`: the name ends at '@' or ':'.
        let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) else {
            continue;
        };
        if let Some((pid, _, Role::Uplink)) = parse_name(name) {
            if !process_alive(pid) {
                run("ip", &["link", "delete", name])?;
                deleted.push(name.to_owned());
            }
        }
    }
    Ok(deleted)
}

/// Holds the host-wide lock of subnet choice until dropped.
struct SubnetLock {
    _held: nix::fcntl::Flock<std::fs::File>,
}

fn lock_subnets() -> anyhow::Result<SubnetLock> {
    let path = if Path::new("/run").is_dir() {
        PathBuf::from(LOCK_FILE)
    } else {
        std::env::temp_dir().join("ark-chaos-netns.lock")
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(SubnetLock { _held: lock })
}

/// The namespaces and links of one run. Deleted by [`Netns::teardown`] or on drop.
#[derive(Debug)]
pub struct Netns {
    pid: u32,
    /// The run's number in this process, modulo 16 (as in its names).
    seq: u32,
    prefix: String,
    tag: u8,
    state: Mutex<Placed>,
}

/// What has been made so far.
#[derive(Debug, Default)]
struct Placed {
    /// Site name -> index (bridge `br<index>`, third octet index + 1).
    sites: BTreeMap<String, usize>,
    /// Nodes per site so far.
    hosts: BTreeMap<usize, u8>,
    /// Node id -> where it is.
    nodes: BTreeMap<u64, NodeNet>,
    /// Set once torn down.
    gone: bool,
}

impl Netns {
    /// Sweeps the leftovers of dead runs, then makes this run's router namespace and uplink
    /// in a subnet no other run or host network uses.
    pub fn create() -> anyhow::Result<Self> {
        sweep_stale().context("sweeping namespaces of dead drill runs")?;
        let pid = std::process::id();
        let seq = RUNS.fetch_add(1, Ordering::Relaxed) % 16;
        let prefix = run_prefix(pid, seq);
        debug_assert!(prefix.len() + 4 <= IFNAME_LEN_MAX);
        let _lock = lock_subnets()?;
        let listing = format!(
            "{}\n{}",
            run("ip", &["-o", "-4", "addr", "show"])?,
            run("ip", &["-4", "route", "show", "table", "all"])?
        );
        let tag = pick_tag(&used_tags(&listing), pid).context("every 10.X.0.0/16 subnet for drills is in use")?;
        let me = Self {
            pid,
            seq,
            prefix,
            tag,
            state: Mutex::new(Placed::default()),
        };
        // From here on, drop deletes whatever was made.
        me.make_router().context("making the router namespace")?;
        Ok(me)
    }

    /// The prefix of every name of this run.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The run's subnet, `10.T.0.0/16`.
    pub fn subnet(&self) -> String {
        format!("10.{}.0.0/16", self.tag)
    }

    fn router(&self) -> String {
        format!("{}r", self.prefix)
    }

    fn uplink(&self) -> String {
        format!("{}u", self.prefix)
    }

    fn make_router(&self) -> anyhow::Result<()> {
        let (r, up, t) = (self.router(), self.uplink(), self.tag);
        let host = format!("10.{t}.{UPLINK_OCTET}.1/30");
        let router_ip = format!("10.{t}.{UPLINK_OCTET}.2");
        run("ip", &["netns", "add", &r])?;
        run(
            "ip",
            &["link", "add", &up, "type", "veth", "peer", "name", "up0", "netns", &r],
        )?;
        run("ip", &["addr", "add", &host, "dev", &up])?;
        run("ip", &["link", "set", &up, "up"])?;
        run(
            "ip",
            &["-n", &r, "addr", "add", &format!("{router_ip}/30"), "dev", "up0"],
        )?;
        run("ip", &["-n", &r, "link", "set", "up0", "up"])?;
        run("ip", &["-n", &r, "link", "set", "lo", "up"])?;
        // Forwarding inside the router namespace only.
        run("ip", &["netns", "exec", &r, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        run("ip", &["route", "add", &self.subnet(), "via", &router_ip, "dev", &up])?;
        Ok(())
    }

    /// Index of `site`, making its bridge on first use.
    fn site(&self, placed: &mut Placed, site: &str) -> anyhow::Result<usize> {
        if let Some(i) = placed.sites.get(site) {
            return Ok(*i);
        }
        let i = placed.sites.len();
        if i >= SITES_MAX {
            bail!("more than {SITES_MAX} sites in one netns run");
        }
        let (r, br) = (self.router(), format!("br{i}"));
        run("ip", &["-n", &r, "link", "add", &br, "type", "bridge"])?;
        run(
            "ip",
            &[
                "-n",
                &r,
                "addr",
                "add",
                &format!("10.{}.{}.1/24", self.tag, site_octet(i)),
                "dev",
                &br,
            ],
        )?;
        run("ip", &["-n", &r, "link", "set", &br, "up"])?;
        placed.sites.insert(site.to_owned(), i);
        Ok(i)
    }

    /// Deletes every namespace and link of this run, killing what still runs in them. Safe
    /// to call more than once; also what drop does.
    pub fn teardown(&self) -> anyhow::Result<()> {
        let mut placed = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if placed.gone {
            return Ok(());
        }
        let mut errors = Vec::new();
        // By name, not by what `placed` recorded, so a namespace made halfway is found too.
        let ours: Vec<String> = list_namespaces()?
            .into_iter()
            .filter(|n| parse_name(n).is_some_and(|(pid, seq, _)| pid == self.pid && seq == self.seq))
            .collect();
        for ns in ours.iter().filter(|n| **n != self.router()) {
            if let Err(e) = delete_namespace(ns) {
                errors.push(format!("{e:#}"));
            }
        }
        // Deleting one end of the uplink deletes both (and the route through it).
        let up = self.uplink();
        if run("ip", &["link", "show", &up]).is_ok() {
            if let Err(e) = run("ip", &["link", "delete", &up]) {
                errors.push(format!("{e:#}"));
            }
        }
        if ours.contains(&self.router()) {
            if let Err(e) = delete_namespace(&self.router()) {
                errors.push(format!("{e:#}"));
            }
        }
        placed.gone = true;
        if !errors.is_empty() {
            bail!("tearing down the namespaces of {}: {}", self.prefix, errors.join("; "));
        }
        Ok(())
    }
}

impl NodePlacer for Netns {
    fn place(&self, id: u64, site: &str) -> anyhow::Result<NodeNet> {
        let mut placed = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if placed.gone {
            bail!("the namespaces of {} are already torn down", self.prefix);
        }
        if let Some(n) = placed.nodes.get(&id) {
            return Ok(n.clone());
        }
        let s = self.site(&mut placed, site)?;
        let k = placed.hosts.get(&s).copied().unwrap_or(0);
        let ip = node_ip(self.tag, s, k)?;
        let ns = format!("{}n{id}", self.prefix);
        if ns.len() > IFNAME_LEN_MAX {
            bail!("namespace name {ns} is longer than {IFNAME_LEN_MAX} characters");
        }
        let (r, veth, gw) = (
            self.router(),
            format!("v{id}"),
            format!("10.{}.{}.1", self.tag, site_octet(s)),
        );
        run("ip", &["netns", "add", &ns])?;
        run(
            "ip",
            &[
                "-n", &r, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        run(
            "ip",
            &["-n", &r, "link", "set", &veth, "master", &format!("br{s}"), "up"],
        )?;
        run("ip", &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &ns, "route", "add", "default", "via", &gw])?;
        let net = NodeNet {
            netns: ns,
            ip: IpAddr::V4(ip),
        };
        placed.hosts.insert(s, k + 1);
        placed.nodes.insert(id, net.clone());
        Ok(net)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Best effort: `teardown` is the checked path; a failed drill must not leave a
        // namespace behind either.
        let _ = self.teardown();
    }
}

/// Runs that `drill::run` registered by playground dir, so that code deep in a schedule
/// (adding a node for the membership drill) finds its run's namespaces without threading a
/// handle through every call.
static REGISTRY: Mutex<Vec<(PathBuf, Arc<Netns>)>> = Mutex::new(Vec::new());

/// Keeps `netns` findable by [`placer_for`] for `dir` until dropped.
#[derive(Debug)]
pub struct Registration(PathBuf);

/// Registers the namespaces of the playground in `dir`.
pub fn register(dir: &Path, netns: Arc<Netns>) -> Registration {
    let mut r = REGISTRY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    r.push((dir.to_path_buf(), netns));
    Registration(dir.to_path_buf())
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut r = REGISTRY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        r.retain(|(d, _)| *d != self.0);
    }
}

/// The namespaces of the playground in `dir`, if it runs in netns mode.
pub fn placer_for(dir: &Path) -> Option<Arc<Netns>> {
    let r = REGISTRY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    r.iter().find(|(d, _)| d == dir).map(|(_, n)| n.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_an_interface_name_and_parse_back() {
        // The largest pid Linux allows (2^22) and a 3-digit node id.
        let p = run_prefix(4_194_304, 17);
        assert_eq!(p, "ark4000001");
        for (name, role) in [
            (format!("{p}n999"), Role::Node(999)),
            (format!("{p}r"), Role::Router),
            (format!("{p}u"), Role::Uplink),
            (format!("{p}p"), Role::Probe),
        ] {
            assert!(name.len() <= IFNAME_LEN_MAX, "{name}");
            assert_eq!(parse_name(&name), Some((4_194_304, 1, role)), "{name}");
        }
        assert_eq!(
            parse_name(&format!("{}n3", run_prefix(42, 0))),
            Some((42, 0, Role::Node(3)))
        );
    }

    #[test]
    fn other_names_are_not_ours() {
        for n in [
            "arkive", "ark", "arkr", "ark1r", "ark12x", "ark12n", "ark12n3a", "docker0", "cni-1234", "ark12nr",
        ] {
            assert_eq!(parse_name(n), None, "{n}");
        }
    }

    #[test]
    fn distinct_runs_get_distinct_prefixes() {
        let a = run_prefix(1234, 0);
        assert_ne!(a, run_prefix(1234, 1));
        assert_ne!(a, run_prefix(1235, 0));
        // "ark12" + "3" starts with "ark12": names are told apart by parsing, not by prefix.
        let (short, long) = (run_prefix(0x1, 2), run_prefix(0x12, 3));
        assert!(long.starts_with(&short));
        assert_eq!(parse_name(&format!("{long}n1")), Some((0x12, 3, Role::Node(1))));
    }

    #[test]
    fn used_subnets_are_read_from_addresses_and_routes() {
        let listing = "2: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\n\
                       5: ark1u    inet 10.150.255.1/30 scope global ark1u\n\
                       10.101.0.0/16 via 10.101.255.2 dev ark2u\n\
                       default via 10.0.0.1 dev eth1\n";
        assert_eq!(used_tags(listing), BTreeSet::from([0, 101, 150]));
    }

    #[test]
    fn tag_choice_skips_used_subnets_and_wraps() {
        let used = BTreeSet::from([100, 101, 239]);
        assert_eq!(pick_tag(&used, 0), Some(102));
        // 139 -> 239 is used, wraps to 100, 101 (used), then 102.
        assert_eq!(pick_tag(&used, 139), Some(102));
        assert_eq!(pick_tag(&used, 5), Some(105));
        let all: BTreeSet<u8> = TAGS.collect();
        assert_eq!(pick_tag(&all, 7), None);
    }

    #[test]
    fn node_addresses_are_per_site_and_bounded() {
        assert_eq!(node_ip(150, 0, 0).unwrap(), Ipv4Addr::new(10, 150, 1, 10));
        assert_eq!(node_ip(150, 2, 1).unwrap(), Ipv4Addr::new(10, 150, 3, 11));
        assert!(node_ip(150, SITES_MAX, 0).is_err());
        assert!(node_ip(150, 0, NODES_PER_SITE_MAX).is_err());
    }
}
