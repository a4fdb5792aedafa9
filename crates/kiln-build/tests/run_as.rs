//! `run-as`, top-level and per phase: the commands run as that Linux user
//! of the build image, and what they write is the user's. The build image
//! is a busybox root with the host's setpriv (util-linux) added, as every
//! Debian, Ubuntu and Amazon Linux image has it, and one more user.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_build::{BuildError, BuildOptions, NoObserver, PhaseStatus, buildspec};

struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new(setpriv: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        kiln_sandbox::busybox::assemble(&root).unwrap();
        if setpriv {
            kiln_sandbox::busybox::add_host_program(&root, Path::new("/usr/bin/setpriv"))
                .expect("/usr/bin/setpriv (util-linux, which scripts/deps.sh installs)");
        }
        let mut passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
        passwd.push_str("builder:x:1500:1500:builder:/home/builder:/bin/sh\n");
        fs::write(root.join("etc/passwd"), passwd).unwrap();
        let mut group = fs::read_to_string(root.join("etc/group")).unwrap();
        group.push_str("builder:x:1500:\ntools:x:1501:builder\n");
        fs::write(root.join("etc/group"), group).unwrap();
        let source = dir.path().join("source");
        fs::create_dir_all(&source).unwrap();
        fs::write(source.join("app.txt"), "app source\n").unwrap();
        Fixture { dir, root }
    }

    fn run(&self, yaml: &str) -> Result<kiln_build::BuildReport, BuildError> {
        let mut opts = BuildOptions::new(
            self.root.clone(),
            self.dir.path().join("source"),
            self.dir.path().join("ws"),
            self.dir.path().join("out"),
        )
        .unwrap();
        opts.log_path = Some(self.dir.path().join("build.log"));
        let spec =
            buildspec::parse(yaml, Path::new("buildspec.yml")).unwrap_or_else(|e| panic!("{e}"));
        kiln_build::run(&spec, &opts, &mut NoObserver)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("build.log")).unwrap_or_default()
    }
}

#[test]
fn commands_run_as_the_named_user_and_a_phase_may_name_its_own() {
    let f = Fixture::new(true);
    let report = f
        .run(
            r#"
version: 0.2
run-as: builder
phases:
  install:
    commands:
      - echo "install runs as $(id -un) in $(id -Gn)"
      - touch /tmp/mine && echo "/tmp/mine belongs to $(stat -c %U:%G /tmp/mine)"
      - echo "reads $(cat app.txt)"
      - if touch not-mine 2>/dev/null; then echo wrote-source; else echo source-read-only; fi
      - mkdir -p "$CODEBUILD_SRC_DIR/../nowhere" 2>/dev/null || echo cannot-climb
  build:
    run-as: root
    commands:
      - echo "build runs as $(id -un)"
      - id -u > built-by
"#,
        )
        .unwrap();
    let log = f.log();
    assert!(report.succeeded, "{log}");
    assert!(
        log.contains("install runs as builder in builder tools\n"),
        "{log}"
    );
    assert!(
        log.contains("/tmp/mine belongs to builder:builder\n"),
        "{log}"
    );
    assert!(log.contains("reads app source\n"), "{log}");
    assert!(log.contains("source-read-only\n"), "{log}");
    assert!(log.contains("build runs as root\n"), "{log}");
    assert_eq!(
        fs::read_to_string(f.dir.path().join("ws/src/built-by")).unwrap(),
        "0\n"
    );
    assert!(
        report
            .phases
            .iter()
            .all(|p| p.status == PhaseStatus::Succeeded)
    );
}

#[test]
fn an_unknown_user_or_an_image_without_setpriv_is_refused_naming_the_line() {
    let f = Fixture::new(true);
    let e = f
        .run("version: 0.2\nphases:\n  build:\n    run-as: ghost\n    commands: [\"echo ran\"]\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("buildspec.yml:4:13: run-as: \"ghost\": no such user in the build image"),
        "{e}"
    );
    assert!(!f.log().contains("ran"), "nothing ran: {}", f.log());

    let bare = Fixture::new(false);
    let e = bare
        .run("version: 0.2\nrun-as: builder\nphases:\n  build:\n    commands: [\"echo ran\"]\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("buildspec.yml:2:9: run-as: \"builder\": the build image")
            && e.contains("has no setpriv that changes users")
            && e.contains("install util-linux"),
        "{e}"
    );
}

#[test]
fn links_left_by_an_earlier_phase_do_not_give_the_user_host_files() {
    // A root phase leaves links to a host file in the directories kiln
    // hands to the run-as user; the host file stays root's, mode and all.
    let f = Fixture::new(true);
    let host_file = f.dir.path().join("host-secret");
    fs::write(&host_file, "root's\n").unwrap();
    fs::set_permissions(
        &host_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let target = host_file.display().to_string();
    let report = f
        .run(&format!(
            r#"
version: 0.2
phases:
  install:
    commands:
      - ln -s {target} /codebuild/kiln/link-in-state
      - ln -s {target} link-in-source
  build:
    run-as: builder
    commands:
      - echo "build runs as $(id -un)"
"#
        ))
        .unwrap();
    assert!(report.succeeded, "{}", f.log());
    let meta = fs::metadata(&host_file).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}
