//! A node's extended attributes, interned: the nodes with the same set (an SELinux label on
//! thousands of files, a capability, a user attribute) point at one copy, so a tree of 100k+
//! labelled files holds a few hundred sets, not one each.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

/// One attribute: name (without NUL) and value.
pub type Xattr = (Vec<u8>, Vec<u8>);

/// Extended attributes sorted by name; empty or an interned set. Reads go through the slice
/// (`Deref`); a changed set is a new one ([`Xattrs::new`]).
#[derive(Clone, Default)]
pub struct Xattrs(Option<Arc<Vec<Xattr>>>);

/// Every set made so far. Kept for the process: the sets an image uses are few and small.
fn interned() -> &'static Mutex<HashSet<Arc<Vec<Xattr>>>> {
    static SETS: OnceLock<Mutex<HashSet<Arc<Vec<Xattr>>>>> = OnceLock::new();
    SETS.get_or_init(Mutex::default)
}

impl Xattrs {
    /// The set of `list` (sorted by name, one value per name).
    pub fn new(list: Vec<Xattr>) -> Xattrs {
        if list.is_empty() {
            return Xattrs(None);
        }
        let mut sets = interned().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = sets.get(&list) {
            return Xattrs(Some(Arc::clone(set)));
        }
        let set = Arc::new(list);
        sets.insert(Arc::clone(&set));
        Xattrs(Some(set))
    }

    /// This set with `name` set to `value` (kept sorted by name).
    pub fn with(&self, name: &[u8], value: &[u8]) -> Xattrs {
        if self.get(name) == Some(value) {
            return self.clone();
        }
        let mut list = self.to_vec();
        match list.binary_search_by(|(k, _)| k.as_slice().cmp(name)) {
            Ok(i) => list[i].1 = value.to_vec(),
            Err(i) => list.insert(i, (name.to_vec(), value.to_vec())),
        }
        Xattrs::new(list)
    }

    /// The value of `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }
}

impl std::ops::Deref for Xattrs {
    type Target = [Xattr];
    fn deref(&self) -> &[Xattr] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl PartialEq for Xattrs {
    fn eq(&self, other: &Xattrs) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            (a, b) => a.is_none() && b.is_none(),
        }
    }
}

impl Eq for Xattrs {}

// By content, as `eq` compares when the sets are not one.
impl std::hash::Hash for Xattrs {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl std::fmt::Debug for Xattrs {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_list().entries(self.iter().map(|(k, v)| (String::from_utf8_lossy(k), String::from_utf8_lossy(v)))).finish()
    }
}

impl From<Vec<Xattr>> for Xattrs {
    fn from(list: Vec<Xattr>) -> Xattrs {
        Xattrs::new(list)
    }
}

impl<'a> IntoIterator for &'a Xattrs {
    type Item = &'a Xattr;
    type IntoIter = std::slice::Iter<'a, Xattr>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_sets_share_one_copy() {
        let a = Xattrs::new(vec![(b"security.selinux".to_vec(), b"system_u:object_r:usr_t:s0".to_vec())]);
        let b = Xattrs::new(vec![(b"security.selinux".to_vec(), b"system_u:object_r:usr_t:s0".to_vec())]);
        assert!(Arc::ptr_eq(a.0.as_ref().unwrap(), b.0.as_ref().unwrap()));
        let c = Xattrs::default().with(b"user.a", b"1").with(b"security.selinux", b"system_u:object_r:usr_t:s0");
        assert_eq!(c.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(), vec![b"security.selinux".as_slice(), b"user.a"]);
        assert_eq!(c.get(b"user.a"), Some(b"1".as_slice()));
        assert_ne!(a, c);
        assert!(Xattrs::new(Vec::new()).is_empty());
    }
}
