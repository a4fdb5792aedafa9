//! Bootable disks: `kiln images export --bootable` writes a disk that
//! qemu boots with UEFI firmware (Debian's OVMF) without kiln, and whose
//! service answers on a forwarded port. qemu is started here, as a user
//! would start it; under software emulation the boot takes minutes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{kiln, ok};
use crate::fixture;

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const ROOT_X86_64_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// Software emulation on a shared machine: firmware, kernel, systemd and
/// DHCP take minutes, not seconds.
const BOOT_DEADLINE: Duration = Duration::from_secs(12 * 60);

#[test]
fn a_bootable_disk_boots_in_qemu_with_uefi_and_serves_http() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let state = dir.join("state");
    fixture::bake_web(dir, &state, "1.0.0", "hello-from-disk", "");

    // The raw disk: a GPT with the ESP and an x86-64 root partition, as
    // sfdisk reads it; the boot entry names the root partition's GUID.
    let raw = dir.join("web.raw");
    let out = ok(kiln(
        &state,
        &[
            "images",
            "export",
            "web/1.0.0",
            "--format",
            "raw",
            "--bootable",
            raw.to_str().unwrap(),
        ],
    ));
    assert!(out.contains("bootable raw disk"), "{out}");
    let table = sfdisk_json(&raw);
    let table = &table["partitiontable"];
    assert_eq!(table["label"], "gpt", "{table}");
    let parts = table["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{table}");
    assert_eq!(parts[0]["type"], ESP_TYPE, "{table}");
    assert_eq!(parts[1]["type"], ROOT_X86_64_TYPE, "{table}");
    assert_eq!(
        parts[0]["start"], 2048,
        "partitions start at 1 MiB: {table}"
    );
    let root_uuid = parts[1]["uuid"].as_str().unwrap().to_lowercase();
    assert!(
        out.contains(&format!("PARTUUID={root_uuid}")),
        "{out}\n{table}"
    );
    let esp_offset = parts[0]["start"].as_u64().unwrap() * 512;
    let entry = mtype(&raw, esp_offset, "::/loader/entries/kiln.conf");
    assert!(
        entry.contains(&format!("root=PARTUUID={root_uuid}")),
        "{entry}"
    );
    assert!(entry.contains("console=ttyS0"), "{entry}");
    std::fs::remove_file(&raw).unwrap();

    // The qcow2 disk boots, with nothing of kiln's running.
    let disk = dir.join("web.qcow2");
    let out = ok(kiln(
        &state,
        &[
            "images",
            "export",
            "web/1.0.0",
            "--format",
            "qcow2",
            "--bootable",
            disk.to_str().unwrap(),
        ],
    ));
    assert!(out.contains("bootable qcow2 disk"), "{out}");
    let vars = dir.join("OVMF_VARS_4M.fd");
    std::fs::copy(OVMF_VARS, &vars).unwrap();
    let port = free_port();
    let serial = dir.join("serial.log");
    let accel = accelerator(dir);
    let qemu = format!(
        "qemu-system-x86_64 -machine q35 -accel {accel} -m 1024 -smp 2 \
         -drive if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE} \
         -drive if=pflash,format=raw,unit=1,file={vars} \
         -drive if=virtio,format=qcow2,file={disk} \
         -nic user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:{web} \
         -serial file:{serial} -display none -monitor none",
        vars = vars.display(),
        disk = disk.display(),
        web = fixture::WEB_PORT,
        serial = serial.display(),
    );
    eprintln!("booting: {qemu}");
    let mut vm = Vm::start(&qemu);
    let started = Instant::now();
    let body = loop {
        if let Some(body) = http_get(port, "/index.html") {
            break body;
        }
        if let Some(status) = vm.child.try_wait().unwrap() {
            panic!("qemu exited with {status}:\n{}", tail(&serial));
        }
        assert!(
            started.elapsed() < BOOT_DEADLINE,
            "no HTTP answer on 127.0.0.1:{port} after {:?} ({accel}); serial console:\n{}",
            started.elapsed(),
            tail(&serial)
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    eprintln!("boot to HTTP under {accel}: {:.1?}", started.elapsed());
    assert_eq!(body.trim(), "hello-from-disk");
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(
        console.contains("Linux version"),
        "the kernel logs to ttyS0:\n{}",
        tail(&serial)
    );
}

#[test]
fn an_image_without_a_kernel_gets_a_clear_error_and_no_disk() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let state = dir.join("state");
    fixture::base_state(&state);
    std::fs::write(
        dir.join("strip.yaml"),
        "name: strip-kernel\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      \
         - name: Strip\n        action: ExecuteBash\n        inputs:\n          commands:\n            \
         - rm -f /boot/vmlinuz-*\n",
    )
    .unwrap();
    let recipe = dir.join("recipe.yaml");
    std::fs::write(
        &recipe,
        "name: nokernel\nversion: 1.0.0\nparent: kiln:machine/1.0.0\ncomponents:\n  \
         - path: strip.yaml\ntests: { enabled: false }\n",
    )
    .unwrap();
    ok(kiln(&state, &["bake", recipe.to_str().unwrap()]));
    let exports = dir.join("exports");
    std::fs::create_dir(&exports).unwrap();
    let dest = exports.join("nokernel.qcow2");
    let out = kiln(
        &state,
        &[
            "images",
            "export",
            "nokernel/1.0.0",
            "--format",
            "qcow2",
            "--bootable",
            dest.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("nokernel/1.0.0") && stderr.contains("no kernel"),
        "the error names the image and what it lacks: {stderr}"
    );
    assert!(
        stderr.contains("linux-image-amd64"),
        "and what to install: {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&exports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "a failed export leaves nothing: {left:?}");

    // --bootable is for disks only.
    let out = kiln(
        &state,
        &[
            "images",
            "export",
            "nokernel/1.0.0",
            "--format",
            "oci",
            "--bootable",
            dest.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("raw or qcow2"),
        "{stderr}"
    );
}

fn sfdisk_json(disk: &Path) -> serde_json::Value {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(disk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A file from the ESP, read with mtools at the partition's offset.
fn mtype(disk: &Path, offset: u64, file: &str) -> String {
    let out = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{offset}", disk.display()))
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mtype: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kvm` when KVM runs the firmware (it prints its boot manager's lines on
/// the serial port within seconds), `tcg` otherwise: /dev/kvm may exist
/// and still fail on the first instruction it cannot emulate.
fn accelerator(dir: &Path) -> &'static str {
    if !Path::new("/dev/kvm").exists() {
        return "tcg";
    }
    let vars = dir.join("probe-vars.fd");
    std::fs::copy(OVMF_VARS, &vars).unwrap();
    let log = dir.join("probe.log");
    let probe = format!(
        "qemu-system-x86_64 -machine q35 -accel kvm -m 256 -nodefaults -display none \
         -drive if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE} \
         -drive if=pflash,format=raw,unit=1,file={} -serial file:{}",
        vars.display(),
        log.display()
    );
    let vm = Vm::start(&probe);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if std::fs::read_to_string(&log).is_ok_and(|l| l.contains("BdsDxe")) {
            return "kvm";
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(vm);
    eprintln!("KVM does not run the firmware here: using software emulation");
    "tcg"
}

/// A qemu process, killed when the test ends however it ends.
struct Vm {
    child: Child,
}

impl Vm {
    fn start(command_line: &str) -> Vm {
        let words: Vec<&str> = command_line.split_whitespace().collect();
        let child = Command::new(words[0])
            .args(&words[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Vm { child }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of a 200 answer, or None: qemu's user-mode network accepts the
/// connection before the guest listens, then closes it.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then_some(())?;
    head.contains(" 200 ").then(|| body.to_owned())
}

fn tail(path: &PathBuf) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
