//! Shared set-up for the suites that run documents for real: a busybox
//! root (optionally with the host's bash copied in) and bubblewrap.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_sandbox::{Bubblewrap, Root};
use kiln_toe::{ArtifactStore, Execution, Instance, Quiet, RunOptions};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub root_dir: PathBuf,
}

impl Fixture {
    /// A fresh busybox root in a temporary directory.
    pub fn busybox() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root_dir = dir.path().join("root");
        kiln_sandbox::busybox::assemble(&root_dir).unwrap();
        Fixture { dir, root_dir }
    }

    /// A busybox root with the host's /bin/bash and the libraries it links.
    pub fn with_bash() -> Fixture {
        let f = Fixture::busybox();
        kiln_sandbox::busybox::add_host_program(&f.root_dir, Path::new("/bin/bash")).unwrap();
        f
    }

    pub fn instance(&self, allow_sh: bool) -> Instance {
        self.instance_at(&self.root_dir, allow_sh)
    }

    pub fn instance_at(&self, root: &Path, allow_sh: bool) -> Instance {
        Instance {
            root: Root::open(root).unwrap(),
            isolation: Arc::new(Bubblewrap::detect().unwrap()),
            hostname: "kiln-test".into(),
            workdir: "/".into(),
            env: Vec::new(),
            allow_sh,
            netns: None,
        }
    }

    pub fn options(&self) -> RunOptions {
        RunOptions {
            log_root: self.dir.path().join("logs"),
            artifacts: Some(ArtifactStore {
                bucket: "kiln-artifacts".into(),
                dir: self.dir.path().join("artifacts"),
                prefix: String::new(),
            }),
            ..Default::default()
        }
    }

    /// Writes `yaml` next to the root and runs it.
    pub fn run_doc(&self, yaml: &str) -> Execution {
        self.run_with(yaml, &self.instance(false), &self.options())
    }

    pub fn run_with(&self, yaml: &str, instance: &Instance, opts: &RunOptions) -> Execution {
        let path = self.write_doc("doc.yaml", yaml);
        let doc = kiln_toe::load(&path).unwrap_or_else(|e| panic!("{e}"));
        kiln_toe::run(&[doc], instance, opts, &mut Quiet).unwrap()
    }

    pub fn write_doc(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        path
    }

    pub fn file(&self, in_root: &str) -> String {
        std::fs::read_to_string(self.root_dir.join(in_root.trim_start_matches('/'))).unwrap()
    }
}

/// (phase, step) -> record, for assertions.
pub fn step<'a>(e: &'a Execution, phase: &str, name: &str) -> &'a kiln_toe::StepRecord {
    e.steps()
        .find(|(_, p, s)| p.name == phase && s.name == name)
        .map(|(_, _, s)| s)
        .unwrap_or_else(|| {
            panic!(
                "no step {phase}/{name} ran; steps: {:?}",
                e.steps()
                    .map(|(_, p, s)| format!("{}/{}", p.name, s.name))
                    .collect::<Vec<_>>()
            )
        })
}

pub fn outputs(record: &kiln_toe::StepRecord) -> serde_json::Value {
    serde_json::from_str(&record.outputs).unwrap()
}
