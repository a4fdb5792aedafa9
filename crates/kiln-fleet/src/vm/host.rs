//! What the host must have to run virtual machines, and whether KVM
//! works on it.
//!
//! `/dev/kvm` existing proves little: nested virtualisation may accept
//! the ioctls, run trivial guest code, and then stop on an instruction it
//! cannot emulate. The probe therefore runs what every VM runs first, the
//! UEFI firmware, under KVM, and counts KVM as working only when the
//! firmware reaches its boot manager within a timeout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The emulator every VM runs in.
pub const QEMU: &str = "qemu-system-x86_64";
pub const QEMU_IMG: &str = "qemu-img";
/// UEFI firmware (Debian's ovmf): read-only code, and the variable store
/// each instance gets a copy of.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// How long the KVM probe may take before KVM counts as not working.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Forces an accelerator instead of probing: `kvm` or `tcg`.
pub const ACCEL_ENV: &str = "KILN_VM_ACCEL";

/// What the host lacks to run VMs, each with the Debian package that
/// brings it; empty when nothing is missing.
pub fn missing() -> Vec<String> {
    let mut missing = Vec::new();
    for (tool, package) in [
        (QEMU, "qemu-system-x86"),
        (QEMU_IMG, "qemu-utils"),
        ("mkfs.fat", "dosfstools"),
        ("mcopy", "mtools"),
        ("mmd", "mtools"),
    ] {
        if find_in_path(tool).is_none() {
            missing.push(format!("{tool} (Debian package {package})"));
        }
    }
    for firmware in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(firmware).exists() {
            missing.push(format!("{firmware} (Debian package ovmf)"));
        }
    }
    missing
}

/// An error naming what is missing, or Ok when the host can run VMs.
pub fn check() -> Result<(), String> {
    let missing = missing();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "this host cannot run virtual machines: it lacks {}",
            missing.join(", ")
        ))
    }
}

pub fn find_in_path(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// The accelerator VMs run with, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accel {
    pub kvm: bool,
    pub why: String,
}

impl Accel {
    pub fn name(&self) -> &'static str {
        if self.kvm { "kvm" } else { "tcg" }
    }
}

/// The accelerator, probed once per process: KVM when it runs guest code
/// within the probe's timeout (10 s), software emulation (TCG) otherwise.
pub fn accel(scratch: &Path) -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    ACCEL
        .get_or_init(|| {
            let accel = choose(scratch);
            tracing::info!(accel = accel.name(), "virtual machines: {}", accel.why);
            accel
        })
        .clone()
}

fn choose(scratch: &Path) -> Accel {
    match std::env::var(ACCEL_ENV).as_deref() {
        Ok("tcg") => {
            return Accel {
                kvm: false,
                why: format!("software emulation (TCG), as {ACCEL_ENV}=tcg asks"),
            };
        }
        Ok("kvm") => {
            return Accel {
                kvm: true,
                why: format!("KVM, as {ACCEL_ENV}=kvm asks"),
            };
        }
        _ => {}
    }
    if !Path::new("/dev/kvm").exists() {
        return Accel {
            kvm: false,
            why: "software emulation (TCG): this host has no /dev/kvm".into(),
        };
    }
    match probe_kvm(scratch) {
        Ok(elapsed) => Accel {
            kvm: true,
            why: format!("KVM: the probe ran guest code in {elapsed:?}"),
        },
        Err(e) => Accel {
            kvm: false,
            why: format!("software emulation (TCG): KVM did not work: {e}"),
        },
    }
}

/// What OVMF prints on the serial console once its boot manager runs.
const FIRMWARE_UP: &str = "BdsDxe";

/// Boots the VMs' own firmware under KVM with no disk: KVM works when the
/// firmware reaches its boot manager. On a host whose KVM only pretends
/// (nested virtualisation without the CPU's support), it fails there with
/// an internal error or an emulation failure, which pauses the guest
/// rather than ending qemu.
fn probe_kvm(scratch: &Path) -> Result<Duration, String> {
    let dir = scratch.join(format!("kvm-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let vars = dir.join("OVMF_VARS.fd");
    let console = dir.join("console.log");
    std::fs::copy(OVMF_VARS, &vars).map_err(|e| format!("{OVMF_VARS}: {e}"))?;
    let started = Instant::now();
    let child = Command::new(QEMU)
        .args(["-machine", "q35,accel=kvm", "-m", "256"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display().to_string().replace(',', ",,")
        ))
        .arg("-chardev")
        .arg(format!(
            "file,id=console,path={}",
            console.display().to_string().replace(',', ",,")
        ))
        .args(["-serial", "chardev:console"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let result = match child {
        Err(e) => Err(format!("{QEMU}: {e}")),
        Ok(mut child) => {
            let result = loop {
                let printed = std::fs::read_to_string(&console).unwrap_or_default();
                if printed.contains(FIRMWARE_UP) {
                    break Ok(started.elapsed());
                }
                match child.try_wait() {
                    Ok(Some(status)) => {
                        let mut stderr = String::new();
                        if let Some(mut s) = child.stderr.take() {
                            use std::io::Read;
                            let _ = s.read_to_string(&mut stderr);
                        }
                        break Err(format!("qemu {status}: {}", last_line(&stderr)));
                    }
                    Ok(None) if started.elapsed() > PROBE_TIMEOUT => {
                        break Err(format!(
                            "the firmware did not start within {PROBE_TIMEOUT:?}"
                        ));
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                    Err(e) => break Err(e.to_string()),
                }
            };
            let _ = child.kill();
            let mut stderr = String::new();
            if let Some(mut s) = child.stderr.take() {
                use std::io::Read;
                let _ = s.read_to_string(&mut stderr);
            }
            let _ = child.wait();
            // qemu names the KVM failure on stderr while the guest hangs.
            result.map_err(|e| match stderr.lines().find(|l| l.contains("KVM")) {
                Some(kvm) => format!("{e} ({})", kvm.trim()),
                None => e,
            })
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever this host's KVM does, the probe ends within its timeout
    /// with a verdict, and the verdict says what it is based on.
    #[test]
    fn the_kvm_probe_answers_within_its_timeout() {
        assert!(check().is_ok(), "{:?}", check());
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let verdict = probe_kvm(dir.path());
        assert!(started.elapsed() < PROBE_TIMEOUT + Duration::from_secs(5));
        if let Err(e) = &verdict {
            assert!(!e.is_empty());
        }
        eprintln!("KVM probe: {verdict:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
