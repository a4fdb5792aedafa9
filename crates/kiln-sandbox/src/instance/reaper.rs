//! Reaping started instances, and killing what their init leaves behind.

use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex, mpsc};

use rustix::process::Signal;

use super::{InstanceError, REAPER_STACK, signal_in};
use crate::netns::NetNs;

/// The thread that waits on a started instance's bwrap process, so that
/// it does not stay a zombie; the daemon keeps no other handle on it.
///
/// bwrap exits as soon as the main process does, but the namespace's init
/// stays until every other process in it has exited, and a daemonized
/// child may never exit. An instance is its main process, as a container
/// is, so the reaper then kills the init, and with it what remains.
pub(super) struct Reaper {
    pub(super) give: mpsc::SyncSender<Child>,
    pub(super) reaped: Arc<Mutex<Reaped>>,
}

/// Shared by start and the reaper under one lock, so that exactly one of
/// them sees both the exit and the init, however the two race.
#[derive(Debug, Default)]
pub(super) struct Reaped {
    pub(super) exit: Option<ExitStatus>,
    /// The init's namespace (with its pid), once start has found it.
    pub(super) init: Option<NetNs>,
}

impl Reaped {
    pub(super) fn exit(reaped: &Mutex<Reaped>) -> Option<ExitStatus> {
        reaped.lock().unwrap_or_else(|p| p.into_inner()).exit
    }
}

impl Reaper {
    pub(super) fn spawn(id: &str) -> Result<Reaper, InstanceError> {
        let reaped = Arc::new(Mutex::new(Reaped::default()));
        let (give, take) = mpsc::sync_channel::<Child>(1);
        let shared = Arc::clone(&reaped);
        std::thread::Builder::new()
            .name(format!("kiln-reap-{id}"))
            .stack_size(REAPER_STACK)
            .spawn(move || {
                let Ok(mut child) = take.recv() else { return };
                let status = child.wait();
                let mut reaped = shared.lock().unwrap_or_else(|p| p.into_inner());
                match status {
                    Ok(s) => reaped.exit = Some(s),
                    Err(error) => {
                        tracing::error!(pid = child.id(), %error, "waiting for an instance's bwrap failed");
                    }
                }
                if let Some(ns) = &reaped.init {
                    // The init outliving bwrap is what this kill ends; if it is gone
                    // already (or its namespace with it) there is nothing left to kill.
                    let _ = signal_in(ns, ns.pid(), Signal::KILL);
                }
            })
            .map_err(|error| InstanceError::Thread {
                id: id.to_owned(),
                error,
            })?;
        Ok(Reaper { give, reaped })
    }

    /// Hands the init to the reaper, or kills it now if bwrap is already
    /// gone.
    pub(super) fn watch_init(&self, init: &NetNs) {
        let mut reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        if reaped.exit.is_some() {
            // As in the reaper: an init already gone needs no kill.
            let _ = signal_in(init, init.pid(), Signal::KILL);
        } else if let Ok(ns) = init.try_clone() {
            reaped.init = Some(ns);
        }
    }
}
