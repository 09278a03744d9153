//! A slab of values threaded into a least-recently-used list by index.
//!
//! The list's links are `u32` slab indices inside each node, so recency costs no
//! allocation and no pointer per entry (an entry of the answer cache is 40 bytes with
//! its links, asserted in the cache's tests). Freed slots are reused before the slab
//! grows, and an emptied slab gives its memory back.

/// End of the list / no slot.
const NIL: u32 = u32::MAX;

struct Node<T> {
    value: T,
    /// Neighbours in recency order ([`NIL`] at either end): `prev` is less recent.
    prev: u32,
    next: u32,
}

/// Values addressed by a stable `u32` index, ordered by recency of use.
pub struct LruSlab<T> {
    /// `None` slots are listed in `free` for reuse.
    nodes: Vec<Option<Node<T>>>,
    free: Vec<u32>,
    /// Least and most recently used ends of the list.
    lru: u32,
    mru: u32,
    len: usize,
}

impl<T> Default for LruSlab<T> {
    fn default() -> Self {
        LruSlab {
            nodes: Vec::new(),
            free: Vec::new(),
            lru: NIL,
            mru: NIL,
            len: 0,
        }
    }
}

impl<T> LruSlab<T> {
    /// Bytes of one slot, for callers that charge their entries honestly.
    pub const SLOT_BYTES: usize = std::mem::size_of::<Option<Node<T>>>();

    pub fn len(&self) -> usize {
        self.len
    }

    /// Stores `value` as the most recently used; `None` (and the value back) if the
    /// slab has no index left, which a bounded cache never reaches.
    pub fn insert(&mut self, value: T) -> Result<u32, T> {
        let node = Node {
            value,
            prev: NIL,
            next: NIL,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.nodes[at as usize] = Some(node);
                at
            }
            None => match u32::try_from(self.nodes.len()) {
                // NIL is reserved; refuse rather than wrap.
                Ok(at) if at != NIL => {
                    self.nodes.push(Some(node));
                    at
                }
                _ => return Err(node.value),
            },
        };
        self.len += 1;
        self.link_mru(at);
        Ok(at)
    }

    /// The value at `at`; `None` for a free or unknown index.
    pub fn get(&self, at: u32) -> Option<&T> {
        self.nodes.get(at as usize)?.as_ref().map(|n| &n.value)
    }

    pub fn get_mut(&mut self, at: u32) -> Option<&mut T> {
        self.nodes
            .get_mut(at as usize)?
            .as_mut()
            .map(|n| &mut n.value)
    }

    /// Makes `at` the most recently used.
    pub fn touch(&mut self, at: u32) {
        if self.mru != at && self.get(at).is_some() {
            self.unlink(at);
            self.link_mru(at);
        }
    }

    /// The least recently used index, if any.
    pub fn oldest(&self) -> Option<u32> {
        (self.lru != NIL).then_some(self.lru)
    }

    /// Takes the value out and frees its slot.
    pub fn remove(&mut self, at: u32) -> Option<T> {
        self.get(at)?;
        self.unlink(at);
        let node = self.nodes[at as usize].take()?;
        self.len -= 1;
        self.free.push(at);
        if self.len == 0 {
            // Let an emptied slab give its memory back.
            self.nodes = Vec::new();
            self.free = Vec::new();
        }
        Some(node.value)
    }

    fn node_mut(&mut self, at: u32) -> &mut Node<T> {
        self.nodes[at as usize]
            .as_mut()
            .expect("linked slots are occupied")
    }

    fn unlink(&mut self, at: u32) {
        let (prev, next) = {
            let n = self.node_mut(at);
            (n.prev, n.next)
        };
        match prev {
            NIL => self.lru = next,
            p => self.node_mut(p).next = next,
        }
        match next {
            NIL => self.mru = prev,
            n => self.node_mut(n).prev = prev,
        }
    }

    fn link_mru(&mut self, at: u32) {
        let old = self.mru;
        {
            let n = self.node_mut(at);
            n.prev = old;
            n.next = NIL;
        }
        match old {
            NIL => self.lru = at,
            o => self.node_mut(o).next = at,
        }
        self.mru = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(slab: &mut LruSlab<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(at) = slab.oldest() {
            out.push(slab.remove(at).unwrap());
        }
        out
    }

    #[test]
    fn touch_moves_to_the_recent_end_and_slots_are_reused() {
        let mut slab = LruSlab::default();
        let a = slab.insert(1).unwrap();
        let b = slab.insert(2).unwrap();
        let c = slab.insert(3).unwrap();
        slab.touch(a);
        assert_eq!(slab.oldest(), Some(b));
        assert_eq!(slab.remove(b), Some(2));
        assert_eq!(slab.remove(b), None, "a freed slot is gone");
        let d = slab.insert(4).unwrap();
        assert_eq!(d, b, "the freed slot is reused before the slab grows");
        assert_eq!(slab.len(), 3);
        *slab.get_mut(c).unwrap() = 30;
        assert_eq!(order(&mut slab), vec![30, 1, 4]);
        assert_eq!(slab.len(), 0);
        assert!(
            slab.nodes.capacity() == 0,
            "an emptied slab frees its memory"
        );
    }
}
