//! A value that is read on every use and replaced whole at run time: the TLS configurations
//! and the node-certificate check, which a certificate reload swaps while connections keep
//! the value they started with.
//!
//! Owns only the swap. Must not know what is swapped or when (that is `net::reload`).

use std::sync::{Arc, RwLock};

/// A shared, replaceable value. Clones share it: a [`Live::set`] on one is seen by all.
pub struct Live<T>(Arc<RwLock<Arc<T>>>);

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> std::fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

impl<T> Live<T> {
    /// A live value, starting at `v`.
    pub fn new(v: T) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(v))))
    }

    /// The value now; it stays valid (and unchanged) for whoever holds it after a `set`.
    pub fn get(&self) -> Arc<T> {
        // A writer that panicked mid-set left the old or the new Arc, both whole.
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the value for every later `get`.
    pub fn set(&self, v: T) {
        let v = Arc::new(v);
        match self.0.write() {
            Ok(mut g) => *g = v,
            Err(poisoned) => *poisoned.into_inner() = v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_seen_by_every_clone_and_earlier_gets_keep_their_value() {
        let a = Live::new(1);
        let b = a.clone();
        let before = a.get();
        b.set(2);
        assert_eq!(*a.get(), 2);
        assert_eq!(*before, 1);
    }
}
