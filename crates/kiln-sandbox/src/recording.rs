//! An [`Isolation`] that isolates nothing: it records every process it is
//! asked to start, and starts it on the host in the root's directory with
//! only the environment it was given. Tests of what runs above the
//! boundary (the AWSTOE runner, bakes) use it to see exactly what they ask
//! of the OS, without root. Never for documents from anyone else: nothing
//! here confines them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::exec::{ExecError, Isolation, ProcessSpec};

/// One request to the boundary: the root and the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub root: PathBuf,
    pub spec: ProcessSpec,
}

#[derive(Debug, Default)]
pub struct Recording {
    calls: Mutex<Vec<Call>>,
}

impl Recording {
    /// What was asked for so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Isolation for Recording {
    fn command(&self, root: &Path, spec: &ProcessSpec) -> Result<Command, ExecError> {
        let Some(program) = spec.argv.first() else {
            return Err(ExecError::EmptyCommand {
                root: root.to_owned(),
            });
        };
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Call {
                root: root.to_owned(),
                spec: spec.clone(),
            });
        let mut cmd = Command::new(program);
        cmd.args(&spec.argv[1..])
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(root.join(spec.cwd.trim_start_matches('/')));
        Ok(cmd)
    }

    fn name(&self) -> &'static str {
        "recording (no isolation)"
    }
}
