//! The loaded datapath and where it is attached, shared between the agent's phases and
//! the datapath's own tasks behind one lock (attach and detach both need the programs).

use std::sync::{Mutex, MutexGuard};

use anyhow::Result;

use super::{
    attach::{Attachments, Direction},
    loader::Datapath,
};

pub struct Interception {
    pub datapath: Datapath,
    pub attachments: Attachments,
}

impl Interception {
    /// Detaches one direction from every interface (see
    /// [`Attachments::detach_direction`] for the shutdown order).
    pub fn detach(&mut self, direction: Direction) {
        self.attachments
            .detach_direction(&mut self.datapath, direction);
    }
}

/// Locks `interception`; a poisoned lock (a panic while attaching) is an error.
pub fn lock(interception: &Mutex<Interception>) -> Result<MutexGuard<'_, Interception>> {
    interception
        .lock()
        .map_err(|_| anyhow::anyhow!("interception lock poisoned"))
}
