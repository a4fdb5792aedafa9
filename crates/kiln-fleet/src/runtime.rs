//! Where instances run. The controller decides what to launch and stop;
//! a [`Runtime`] carries it out. [`Namespaces`] runs instances on this
//! machine: an overlay of the image's layers with a writable layer of the
//! instance's own, started isolated in namespaces of its own (network
//! included) by the sandbox, and cleaned up again. [`crate::vm::Vm`] runs
//! them as virtual machines, and [`Drivers`] hands each instance to the
//! one its group or launch template names. Tests above this line drive the
//! controller with a runtime of their own.

use std::collections::HashSet;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_image::Store;
use kiln_sandbox::instance::{InstanceIdentity, InstanceSpec, RunningInstance};
use kiln_sandbox::netns::Connector;

use crate::model::{Driver, Group, Instance, Template};
use crate::vm::Vm;

/// The image label that says it was baked to boot its own init (kiln-bake's
/// `LABEL_INIT`; not imported, the fleet does not depend on the bake).
const LABEL_INIT: &str = "dev.kiln.init";

/// The operations the fleet needs from whatever runs its instances. Every
/// method blocks: the controller calls them from blocking threads.
pub trait Runtime: Send + Sync {
    /// Starts instance `id` of `group` from `template`, with its files
    /// under `dir`.
    fn launch(
        &self,
        id: &str,
        dir: &Path,
        group: &Group,
        template: &Template,
    ) -> Result<Arc<dyn Machine>, RuntimeError>;
    /// Re-attaches to an instance a previous daemon started, if its
    /// process is still the one on record.
    fn adopt(&self, instance: &Instance) -> Option<Arc<dyn Machine>>;
    /// Removes an instance's files; harmless when they are gone.
    fn cleanup(&self, dir: &Path);
    /// Stops every process under `instances_dir` that none of `live`
    /// owns, and removes the directories none of them owns.
    fn reap(&self, instances_dir: &Path, live: &[(String, Arc<dyn Machine>)]);
    /// Drops what the runtime keeps per image (such as a VM's bootable
    /// disk) for images other than those in `keep` (digests).
    fn keep_images(&self, _keep: &HashSet<String>) {}
}

/// One running instance.
pub trait Machine: Send + Sync {
    /// What the database keeps so that a later daemon can adopt it.
    fn identity(&self) -> InstanceIdentity;
    fn is_alive(&self) -> bool;
    /// A connection to `port` of the instance's network.
    fn connect(&self, port: u16, timeout: Duration) -> std::io::Result<TcpStream>;
    /// Stops it and removes its files.
    fn stop(&self, grace: Duration);
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("instance {id}: {what}: {error}")]
    Instance {
        id: String,
        what: &'static str,
        error: String,
    },
}

fn err(id: &str, what: &'static str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Instance {
        id: id.to_string(),
        what,
        error: e.to_string(),
    }
}

/// Instances in namespaces of this machine, rooted in the image store's
/// layers.
pub struct Namespaces {
    store: Store,
}

impl Namespaces {
    pub fn new(store: Store) -> Namespaces {
        Namespaces { store }
    }
}

impl Runtime for Namespaces {
    fn launch(
        &self,
        id: &str,
        dir: &Path,
        group: &Group,
        template: &Template,
    ) -> Result<Arc<dyn Machine>, RuntimeError> {
        Ok(Arc::new(launch(&self.store, dir, id, group, template)?))
    }

    fn adopt(&self, instance: &Instance) -> Option<Arc<dyn Machine>> {
        let identity = InstanceIdentity {
            pid: instance.pid,
            start_time: instance.start_time,
            init_pid: instance.init_pid,
        };
        if identity.pid == 0 {
            return None;
        }
        let live = adopt(&instance.id, Path::new(&instance.dir), identity)?;
        Some(Arc::new(live))
    }

    fn cleanup(&self, dir: &Path) {
        cleanup(dir)
    }

    fn reap(&self, instances_dir: &Path, live: &[(String, Arc<dyn Machine>)]) {
        let live_pids: HashSet<u32> = live.iter().map(|(_, m)| m.identity().pid).collect();
        for p in kiln_sandbox::instance::processes_with_root_below(instances_dir) {
            if !live_pids.contains(&p.pid) {
                tracing::warn!(pid = p.pid, "killing an instance process nobody owns");
                if let Err(e) = kiln_sandbox::instance::kill_orphan(&p) {
                    tracing::error!(pid = p.pid, error = %e, "an instance process nobody owns could not be killed");
                }
            }
        }
        let owned: HashSet<&str> = live.iter().map(|(id, _)| id.as_str()).collect();
        if let Ok(entries) = std::fs::read_dir(instances_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !owned.contains(name.as_str()) {
                    tracing::warn!(dir = %entry.path().display(), "removing an instance directory nobody owns");
                    cleanup(&entry.path());
                }
            }
        }
    }
}

/// Each instance on the driver its group names, else its launch template.
pub struct Drivers {
    namespaces: Namespaces,
    vm: Vm,
}

impl Drivers {
    /// Both drivers on the image store in `state_dir/images`.
    pub fn open(state_dir: &Path) -> Result<Drivers, kiln_image::StoreError> {
        let images = state_dir.join("images");
        Ok(Drivers {
            namespaces: Namespaces::new(Store::open(&images)?),
            vm: Vm::new(Store::open(&images)?, state_dir),
        })
    }
}

impl Runtime for Drivers {
    fn launch(
        &self,
        id: &str,
        dir: &Path,
        group: &Group,
        template: &Template,
    ) -> Result<Arc<dyn Machine>, RuntimeError> {
        match group.spec.driver.unwrap_or(template.spec.driver) {
            Driver::Namespaces => self.namespaces.launch(id, dir, group, template),
            Driver::Vm => self.vm.launch(id, dir, group, template),
        }
    }

    fn adopt(&self, instance: &Instance) -> Option<Arc<dyn Machine>> {
        if Vm::owns(Path::new(&instance.dir)) {
            self.vm.adopt(instance)
        } else {
            self.namespaces.adopt(instance)
        }
    }

    fn cleanup(&self, dir: &Path) {
        cleanup(dir)
    }

    /// VMs first: the namespaces' reaper then removes every directory
    /// nobody owns, of either kind.
    fn reap(&self, instances_dir: &Path, live: &[(String, Arc<dyn Machine>)]) {
        self.vm.kill_unowned(instances_dir, live);
        self.namespaces.reap(instances_dir, live);
    }

    fn keep_images(&self, keep: &HashSet<String>) {
        self.vm.prune_disks(keep);
    }
}

/// A started or adopted instance in namespaces of this machine.
struct Live {
    id: String,
    running: RunningInstance,
    connector: Connector,
    dir: PathBuf,
}

impl Machine for Live {
    fn identity(&self) -> InstanceIdentity {
        self.running.identity
    }

    fn is_alive(&self) -> bool {
        self.running.is_alive()
    }

    fn connect(&self, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
        self.connector
            .connect(port, timeout)
            .map_err(std::io::Error::other)
    }

    fn stop(&self, grace: Duration) {
        if let Err(e) = self.running.stop(grace) {
            tracing::warn!("stopping instance {}: {e}", self.id);
        }
        cleanup(&self.dir);
    }
}

/// `i-` and 17 hex digits, as EC2 names instances.
pub fn new_instance_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("i-{}", &hex[..17])
}

/// Mounts the instance's root and starts it.
fn launch(
    store: &Store,
    dir: &Path,
    id: &str,
    group: &Group,
    template: &Template,
) -> Result<Live, RuntimeError> {
    let dir = dir.to_path_buf();
    // Resolved once, under the store lock, so that garbage collection
    // cannot remove the image between its layers and its config.
    let (lowers, config) = {
        let _lock = store.lock().map_err(|e| err(id, "image store", e))?;
        let image = store
            .resolve(&template.image_digest)
            .map_err(|e| err(id, "image", e))?;
        let manifest = store.manifest(&image).map_err(|e| err(id, "image", e))?;
        let lowers = kiln_image::import::unpack_layers(store, &manifest)
            .map_err(|e| err(id, "image layers", e))?;
        let config = store
            .config(&manifest)
            .map_err(|e| err(id, "image config", e))?;
        (lowers, config)
    };
    let top_first: Vec<&Path> = lowers.iter().rev().map(PathBuf::as_path).collect();
    let mount = kiln_sandbox::OverlayMount::mount(
        &top_first,
        &dir.join("upper"),
        &dir.join("work"),
        &dir.join("merged"),
    )
    .map_err(|e| err(id, "mount", e))?;
    // The mount outlives this process on purpose: a restarted daemon
    // adopts the instance with its root still in place.
    std::mem::forget(mount);
    let merged = dir.join("merged");
    let c = config.config().clone().unwrap_or_default();
    let boot = match template.spec.init {
        Some(init) => init == crate::model::Init::Systemd,
        None => c
            .labels()
            .as_ref()
            .and_then(|l| l.get(LABEL_INIT))
            .is_some_and(|v| v == "systemd"),
    };
    let argv: Vec<String> = match (&template.spec.entrypoint, &template.spec.cmd) {
        // Boot mode runs the image's init; an entrypoint given by the
        // template replaces it (a different init, or init arguments).
        _ if boot && template.spec.entrypoint.is_none() => vec!["/sbin/init".to_string()],
        (Some(e), cmd) => e.iter().chain(cmd.iter().flatten()).cloned().collect(),
        (None, Some(cmd)) => c
            .entrypoint()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .chain(cmd.iter().cloned())
            .collect(),
        (None, None) => c
            .entrypoint()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .chain(c.cmd().clone().unwrap_or_default())
            .collect(),
    };
    if argv.is_empty() {
        cleanup(&dir);
        return Err(err(
            id,
            "entrypoint",
            "the image has no entrypoint or cmd and the template gives none",
        ));
    }
    let mut env: Vec<(String, String)> = c
        .env()
        .clone()
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.split_once('=').map(|(k, v)| (k.into(), v.into())))
        .collect();
    env.extend(
        template
            .spec
            .env
            .iter()
            .chain(&template.spec.secrets)
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    env.extend([
        ("KILN_INSTANCE_ID".to_string(), id.to_string()),
        ("KILN_GROUP".to_string(), group.name.clone()),
        ("KILN_TEMPLATE".to_string(), template.name.clone()),
        (
            "KILN_TEMPLATE_VERSION".to_string(),
            template.version.to_string(),
        ),
        ("KILN_IMAGE".to_string(), template.image.clone()),
    ]);
    for (k, v) in &template.tags {
        let key: String = k
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        env.push((format!("KILN_TAG_{key}"), v.clone()));
    }
    // Instance metadata as a file, as EC2 serves it from its endpoint.
    let metadata = serde_json::json!({
        "instance-id": id, "group": group.name, "template": template.name, "template-version": template.version,
        "image": template.image, "image-digest": template.image_digest, "tags": template.tags, "port": group.spec.port,
    });
    let root = kiln_sandbox::Root::open(&merged).map_err(|e| err(id, "root", e))?;
    root.create_dir_all("/run/kiln", 0o755)
        .map_err(|e| err(id, "metadata", e))?;
    root.write(
        "/run/kiln/metadata.json",
        serde_json::to_string_pretty(&metadata)
            .unwrap_or_default()
            .as_bytes(),
        0o644,
        false,
    )
    .map_err(|e| err(id, "metadata", e))?;
    let spec = InstanceSpec {
        id: id.to_string(),
        root: merged.clone(),
        argv,
        env,
        cwd: c
            .working_dir()
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        hostname: id.to_string(),
        log_dir: dir.join("logs"),
        memory_max: template.spec.memory_max,
        pids_max: template.spec.pids_max,
        boot,
    };
    std::fs::create_dir_all(&spec.log_dir).map_err(|e| err(id, "logs", e))?;
    let running = match RunningInstance::start(&spec) {
        Ok(r) => r,
        Err(e) => {
            cleanup(&dir);
            return Err(err(id, "start", e));
        }
    };
    let connector = running
        .netns()
        .connector()
        .map_err(|e| err(id, "network namespace", e))?;
    Ok(Live {
        id: id.to_string(),
        running,
        connector,
        dir,
    })
}

/// Re-attaches to an instance a previous daemon started.
fn adopt(id: &str, dir: &Path, identity: InstanceIdentity) -> Option<Live> {
    let running = RunningInstance::adopt(identity).ok()??;
    let connector = running.netns().connector().ok()?;
    Some(Live {
        id: id.to_string(),
        running,
        connector,
        dir: dir.to_path_buf(),
    })
}

/// Unmounts and removes an instance's directory; harmless when it is gone.
pub(crate) fn cleanup(dir: &Path) {
    // Every mount at its root, stacked ones included.
    kiln_sandbox::mounts::unmount_below(&dir.join("merged"));
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("removing {}: {e}", dir.display());
    }
}
