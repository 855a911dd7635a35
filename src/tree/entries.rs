//! A directory's entries by name, sorted bytewise (as ostree sorts them), kept compactly.
//!
//! Most directories of an image hold a handful of entries, and layers list them in order: a
//! sorted vector, appended to, costs the entries themselves, where a `BTreeMap` gives every
//! directory a node of eleven slots and fills the nodes it splits on appends by half (about
//! 275 bytes an entry on a desktop image's tree, against 100 here). A directory that gets many
//! entries out of order (a layer written in `readdir` order) becomes a map, so no insertion
//! costs more than [`SMALL`] moves; [`Entries::compact`] packs the maps' nodes full.

use std::collections::BTreeMap;

/// Entries kept in a vector when they come out of order; past this, a map.
const SMALL: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entries<V> {
    Sorted(Vec<(Vec<u8>, V)>),
    Map(BTreeMap<Vec<u8>, V>),
}

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Entries::Sorted(Vec::new())
    }
}

impl<V> Entries<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        match self {
            Entries::Sorted(v) => v.len(),
            Entries::Map(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn find(v: &[(Vec<u8>, V)], name: &[u8]) -> Result<usize, usize> {
        // Appends are the common case: the last entry first.
        match v.last() {
            Some((last, _)) if last.as_slice() < name => Err(v.len()),
            _ => v.binary_search_by(|(k, _)| k.as_slice().cmp(name)),
        }
    }

    pub fn get(&self, name: &[u8]) -> Option<&V> {
        match self {
            Entries::Sorted(v) => Self::find(v, name).ok().map(|i| &v[i].1),
            Entries::Map(m) => m.get(name),
        }
    }

    pub fn get_mut(&mut self, name: &[u8]) -> Option<&mut V> {
        match self {
            Entries::Sorted(v) => Self::find(v, name).ok().map(|i| &mut v[i].1),
            Entries::Map(m) => m.get_mut(name),
        }
    }

    pub fn contains_key(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    /// Sets `name` to `value`; returns the value it replaces.
    pub fn insert(&mut self, name: Vec<u8>, value: V) -> Option<V> {
        match self {
            Entries::Sorted(v) => match Self::find(v, &name) {
                Ok(i) => Some(std::mem::replace(&mut v[i].1, value)),
                Err(i) if i == v.len() || v.len() < SMALL => {
                    v.insert(i, (name, value));
                    None
                }
                Err(_) => {
                    let mut m: BTreeMap<Vec<u8>, V> = std::mem::take(v).into_iter().collect();
                    m.insert(name, value);
                    *self = Entries::Map(m);
                    None
                }
            },
            Entries::Map(m) => m.insert(name, value),
        }
    }

    /// The value of `name`, made by `make` when there is none.
    pub fn get_or_insert_with(&mut self, name: &[u8], make: impl FnOnce() -> V) -> &mut V {
        if !self.contains_key(name) {
            self.insert(name.to_vec(), make());
        }
        self.get_mut(name).expect("just inserted")
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<V> {
        match self {
            Entries::Sorted(v) => Self::find(v, name).ok().map(|i| v.remove(i).1),
            Entries::Map(m) => m.remove(name),
        }
    }

    pub fn clear(&mut self) {
        *self = Entries::default();
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&Vec<u8>, &mut V) -> bool) {
        match self {
            Entries::Sorted(v) => v.retain_mut(|(k, x)| keep(k, x)),
            Entries::Map(m) => m.retain(|k, x| keep(k, x)),
        }
    }

    pub fn iter(&self) -> Iter<'_, V> {
        fn pair<V>((k, x): &(Vec<u8>, V)) -> (&Vec<u8>, &V) {
            (k, x)
        }
        match self {
            Entries::Sorted(v) => Either::A(v.iter().map(pair as fn(&(Vec<u8>, V)) -> (&Vec<u8>, &V))),
            Entries::Map(m) => Either::B(m.iter()),
        }
    }

    pub fn iter_mut(&mut self) -> impl DoubleEndedIterator<Item = (&Vec<u8>, &mut V)> + '_ {
        match self {
            Entries::Sorted(v) => Either::A(v.iter_mut().map(|(k, x)| (&*k, x))),
            Entries::Map(m) => Either::B(m.iter_mut()),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &Vec<u8>> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, x)| x)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> + '_ {
        self.iter_mut().map(|(_, x)| x)
    }

    /// Gives back what growing left over: vectors trimmed to their length, maps rebuilt with
    /// full nodes. `children` reaches the entries of each value's own entries.
    pub fn compact(&mut self, children: &mut impl FnMut(&mut V)) {
        match self {
            Entries::Sorted(v) => v.shrink_to_fit(),
            // Built from sorted entries, a map's nodes are filled to the brim.
            Entries::Map(m) => *m = std::mem::take(m).into_iter().collect(),
        }
        self.values_mut().for_each(children);
    }
}

/// The entries in order, by reference.
pub type Iter<'a, V> = Either<
    std::iter::Map<std::slice::Iter<'a, (Vec<u8>, V)>, fn(&'a (Vec<u8>, V)) -> (&'a Vec<u8>, &'a V)>,
    std::collections::btree_map::Iter<'a, Vec<u8>, V>,
>;

/// One of two iterators of the same items (the vector's or the map's).
pub enum Either<A, B> {
    A(A),
    B(B),
}

impl<T, A: Iterator<Item = T>, B: Iterator<Item = T>> Iterator for Either<A, B> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        match self {
            Either::A(a) => a.next(),
            Either::B(b) => b.next(),
        }
    }
}

impl<T, A: DoubleEndedIterator<Item = T>, B: DoubleEndedIterator<Item = T>> DoubleEndedIterator for Either<A, B> {
    fn next_back(&mut self) -> Option<T> {
        match self {
            Either::A(a) => a.next_back(),
            Either::B(b) => b.next_back(),
        }
    }
}

impl<V> IntoIterator for Entries<V> {
    type Item = (Vec<u8>, V);
    type IntoIter = Either<std::vec::IntoIter<(Vec<u8>, V)>, std::collections::btree_map::IntoIter<Vec<u8>, V>>;
    fn into_iter(self) -> Self::IntoIter {
        match self {
            Entries::Sorted(v) => Either::A(v.into_iter()),
            Entries::Map(m) => Either::B(m.into_iter()),
        }
    }
}

impl<'a, V> IntoIterator for &'a Entries<V> {
    type Item = (&'a Vec<u8>, &'a V);
    type IntoIter = Iter<'a, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<V> FromIterator<(Vec<u8>, V)> for Entries<V> {
    fn from_iter<I: IntoIterator<Item = (Vec<u8>, V)>>(iter: I) -> Self {
        let mut e = Entries::new();
        for (k, v) in iter {
            e.insert(k, v);
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_whatever_the_order_and_a_map_when_large() {
        let mut e = Entries::new();
        for i in (0..200u32).rev() {
            e.insert(format!("{i:03}").into_bytes(), i);
        }
        assert!(matches!(e, Entries::Map(_)));
        assert_eq!(e.len(), 200);
        assert_eq!(e.keys().next().unwrap(), b"000");
        assert_eq!(e.insert(b"007".to_vec(), 70), Some(7));
        e.retain(|_, v| *v % 2 == 0);
        assert_eq!(e.get(b"070"), Some(&70));
        assert_eq!(e.get(b"003"), None);
        let mut small: Entries<u32> = [(b"b".to_vec(), 2), (b"a".to_vec(), 1), (b"c".to_vec(), 3)].into_iter().collect();
        assert!(matches!(small, Entries::Sorted(_)));
        assert_eq!(small.values().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(small.remove(b"b"), Some(2));
        *small.get_or_insert_with(b"d", || 0) += 4;
        small.compact(&mut |_| {});
        assert_eq!(small.into_iter().collect::<Vec<_>>(), vec![(b"a".to_vec(), 1), (b"c".to_vec(), 3), (b"d".to_vec(), 4)]);
    }
}
