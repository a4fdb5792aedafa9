//! The machine every test here starts from: debian:bookworm with systemd
//! as init, Debian's cloud kernel (the one Debian's own AMIs boot, made for
//! virtual machines: under software emulation it boots about a fifth
//! faster than the generic kernel) and initramfs, busybox and curl, and DHCP on
//! the first Ethernet interface through systemd-networkd, baked once per
//! target directory. Each test bakes its own
//! `web` versions on it: a component that installs busybox httpd as a
//! systemd unit, enables it in build, checks `systemctl is-enabled` in
//! validate and `systemctl is-active` plus an HTTP request in test, as the
//! reference pipeline's Linux component does.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::common::{kiln, ok};

/// The port the web service listens on inside the machine.
pub const WEB_PORT: u16 = 8080;

const BASE_COMPONENT: &str = r#"name: machine-base
description: A bootable Debian machine with systemd as init.
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: Install
        action: ExecuteBash
        inputs:
          commands:
            - export DEBIAN_FRONTEND=noninteractive
            - apt-get update
            - apt-get install -y --no-install-recommends systemd-sysv linux-image-cloud-amd64 initramfs-tools busybox curl
            - rm -rf /var/lib/apt/lists/*
      - name: Network
        action: CreateFile
        inputs:
          - path: /etc/systemd/network/80-dhcp.network
            content: |
              [Match]
              Name=en* eth*

              [Network]
              DHCP=yes
      - name: EnableNetwork
        action: ExecuteBash
        inputs:
          commands:
            - systemctl enable systemd-networkd
            - echo machine > /etc/hostname
  - name: validate
    steps:
      - name: Kernel
        action: ExecuteBash
        inputs:
          commands:
            - ls /boot/vmlinuz-* /boot/initrd.img-*
            - test -x /sbin/init
"#;

pub const WEB_COMPONENT: &str = r#"name: web-service
description: busybox httpd as a systemd unit.
schemaVersion: 1.0
parameters:
  - Greeting:
      type: string
  - Port:
      type: string
phases:
  - name: build
    steps:
      - name: Content
        action: ExecuteBash
        inputs:
          commands:
            - mkdir -p /srv/www
            - echo '{{ Greeting }}' > /srv/www/index.html
            - echo ok > /srv/www/health
      - name: Unit
        action: CreateFile
        inputs:
          - path: /etc/systemd/system/web.service
            content: |
              [Unit]
              Description=web
              After=network.target

              [Service]
              # Not simple, which is active between fork and exec: a
              # missing program would show active for that moment.
              Type=exec
              ExecStart=/bin/busybox httpd -f -p {{ Port }} -h /srv/www
              Restart=always

              [Install]
              WantedBy=multi-user.target
      - name: Enable
        action: ExecuteBash
        inputs:
          commands:
            - systemctl enable web.service
  - name: validate
    steps:
      - name: Enabled
        action: ExecuteBash
        inputs:
          commands:
            - systemctl is-enabled web.service
  - name: test
    steps:
      - name: Active
        action: ExecuteBash
        inputs:
          commands:
            - systemctl is-active web.service
      - name: Answers
        action: ExecuteBash
        inputs:
          commands:
            # systemd calls the service active once httpd is executing,
            # a moment before it listens.
            - curl -fsS --retry 20 --retry-connrefused --retry-delay 1 http://127.0.0.1:{{ Port }}/index.html | grep -x '{{ Greeting }}'
"#;

/// The state directory the base machine was baked in, whose store holds
/// `machine/1.0.0`; baked on first use. A lock file keeps concurrent tests
/// (and test binaries) from baking it twice.
fn base_machine() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-machines");
    std::fs::create_dir_all(&root).unwrap();
    let lock = File::create(root.join("lock")).unwrap();
    lock.lock().unwrap();
    // Named for what it holds: a change to the base component needs a new
    // name, not a stale cache.
    let kept = root.join("base-state-2");
    if kept.exists() {
        return kept;
    }
    let work = root.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("base.yaml"), BASE_COMPONENT).unwrap();
    let recipe = work.join("recipe.yaml");
    std::fs::write(
        &recipe,
        "name: machine\nversion: 1.0.0\nparent: debian:bookworm\ncomponents:\n  - path: base.yaml\n",
    )
    .unwrap();
    let state = work.join("state");
    let out = ok(kiln(&state, &["bake", recipe.to_str().unwrap()]));
    assert!(out.contains("available"), "{out}");
    std::fs::rename(&state, &kept).unwrap();
    let _ = std::fs::remove_dir_all(&work);
    kept
}

/// A new state directory at `state` holding a copy of the base machine's
/// store (`machine/1.0.0`), for recipes with `parent: kiln:machine/1.0.0`.
pub fn base_state(state: &Path) {
    let kept = base_machine();
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(&kept)
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a `web` recipe adds to its fields, such as how its test gate
/// boots the instance.
pub const WEB_RECIPE_EXTRA: &str = "init: systemd\n";

/// Bakes `web/VERSION` into `state`'s store on the base machine: the web
/// service answering `greeting` on [`WEB_PORT`]. `extra` is appended to
/// the recipe.
pub fn bake_web(dir: &Path, state: &Path, version: &str, greeting: &str, extra: &str) -> String {
    if !state.exists() {
        base_state(state);
    }
    std::fs::write(dir.join("web-service.yaml"), WEB_COMPONENT).unwrap();
    let recipe = dir.join(format!("web-{version}.yaml"));
    std::fs::write(
        &recipe,
        format!(
            "name: web\nversion: {version}\nparent: kiln:machine/1.0.0\ncomponents:\n  - path: web-service.yaml\n    parameters: {{ Greeting: {greeting}, Port: \"{WEB_PORT}\" }}\nport: {WEB_PORT}\n{WEB_RECIPE_EXTRA}{extra}"
        ),
    )
    .unwrap();
    let out = ok(kiln(state, &["bake", recipe.to_str().unwrap()]));
    assert!(out.contains("available"), "{out}");
    out
}
