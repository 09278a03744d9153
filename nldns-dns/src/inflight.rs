//! The miss path's shared state, owned by the service: the in-flight table (one upstream
//! exchange per cache key, its outcome shared by every waiter through a `watch`
//! channel) and the two counters that bound it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::cache::{CacheKey, CachedAnswer};

/// The miss path's state, owned by the service.
#[derive(Default)]
pub(crate) struct Misses {
    pub inflight: Mutex<HashMap<CacheKey, Inflight>>,
    pub upstream_in_flight: AtomicUsize,
    pub waiting_queries: AtomicUsize,
}

/// The outcome of one upstream resolution, shared with every coalesced waiter.
#[derive(Clone)]
pub(crate) enum Outcome {
    Answer(Arc<CachedAnswer>),
    /// No usable answer; waiters serve stale if the cache still has it.
    Failed,
}

pub(crate) type Inflight = watch::Receiver<Option<Outcome>>;

/// Decrements a counter when dropped (in-flight and waiting bounds).
pub(crate) struct Slot<'a>(pub &'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) fn take_slot(counter: &AtomicUsize, limit: usize) -> Option<Slot<'_>> {
    if counter.fetch_add(1, Ordering::AcqRel) >= limit {
        counter.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(Slot(counter))
}

/// Removes a key from the in-flight map when dropped, after the outcome was sent:
/// a query joining in between finds the outcome already in the channel.
pub(crate) struct InflightEntry<'a> {
    pub map: &'a Mutex<HashMap<CacheKey, Inflight>>,
    pub key: &'a CacheKey,
}

impl Drop for InflightEntry<'_> {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.key);
    }
}
