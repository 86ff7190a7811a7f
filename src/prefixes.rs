//! Key prefixes, each stored once and named by a small id, so that the
//! compact disk-only slots (see `cold_slot`) can say which prefix their key
//! has without holding its text: `invalidate_prefix` stays an exact scan.
//!
//! Ids are never reused or forgotten: an application has few prefixes
//! (datasets, versions, tenants). One that makes a fresh prefix for every
//! key fills the table at `MAX_PREFIXES`; keys with newer prefixes then keep
//! their full slot, as every key did before the compact form.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::cold_slot::MAX_PREFIXES;

#[derive(Default)]
struct Table {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

/// See the module documentation.
#[derive(Default)]
pub(crate) struct Prefixes {
    table: RwLock<Table>,
}

impl Prefixes {
    /// The id of `prefix`, assigned on first use; `None` once the table is
    /// full.
    pub(crate) fn id(&self, prefix: &str) -> Option<u32> {
        if let Some(id) = self.table.read().ids.get(prefix) {
            return Some(*id);
        }
        let mut table = self.table.write();
        if let Some(id) = table.ids.get(prefix) {
            return Some(*id);
        }
        let id = u32::try_from(table.names.len())
            .ok()
            .filter(|id| *id < MAX_PREFIXES)?;
        let name: Arc<str> = prefix.into();
        table.names.push(name.clone());
        table.ids.insert(name, id);
        Some(id)
    }

    /// The prefix named `id`.
    pub(crate) fn name(&self, id: u32) -> Option<Arc<str>> {
        self.table.read().names.get(id as usize).cloned()
    }

    /// The ids of every known prefix that starts with `start` (the rule of
    /// `invalidate_prefix`), as a membership table indexed by id.
    pub(crate) fn starting_with(&self, start: &str) -> Vec<bool> {
        let table = self.table.read();
        table.names.iter().map(|n| n.starts_with(start)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_id_per_prefix_and_back() {
        let p = Prefixes::default();
        let a = p.id("ds/1").unwrap();
        let b = p.id("ds/2").unwrap();
        assert_ne!(a, b);
        assert_eq!(p.id("ds/1"), Some(a));
        assert_eq!(p.name(b).as_deref(), Some("ds/2"));
        let m = p.starting_with("ds/1");
        assert!(m[a as usize] && !m[b as usize]);
        assert!(p.starting_with("").iter().all(|x| *x));
    }
}
