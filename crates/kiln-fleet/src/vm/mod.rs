//! The `vm` driver: each instance is a virtual machine that boots the
//! template's image exported as a bootable disk.
//!
//! qemu runs it under UEFI firmware (OVMF), with KVM when the host's KVM
//! passes a probe and under software emulation otherwise, on a
//! copy-on-write overlay of the image's disk. User-mode networking
//! forwards a loopback port of the host to the group's port in the guest:
//! that port is how health checks and the load balancer reach it. The
//! serial console is the instance's log, and a config drive carries its
//! metadata (see [`metadata`]).
//!
//! A later daemon adopts a VM by the qemu pid and start time on record in
//! the database, checked against `vm.json` in the instance's directory,
//! which also keeps the forwarded port.

pub mod disk;
pub mod host;
pub mod metadata;
mod qemu;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_image::Store;
use kiln_sandbox::instance::InstanceIdentity;
use serde::{Deserialize, Serialize};

use crate::model::{Group, Instance, Template};
use crate::runtime::{Machine, Runtime, RuntimeError};
use qemu::Paths;

/// Memory of a VM whose template sets no `memory_max`.
pub const DEFAULT_MEMORY_MIB: u64 = 1024;
/// Below this a Linux distribution with systemd does not boot.
const MIN_MEMORY_MIB: u64 = 128;
const MIB: u64 = 1024 * 1024;

/// How long a VM has to exit once SIGKILLed.
const KILL_PATIENCE: Duration = Duration::from_secs(5);

/// Virtual machines, their disks cached under `state_dir/vm`.
pub struct Vm {
    store: Store,
    dir: PathBuf,
}

/// What `vm.json` keeps about a running VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    pid: u32,
    start_time: u64,
    /// The loopback port forwarded to the group's port in the guest.
    host_port: u16,
    accel: String,
}

fn err(id: &str, what: &'static str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Instance {
        id: id.to_string(),
        what,
        error: e.to_string(),
    }
}

impl Vm {
    pub fn new(store: Store, state_dir: &Path) -> Vm {
        Vm {
            store,
            dir: state_dir.join("vm"),
        }
    }

    fn disks(&self) -> PathBuf {
        self.dir.join("disks")
    }

    /// Whether the instance in `dir` is a VM (it has a record).
    pub fn owns(dir: &Path) -> bool {
        Paths {
            dir: dir.to_path_buf(),
        }
        .record()
        .exists()
    }

    /// SIGKILLs every qemu started for an instance under `instances_dir`
    /// that none of `live` owns.
    pub fn kill_unowned(&self, instances_dir: &Path, live: &[(String, Arc<dyn Machine>)]) {
        let owned: HashSet<u32> = live.iter().map(|(_, m)| m.identity().pid).collect();
        for (pid, _) in qemu::processes_below(instances_dir) {
            if !owned.contains(&pid) {
                tracing::warn!(pid, "killing a virtual machine nobody owns");
                qemu::kill(pid);
            }
        }
    }

    /// Removes the cached disks of images none of `keep` (digests) is.
    pub fn prune_disks(&self, keep: &HashSet<String>) {
        disk::prune(&self.disks(), keep);
    }

    fn start(
        &self,
        id: &str,
        paths: &Paths,
        group: &Group,
        template: &Template,
    ) -> Result<VmMachine, RuntimeError> {
        host::check().map_err(|e| err(id, "host", e))?;
        let memory_mib = template
            .spec
            .memory_max
            .map_or(DEFAULT_MEMORY_MIB, |bytes| bytes / MIB);
        if memory_mib < MIN_MEMORY_MIB {
            return Err(err(
                id,
                "memory",
                format!(
                    "launch template {} version {}: memory_max {} MiB is below the {MIN_MEMORY_MIB} MiB a virtual machine needs",
                    template.name, template.version, memory_mib
                ),
            ));
        }
        let accel = host::accel(&self.dir);
        let base = disk::base_disk(&self.disks(), &self.store, &template.image_digest)
            .map_err(|e| err(id, "bootable disk", e))?;
        std::fs::create_dir_all(paths.logs()).map_err(|e| err(id, "instance directory", e))?;
        disk::create_overlay(&base, &paths.disk()).map_err(|e| err(id, "disk", e))?;
        std::fs::copy(host::OVMF_VARS, paths.vars()).map_err(|e| {
            err(
                id,
                "firmware variables",
                format!("{}: {e}", host::OVMF_VARS),
            )
        })?;
        metadata::write_drive(&paths.meta(), &metadata::files(id, group, template))
            .map_err(|e| err(id, "config drive", e))?;
        // The port is free when picked and taken by qemu a moment later;
        // another process may take it in between, which qemu reports as a
        // forwarding it could not set up: then another port is tried.
        let mut attempt = 0;
        let (started, host_port) = loop {
            attempt += 1;
            let host_port = free_port().map_err(|e| err(id, "a loopback port", e))?;
            let header = format!(
                "kiln: instance {id}: virtual machine, {}; {memory_mib} MiB; 127.0.0.1:{host_port} forwarded to guest port {}\n",
                accel.why, group.spec.port
            );
            append(&paths.console(), &header).map_err(|e| err(id, "console log", e))?;
            let spec = qemu::Spec {
                paths,
                kvm: accel.kvm,
                memory_mib,
                host_port,
                guest_port: group.spec.port,
            };
            match qemu::start(&spec) {
                Ok(started) => break (started, host_port),
                Err(e) if e.contains("host forwarding") && attempt < 3 => {
                    tracing::warn!(instance = %id, port = host_port, "port taken meanwhile, trying another: {e}");
                }
                Err(e) => return Err(err(id, "qemu", e)),
            }
        };
        let Some((_, start_time)) = qemu::stat(started.pid) else {
            let exit = *started.exit.lock().unwrap_or_else(|p| p.into_inner());
            let said = std::fs::read_to_string(paths.stderr()).unwrap_or_default();
            return Err(err(
                id,
                "qemu",
                format!("it exited at once ({exit:?}): {}", said.trim()),
            ));
        };
        let record = Record {
            pid: started.pid,
            start_time,
            host_port,
            accel: accel.name().into(),
        };
        let machine = VmMachine {
            id: id.to_string(),
            record,
            dir: paths.dir.clone(),
            exit: Some(started.exit),
        };
        let json = serde_json::to_vec_pretty(&machine.record).unwrap_or_default();
        if let Err(e) = std::fs::write(paths.record(), json) {
            machine.stop(Duration::ZERO);
            return Err(err(id, "vm.json", e));
        }
        tracing::info!(instance = %id, pid = started.pid, port = host_port, accel = accel.name(), memory_mib, "virtual machine started");
        Ok(machine)
    }
}

impl Runtime for Vm {
    fn launch(
        &self,
        id: &str,
        dir: &Path,
        group: &Group,
        template: &Template,
    ) -> Result<Arc<dyn Machine>, RuntimeError> {
        let paths = Paths {
            dir: dir.to_path_buf(),
        };
        match self.start(id, &paths, group, template) {
            Ok(machine) => Ok(Arc::new(machine)),
            Err(e) => {
                // What qemu said stays in the daemon's log: the directory
                // with its logs goes.
                tracing::error!(instance = %id, "{e}");
                crate::runtime::cleanup(dir);
                Err(e)
            }
        }
    }

    fn adopt(&self, instance: &Instance) -> Option<Arc<dyn Machine>> {
        let dir = PathBuf::from(&instance.dir);
        let paths = Paths { dir: dir.clone() };
        let record: Record = serde_json::from_slice(&std::fs::read(paths.record()).ok()?).ok()?;
        // The database and the directory agree, and /proc shows that same
        // process (a reused pid has another start time).
        if record.pid != instance.pid
            || record.start_time != instance.start_time
            || !qemu::alive(record.pid, record.start_time)
        {
            return None;
        }
        Some(Arc::new(VmMachine {
            id: instance.id.clone(),
            record,
            dir,
            exit: None,
        }))
    }

    fn cleanup(&self, dir: &Path) {
        crate::runtime::cleanup(dir)
    }

    fn reap(&self, instances_dir: &Path, live: &[(String, Arc<dyn Machine>)]) {
        self.kill_unowned(instances_dir, live);
        let owned: HashSet<&str> = live.iter().map(|(id, _)| id.as_str()).collect();
        if let Ok(entries) = std::fs::read_dir(instances_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !owned.contains(name.as_str()) {
                    tracing::warn!(dir = %entry.path().display(), "removing an instance directory nobody owns");
                    crate::runtime::cleanup(&entry.path());
                }
            }
        }
    }
}

/// A started or adopted VM.
struct VmMachine {
    id: String,
    record: Record,
    dir: PathBuf,
    /// How qemu exited, seen by the thread that waits on it; only for a
    /// VM this daemon started.
    exit: Option<Arc<Mutex<Option<ExitStatus>>>>,
}

impl Machine for VmMachine {
    fn identity(&self) -> InstanceIdentity {
        InstanceIdentity {
            pid: self.record.pid,
            start_time: self.record.start_time,
            init_pid: self.record.pid,
        }
    }

    fn is_alive(&self) -> bool {
        qemu::alive(self.record.pid, self.record.start_time)
    }

    fn connect(&self, _port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
        // The group's port is forwarded to this one when qemu starts.
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.record.host_port));
        TcpStream::connect_timeout(&addr, timeout)
    }

    /// The power button first (ACPI, through QMP), SIGKILL after `grace`.
    fn stop(&self, grace: Duration) {
        let paths = Paths {
            dir: self.dir.clone(),
        };
        let (pid, start) = (self.record.pid, self.record.start_time);
        if qemu::alive(pid, start) && !grace.is_zero() {
            match qemu::powerdown(&paths.qmp()) {
                Ok(()) => {
                    wait_until(grace, || !qemu::alive(pid, start));
                }
                Err(e) => {
                    tracing::warn!(instance = %self.id, "asking the virtual machine to power down: {e}")
                }
            }
        }
        if qemu::alive(pid, start) {
            qemu::kill(pid);
            if !wait_until(KILL_PATIENCE, || !qemu::alive(pid, start)) {
                tracing::error!(instance = %self.id, pid, "the virtual machine's qemu did not end after SIGKILL");
            }
        }
        if let Some(exit) = &self.exit
            && let Some(status) = *exit.lock().unwrap_or_else(|p| p.into_inner())
        {
            tracing::info!(instance = %self.id, "qemu {status}");
        }
        crate::runtime::cleanup(&self.dir);
    }
}

fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
}
