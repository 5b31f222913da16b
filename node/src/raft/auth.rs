//! Who may do what: the replicated authorization state (each identity's grants, and whether
//! the cluster is locked down), its deterministic apply rules, and the one decision every
//! node makes for every client call, [`AuthState::allows`].
//!
//! The state is applied through Raft like any write (`Command::Auth`), so every replica holds
//! the same grants; each node answers from its own applied copy, kept in memory by
//! [`AuthView`] (one read lock per call, no database read on the request path). A grant or
//! revoke is in force on a node as soon as that node has applied it.
//!
//! Bootstrap: the identity [`BOOTSTRAP_ADMIN`] (`root`, the playground's `client.pem` and
//! `ark certs client root`) is an admin until the cluster is locked down; after
//! [`AuthCommand::Lockdown`] only identities with an explicit admin grant are.
//!
//! Owns the rules. Must not touch: how a caller's identity is learnt (`api::auth`), what is
//! logged about decisions (`audit`), gRPC statuses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use redb::{ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::raft::codec::{decode, encode};
pub use crate::raft::types::{AuthCommand, Grant, Permission};

/// The identity that is an admin until the cluster is locked down.
pub const BOOTSTRAP_ADMIN: &str = "root";
/// Longest identity name.
pub const IDENTITY_BYTES_MAX: usize = 128;
/// Longest grant target.
pub const TARGET_BYTES_MAX: usize = 1024;
/// Most grants one identity holds.
pub const GRANTS_PER_IDENTITY_MAX: usize = 256;
/// Most identities with grants.
pub const IDENTITIES_MAX: usize = 10_000;

/// The table holding the state, one value under [`KEY_STATE`].
pub(crate) const AUTH: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_auth");
const KEY_STATE: &str = "state";

/// Everything the cluster knows about who may do what.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    /// Each identity's grants.
    pub grants: BTreeMap<String, BTreeSet<Grant>>,
    /// Locked down: [`BOOTSTRAP_ADMIN`] is no longer implicitly an admin.
    pub locked: bool,
}

/// What one call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// An admin action.
    Admin,
    /// Reading objects of a namespace, under a key (or list prefix; "" = the whole namespace).
    Read {
        /// Namespace.
        ns: &'a str,
        /// Key or prefix.
        key: &'a str,
    },
    /// Writing (putting, deleting) objects.
    Write {
        /// Namespace.
        ns: &'a str,
        /// Key.
        key: &'a str,
    },
    /// Reading KV keys (a key, or a list prefix).
    KvRead {
        /// Key or prefix.
        key: &'a str,
    },
    /// Writing a KV key.
    KvWrite {
        /// Key.
        key: &'a str,
    },
}

impl Need<'_> {
    /// The permission this need is about.
    pub fn permission(&self) -> Permission {
        match self {
            Need::Admin => Permission::Admin,
            Need::Read { .. } => Permission::Read,
            Need::Write { .. } => Permission::Write,
            Need::KvRead { .. } => Permission::KvRead,
            Need::KvWrite { .. } => Permission::KvWrite,
        }
    }

    /// What was needed, for error messages and the audit log: `write on datasets/a.bin`.
    pub fn describe(&self) -> String {
        match self {
            Need::Admin => "admin".into(),
            Need::Read { ns, key } | Need::Write { ns, key } if is_system_namespace(ns) => {
                format!(
                    "admin (for {} on system namespace {ns}/{key})",
                    permission_name(self.permission())
                )
            }
            Need::Read { ns, key } => format!("read on {ns}/{key}"),
            Need::Write { ns, key } => format!("write on {ns}/{key}"),
            Need::KvRead { key } => format!("kv-read on {key}"),
            Need::KvWrite { key } => format!("kv-write on {key}"),
        }
    }
}

/// Namespaces whose names start with `_` (the failure model lives in `_ark`) are the
/// system's: only admins read or write them, whatever other grants say.
pub fn is_system_namespace(ns: &str) -> bool {
    ns.starts_with('_')
}

/// The permission's name as the CLI and the audit log spell it.
pub fn permission_name(p: Permission) -> &'static str {
    match p {
        Permission::Admin => "admin",
        Permission::Read => "read",
        Permission::Write => "write",
        Permission::KvRead => "kv-read",
        Permission::KvWrite => "kv-write",
    }
}

/// Parses a permission name ([`permission_name`]'s spelling).
pub fn parse_permission(s: &str) -> Option<Permission> {
    Some(match s {
        "admin" => Permission::Admin,
        "read" => Permission::Read,
        "write" => Permission::Write,
        "kv-read" => Permission::KvRead,
        "kv-write" => Permission::KvWrite,
        _ => return None,
    })
}

/// Why an identity name is unusable, if it is.
pub fn identity_problem(id: &str) -> Option<String> {
    if id.is_empty() || id.len() > IDENTITY_BYTES_MAX || id.chars().any(|c| c.is_control()) {
        return Some(format!(
            "identity must be 1 to {IDENTITY_BYTES_MAX} bytes without control characters"
        ));
    }
    None
}

/// The grant as it is stored: targets checked and written one way (`datasets/*` and
/// `datasets` are the same grant; `*` for admin). Refuses targets that cannot match anything
/// the way their author meant.
pub fn normalize(grant: &Grant) -> Result<Grant, String> {
    let t = grant.target.trim();
    if t.len() > TARGET_BYTES_MAX || t.chars().any(|c| c.is_control()) {
        return Err(format!(
            "target must be at most {TARGET_BYTES_MAX} bytes without control characters"
        ));
    }
    let star_inside = |s: &str| s.trim_end_matches('*').contains('*');
    let target = match grant.permission {
        Permission::Admin => {
            if !(t.is_empty() || t == "*") {
                return Err(format!("admin is cluster-wide: its target is `*`, not {t:?}"));
            }
            "*".to_string()
        }
        Permission::Read | Permission::Write => {
            let (ns, key) = match t.split_once('/') {
                Some((ns, key)) => (ns, key),
                None => (t, ""),
            };
            if ns.is_empty() {
                return Err(format!(
                    "target {t:?} must start with a namespace or a namespace prefix ending in `*`"
                ));
            }
            let ns_ok = ns
                .trim_end_matches('*')
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
            if !ns_ok || ns.trim_end_matches('*').len() + 1 < ns.len() {
                return Err(format!(
                    "namespace part {ns:?} must be a namespace name, optionally ending in one `*`"
                ));
            }
            if star_inside(key) {
                return Err(format!("key part {key:?} may only end in `*` (a prefix)"));
            }
            let key = key.trim_end_matches('*');
            if key.is_empty() {
                format!("{ns}/*")
            } else {
                format!("{ns}/{key}*")
            }
        }
        Permission::KvRead | Permission::KvWrite => {
            if t.is_empty() {
                return Err("a KV grant needs a key prefix (`*` for every key)".into());
            }
            if star_inside(t) {
                return Err(format!("key prefix {t:?} may only end in `*`"));
            }
            format!("{}*", t.trim_end_matches('*'))
        }
    };
    Ok(Grant {
        permission: grant.permission,
        target,
    })
}

/// Whether `pattern` (a name, or a prefix ending in `*`) matches `name`.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

impl AuthState {
    /// Whether `identity` is an admin.
    pub fn is_admin(&self, identity: &str) -> bool {
        (!self.locked && identity == BOOTSTRAP_ADMIN)
            || self
                .grants
                .get(identity)
                .is_some_and(|g| g.iter().any(|g| g.permission == Permission::Admin))
    }

    /// Whether `identity` may do what `need` asks. Admins may do everything; the system
    /// namespaces are admins' only.
    pub fn allows(&self, identity: &str, need: &Need<'_>) -> bool {
        if self.is_admin(identity) {
            return true;
        }
        let Some(grants) = self.grants.get(identity) else {
            return false;
        };
        match *need {
            Need::Admin => false,
            Need::Read { ns, key } | Need::Write { ns, key } => {
                if is_system_namespace(ns) {
                    return false;
                }
                let want = need.permission();
                grants.iter().filter(|g| g.permission == want).any(|g| {
                    let (ns_pat, key_pat) = g.target.split_once('/').unwrap_or((g.target.as_str(), "*"));
                    // A namespace pattern never reaches into the system namespaces.
                    matches(ns_pat, ns) && matches(key_pat, key)
                })
            }
            Need::KvRead { key } | Need::KvWrite { key } => {
                let want = need.permission();
                grants
                    .iter()
                    .filter(|g| g.permission == want)
                    .any(|g| matches(&g.target, key))
            }
        }
    }

    /// Whether `identity` may see that namespace `ns` exists (any object grant on it).
    pub fn sees_namespace(&self, identity: &str, ns: &str) -> bool {
        self.allows(identity, &Need::Read { ns, key: "" })
            || self.allows(identity, &Need::Write { ns, key: "" })
            || self.grants.get(identity).is_some_and(|g| {
                !is_system_namespace(ns)
                    && g.iter().any(|g| {
                        matches!(g.permission, Permission::Read | Permission::Write)
                            && matches(g.target.split_once('/').map_or(g.target.as_str(), |p| p.0), ns)
                    })
            })
    }

    /// Applies one command: the same answer on every replica, and nothing changed on an
    /// error.
    pub fn apply(&mut self, cmd: &AuthCommand) -> Result<(), String> {
        match cmd {
            AuthCommand::Grant { identity, grant } => {
                if let Some(p) = identity_problem(identity) {
                    return Err(p);
                }
                let grant = normalize(grant)?;
                if !self.grants.contains_key(identity) && self.grants.len() >= IDENTITIES_MAX {
                    return Err(format!("at most {IDENTITIES_MAX} identities may hold grants"));
                }
                let set = self.grants.entry(identity.clone()).or_default();
                if !set.contains(&grant) && set.len() >= GRANTS_PER_IDENTITY_MAX {
                    return Err(format!(
                        "{identity} already holds {GRANTS_PER_IDENTITY_MAX} grants, the most allowed"
                    ));
                }
                set.insert(grant);
                Ok(())
            }
            AuthCommand::Revoke { identity, grant } => {
                let grant = normalize(grant)?;
                let last_admin = self.locked && self.explicit_admins() == 1;
                let Some(set) = self.grants.get_mut(identity) else {
                    return Err(format!("{identity} has no grants"));
                };
                if !set.contains(&grant) {
                    return Err(format!(
                        "{identity} does not have {} on {}",
                        permission_name(grant.permission),
                        grant.target
                    ));
                }
                if grant.permission == Permission::Admin && last_admin {
                    return Err(format!(
                        "{identity} is the last admin of a locked-down cluster; grant admin to another identity first"
                    ));
                }
                set.remove(&grant);
                if set.is_empty() {
                    self.grants.remove(identity);
                }
                Ok(())
            }
            AuthCommand::Lockdown => {
                if self.explicit_admins() == 0 {
                    return Err(format!(
                        "no identity has an explicit admin grant: grant admin to a named identity first \
                         (`ark auth grant NAME admin`), or the lockdown would leave the cluster without an admin \
                         once {BOOTSTRAP_ADMIN} loses its implicit right"
                    ));
                }
                self.locked = true;
                Ok(())
            }
        }
    }

    fn explicit_admins(&self) -> usize {
        self.grants
            .values()
            .filter(|g| g.iter().any(|g| g.permission == Permission::Admin))
            .count()
    }
}

/// Reads the stored state (the default when none was stored yet).
pub(crate) fn load<T: ReadableTable<&'static str, &'static [u8]>>(t: &T) -> Result<AuthState, String> {
    match t.get(KEY_STATE).map_err(|e| e.to_string())? {
        Some(v) => decode(v.value()).map_err(|e| format!("authorization state: {e}")),
        None => Ok(AuthState::default()),
    }
}

/// Stores the state.
pub(crate) fn store(t: &mut Table<'_, &'static str, &'static [u8]>, st: &AuthState) -> Result<(), String> {
    let b = encode(st).map_err(|e| e.to_string())?;
    t.insert(KEY_STATE, b.as_slice()).map_err(|e| e.to_string())?;
    Ok(())
}

/// Applies `cmd` to the stored state: `Ok(Err(why))` when the command is refused (nothing
/// changed), `Err` when the table could not be read or written.
pub(crate) fn apply(
    t: &mut Table<'_, &'static str, &'static [u8]>,
    cmd: &AuthCommand,
) -> Result<Result<(), String>, String> {
    let mut st = load(t)?;
    if let Err(why) = st.apply(cmd) {
        return Ok(Err(why));
    }
    store(t, &st)?;
    Ok(Ok(()))
}

/// This node's applied authorization state, in memory: the state machine replaces it after
/// every committed change and snapshot install; the client plane reads it on every call.
#[derive(Clone, Debug, Default)]
pub struct AuthView(Arc<RwLock<Arc<AuthState>>>);

impl AuthView {
    /// The state now.
    pub fn get(&self) -> Arc<AuthState> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the state.
    pub(crate) fn set(&self, st: AuthState) {
        let st = Arc::new(st);
        match self.0.write() {
            Ok(mut g) => *g = st,
            Err(p) => *p.into_inner() = st,
        }
    }

    /// Loads the state committed in `db`.
    pub(crate) fn reload(&self, db: &redb::Database) -> Result<(), String> {
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        let st = match tx.open_table(AUTH) {
            Ok(t) => load(&t)?,
            Err(redb::TableError::TableDoesNotExist(_)) => AuthState::default(),
            Err(e) => return Err(e.to_string()),
        };
        self.set(st);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(p: Permission, t: &str) -> Grant {
        Grant {
            permission: p,
            target: t.into(),
        }
    }

    fn granted(id: &str, grants: &[Grant]) -> AuthState {
        let mut st = AuthState::default();
        for gr in grants {
            st.apply(&AuthCommand::Grant {
                identity: id.into(),
                grant: gr.clone(),
            })
            .unwrap();
        }
        st
    }

    #[test]
    fn a_read_grant_on_a_namespace_reads_there_and_nothing_else() {
        let st = granted("nb", &[g(Permission::Read, "datasets/*")]);
        assert!(st.allows(
            "nb",
            &Need::Read {
                ns: "datasets",
                key: "a.bin"
            }
        ));
        assert!(st.allows(
            "nb",
            &Need::Read {
                ns: "datasets",
                key: ""
            }
        ));
        assert!(!st.allows(
            "nb",
            &Need::Write {
                ns: "datasets",
                key: "a.bin"
            }
        ));
        assert!(!st.allows(
            "nb",
            &Need::Read {
                ns: "datasets2",
                key: "a"
            }
        ));
        assert!(!st.allows("nb", &Need::Read { ns: "models", key: "a" }));
        assert!(!st.allows("nb", &Need::KvRead { key: "datasets/a" }));
        assert!(!st.allows("nb", &Need::Admin));
        assert!(!st.allows(
            "other",
            &Need::Read {
                ns: "datasets",
                key: "a"
            }
        ));
    }

    #[test]
    fn prefixes_narrow_namespaces_and_keys() {
        let st = granted(
            "job",
            &[
                g(Permission::Write, "ckpt-*"),
                g(Permission::Read, "data/train/*"),
                g(Permission::KvWrite, "jobs/7/"),
            ],
        );
        assert!(st.allows("job", &Need::Write { ns: "ckpt-a", key: "x" }));
        assert!(!st.allows("job", &Need::Write { ns: "ckp", key: "x" }));
        assert!(st.allows(
            "job",
            &Need::Read {
                ns: "data",
                key: "train/1"
            }
        ));
        assert!(!st.allows(
            "job",
            &Need::Read {
                ns: "data",
                key: "test/1"
            }
        ));
        // Listing the whole namespace needs more than a key prefix grants.
        assert!(!st.allows("job", &Need::Read { ns: "data", key: "" }));
        assert!(st.allows("job", &Need::KvWrite { key: "jobs/7/step" }));
        assert!(!st.allows("job", &Need::KvWrite { key: "jobs/8/step" }));
        assert!(!st.allows("job", &Need::KvRead { key: "jobs/7/step" }));
    }

    #[test]
    fn system_namespaces_are_for_admins_only() {
        let st = granted("ops", &[g(Permission::Write, "*"), g(Permission::Read, "_ark/*")]);
        assert!(st.allows(
            "ops",
            &Need::Write {
                ns: "anything",
                key: "k"
            }
        ));
        assert!(!st.allows(
            "ops",
            &Need::Write {
                ns: "_ark",
                key: "failure-model"
            }
        ));
        assert!(!st.allows(
            "ops",
            &Need::Read {
                ns: "_ark",
                key: "failure-model"
            }
        ));
        assert!(st.allows(
            BOOTSTRAP_ADMIN,
            &Need::Write {
                ns: "_ark",
                key: "failure-model"
            }
        ));
    }

    #[test]
    fn root_is_admin_until_lockdown_which_needs_a_named_admin() {
        let mut st = AuthState::default();
        assert!(st.is_admin("root"));
        assert!(!st.is_admin("alice"));
        assert!(st.apply(&AuthCommand::Lockdown).is_err(), "no named admin yet");
        assert!(!st.locked);
        st.apply(&AuthCommand::Grant {
            identity: "alice".into(),
            grant: g(Permission::Admin, "*"),
        })
        .unwrap();
        st.apply(&AuthCommand::Lockdown).unwrap();
        assert!(!st.is_admin("root"));
        assert!(st.is_admin("alice"));
        let revoke = AuthCommand::Revoke {
            identity: "alice".into(),
            grant: g(Permission::Admin, ""),
        };
        let before = st.clone();
        assert!(st.apply(&revoke).is_err(), "the last admin of a locked cluster stays");
        assert_eq!(st, before);
    }

    #[test]
    fn grants_are_normalized_and_revoked_in_any_spelling() {
        let mut st = granted("nb", &[g(Permission::Read, "datasets")]);
        assert_eq!(st.grants["nb"].iter().next().unwrap().target, "datasets/*");
        st.apply(&AuthCommand::Revoke {
            identity: "nb".into(),
            grant: g(Permission::Read, "datasets/*"),
        })
        .unwrap();
        assert!(st.grants.is_empty());
        assert!(st
            .apply(&AuthCommand::Revoke {
                identity: "nb".into(),
                grant: g(Permission::Read, "datasets/*"),
            })
            .is_err());
    }

    #[test]
    fn malformed_grants_are_refused_and_change_nothing() {
        let mut st = AuthState::default();
        for bad in [
            g(Permission::Admin, "datasets"),
            g(Permission::Read, ""),
            g(Permission::Read, "/x"),
            g(Permission::Read, "da*ta"),
            g(Permission::Read, "ns with space"),
            g(Permission::Write, "ns/a*b"),
            g(Permission::KvRead, ""),
            g(Permission::KvRead, "a*b"),
            g(Permission::Read, &"x".repeat(TARGET_BYTES_MAX + 1)),
        ] {
            assert!(
                st.apply(&AuthCommand::Grant {
                    identity: "x".into(),
                    grant: bad.clone()
                })
                .is_err(),
                "{bad:?}"
            );
        }
        assert!(st
            .apply(&AuthCommand::Grant {
                identity: "".into(),
                grant: g(Permission::Read, "a")
            })
            .is_err());
        assert_eq!(st, AuthState::default());
    }
}
