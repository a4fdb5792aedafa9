//! One qemu process per instance: its command line, its start, how it is
//! asked to power down (QMP), and how /proc tells it apart from a later
//! process with its pid.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::host::{OVMF_CODE, QEMU};

/// Files of an instance's directory.
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    pub fn vars(&self) -> PathBuf {
        self.dir.join("OVMF_VARS.fd")
    }
    pub fn meta(&self) -> PathBuf {
        self.dir.join("meta.img")
    }
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    /// The serial console, which `kiln instances logs` shows.
    pub fn console(&self) -> PathBuf {
        self.logs().join("stdout.log")
    }
    /// What qemu itself prints.
    pub fn stderr(&self) -> PathBuf {
        self.logs().join("stderr.log")
    }
    /// What a later daemon adopts the VM by: see [`super::Record`].
    pub fn record(&self) -> PathBuf {
        self.dir.join("vm.json")
    }
}

/// What a VM is started with.
pub struct Spec<'a> {
    pub paths: &'a Paths,
    pub kvm: bool,
    pub memory_mib: u64,
    pub host_port: u16,
    pub guest_port: u16,
}

/// qemu splits option values at commas; a comma in a path is doubled.
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

pub fn command(spec: &Spec) -> Command {
    let p = spec.paths;
    let mut c = Command::new(QEMU);
    let accel = if spec.kvm { "kvm" } else { "tcg" };
    // The default CPU model, also under KVM: it is what the KVM probe
    // ran, and `-cpu host` fails on hosts whose KVM is nested.
    c.args(["-machine", &format!("q35,accel={accel}")]);
    c.args(["-smp", "1", "-m", &spec.memory_mib.to_string()]);
    c.args(["-nodefaults", "-no-user-config", "-display", "none"]);
    c.args([
        "-drive",
        &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
        "-drive",
        &format!("if=pflash,format=raw,unit=1,file={}", opt_path(&p.vars())),
    ]);
    // The overlay is the instance's alone and thrown away with it, so
    // the guest's flushes need not reach the host's disk (cache=unsafe),
    // which spares a booting guest many waits.
    c.args([
        "-drive",
        &format!(
            "if=none,id=disk0,format=qcow2,cache=unsafe,discard=unmap,file={}",
            opt_path(&p.disk())
        ),
        "-device",
        "virtio-blk-pci,drive=disk0,bootindex=0",
        "-drive",
        &format!(
            "if=none,id=meta,format=raw,readonly=on,file={}",
            opt_path(&p.meta())
        ),
        "-device",
        "virtio-blk-pci,drive=meta",
    ]);
    // romfile= leaves out the NIC's boot ROM: the firmware would
    // otherwise try to boot from the network, which under software
    // emulation costs long timeouts.
    c.args([
        "-netdev",
        &format!(
            "user,id=net0,hostfwd=tcp:127.0.0.1:{}-:{}",
            spec.host_port, spec.guest_port
        ),
        "-device",
        "virtio-net-pci,netdev=net0,romfile=",
    ]);
    // A booting guest waits for entropy; the host's is handed in.
    c.args(["-device", "virtio-rng-pci"]);
    c.args([
        "-chardev",
        &format!("file,id=console,append=on,path={}", opt_path(&p.console())),
        "-serial",
        "chardev:console",
        "-qmp",
        &format!("unix:{},server=on,wait=off", opt_path(&p.qmp())),
    ]);
    c
}

/// A started qemu and what its waiting thread saw.
pub struct Started {
    pub pid: u32,
    pub exit: Arc<Mutex<Option<ExitStatus>>>,
}

/// Starts qemu and returns once its monitor socket is up, i.e. once qemu
/// has opened every disk and set up its network; errors carry what qemu
/// printed.
pub fn start(spec: &Spec) -> Result<Started, String> {
    let p = spec.paths;
    std::fs::create_dir_all(p.logs()).map_err(|e| format!("{}: {e}", p.logs().display()))?;
    let stderr =
        std::fs::File::create(p.stderr()).map_err(|e| format!("{}: {e}", p.stderr().display()))?;
    let _ = std::fs::remove_file(p.qmp());
    let mut command = command(spec);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        // Its own process group: a ^C meant for the daemon does not power
        // off the VMs, which the next daemon adopts.
        .process_group(0);
    let mut child = command.spawn().map_err(|e| format!("{QEMU}: {e}"))?;
    let pid = child.id();
    let exit = Arc::new(Mutex::new(None));
    let seen = exit.clone();
    // The daemon waits on its child so that a dead VM does not stay a
    // zombie; the status is only for messages.
    std::thread::Builder::new()
        .name(format!("vm-{pid}"))
        .spawn(move || {
            if let Ok(status) = child.wait() {
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
            }
        })
        .map_err(|e| format!("a thread to wait on qemu: {e}"))?;
    let started = Started { pid, exit };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = *started.exit.lock().unwrap_or_else(|p| p.into_inner()) {
            let said = std::fs::read_to_string(p.stderr()).unwrap_or_default();
            return Err(format!("qemu {status}: {}", said.trim()));
        }
        if UnixStream::connect(p.qmp()).is_ok() {
            return Ok(started);
        }
        if Instant::now() > deadline {
            kill(pid);
            return Err("qemu did not open its monitor socket within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asks the guest to power down, as the power button does (ACPI).
pub fn powerdown(qmp: &Path) -> Result<(), String> {
    let stream = UnixStream::connect(qmp).map_err(|e| format!("{}: {e}", qmp.display()))?;
    let timeout = Some(Duration::from_secs(2));
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut writer = stream;
    let mut line = String::new();
    // The greeting, then one answer per command.
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    for command in ["qmp_capabilities", "system_powerdown"] {
        writeln!(writer, "{{\"execute\": \"{command}\"}}").map_err(|e| e.to_string())?;
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("qemu closed its monitor".into());
            }
            // Events may come before the answer.
            if line.contains("\"return\"") {
                break;
            }
            if line.contains("\"error\"") {
                return Err(format!("{command}: {}", line.trim()));
            }
        }
    }
    Ok(())
}

pub fn kill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// State and start time (fields 3 and 22) of /proc/PID/stat.
pub fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted from the last ')'.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((
        fields.first()?.chars().next()?,
        fields.get(19)?.parse().ok()?,
    ))
}

/// The process is this one (same start time) and has not exited.
pub fn alive(pid: u32, start_time: u64) -> bool {
    matches!(stat(pid), Some((state, t)) if t == start_time && !matches!(state, 'Z' | 'X' | 'x'))
}

/// Every qemu process whose command line names a path below `dir`, with
/// its start time: those kiln started for instances there.
pub fn processes_below(dir: &Path) -> Vec<(u32, u64)> {
    let dir = dir.display().to_string();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
        let Some(program) = args.next() else { continue };
        if !program.ends_with(QEMU) {
            continue;
        }
        if args.any(|a| a.contains(&format!("{dir}/")))
            && let Some((state, start)) = stat(pid)
            && !matches!(state, 'Z' | 'X' | 'x')
        {
            found.push((pid, start));
        }
    }
    found
}
