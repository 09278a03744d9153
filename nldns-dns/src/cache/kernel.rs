//! The cache's side of kernel answers (see `crate::kernel_answers`): which entries are
//! published, in which hit slot, until when, and what the kernel answered through each
//! since it was last looked at.

use std::sync::Arc;
use std::time::Instant;

use nldns_common::answers::AnswerHits;

use crate::kernel_answers::AnswerTable;

/// `Slot::kernel` of an entry not in the table (it may be published on its next hit).
pub(super) const UNPUBLISHED: u16 = u16::MAX;

/// `KernelCopies::owners` of a hit slot no entry uses.
const FREE: u32 = u32::MAX;

/// Hit slots of the published entries.
pub(super) struct KernelCopies {
    pub table: Arc<dyn AnswerTable>,
    /// Hit slot -> the cache's slab index of the entry using it ([`FREE`]: none).
    owners: Vec<u32>,
    /// Hit slot -> the counts already accounted for.
    seen: Vec<AnswerHits>,
    /// Hit slot -> when the kernel stops answering from it.
    until: Vec<Option<Instant>>,
    free: Vec<u16>,
}

/// What the kernel answered from one entry since the last sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelHits {
    pub zone: u8,
    pub qtype: u16,
    /// The stored answer's RCODE and whether it is a denial (NXDOMAIN, NODATA).
    pub rcode: u8,
    pub denial: bool,
    pub v4: u64,
    pub v6: u64,
}

impl KernelCopies {
    pub fn new(table: Arc<dyn AnswerTable>) -> Self {
        let capacity = table.capacity();
        // Hit slots are u16 with two values reserved (`Slot::kernel`).
        let capacity = capacity.min(u32::from(u16::MAX - 1));
        KernelCopies {
            table,
            owners: vec![FREE; capacity as usize],
            seen: vec![AnswerHits::default(); capacity as usize],
            until: vec![None; capacity as usize],
            free: (0..capacity as u16).rev().collect(),
        }
    }

    /// A free hit slot for the entry at slab index `owner`, its counts taken as the
    /// baseline (the kernel never resets them).
    pub fn take(&mut self, owner: u32, until: Instant) -> Option<u16> {
        let slot = self.free.pop()?;
        let i = usize::from(slot);
        self.owners[i] = owner;
        self.seen[i] = self.table.hits(u32::from(slot));
        self.until[i] = Some(until);
        Some(slot)
    }

    pub fn release(&mut self, slot: u16) {
        let i = usize::from(slot);
        if self.owners.get(i).is_some_and(|&o| o != FREE) {
            self.owners[i] = FREE;
            self.until[i] = None;
            self.free.push(slot);
        }
    }

    /// Every published entry, as (hit slot, slab index, answered until).
    pub fn published(&self) -> impl Iterator<Item = (u16, u32, Option<Instant>)> + '_ {
        self.owners
            .iter()
            .enumerate()
            .filter(|(_, &o)| o != FREE)
            .map(|(s, &o)| (s as u16, o, self.until[s]))
    }

    /// New answers through `slot` since the last call: (v4, v6).
    pub fn new_hits(&mut self, slot: u16) -> (u64, u64) {
        let now = self.table.hits(u32::from(slot));
        let seen = std::mem::replace(&mut self.seen[usize::from(slot)], now);
        (now.v4.wrapping_sub(seen.v4), now.v6.wrapping_sub(seen.v6))
    }

    /// Forgets every published entry (the table is cleared by the caller).
    pub fn reset(&mut self) {
        let capacity = self.owners.len() as u16;
        self.owners.fill(FREE);
        self.until.fill(None);
        self.free = (0..capacity).rev().collect();
    }
}
