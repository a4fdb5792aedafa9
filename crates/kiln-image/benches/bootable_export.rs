//! Bootable disk export against the plain route to the same disk format:
//! `export_bootable` (GPT, ESP with systemd-boot, kernel and initramfs,
//! ext4 root) as raw and qcow2, beside `mkfs.ext4 -d` of the same tree
//! followed by `qemu-img convert -O qcow2`. Prints time and size of each,
//! the median of three runs. Needs a root with a kernel, e.g.
//!
//! ```text
//! mmdebstrap --variant=minbase --include=systemd-sysv,linux-image-amd64,initramfs-tools bookworm /tmp/boot-root
//! KILN_BENCH_ROOTFS=/tmp/boot-root cargo bench -p kiln-image --bench bootable_export
//! ```

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_image::export::{self, BootOptions, DiskFormat};

const RUNS: usize = 3;

/// Bytes the file takes on disk, and its length.
fn sizes(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap();
    (m.blocks() * 512, m.len())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mib(n: u64) -> f64 {
    n as f64 / (1024.0 * 1024.0)
}

fn row(what: &str, times: Vec<Duration>, path: &Path) {
    let (allocated, len) = sizes(path);
    println!(
        "{what:<44} {:>8.2} s {:>9.1} MiB {:>9.1} MiB",
        median(times).as_secs_f64(),
        mib(allocated),
        mib(len)
    );
}

fn main() {
    let Some(rootfs) = std::env::var_os("KILN_BENCH_ROOTFS").map(PathBuf::from) else {
        eprintln!(
            "set KILN_BENCH_ROOTFS to a root with a kernel and initramfs (see the file's doc)"
        );
        std::process::exit(2);
    };
    let out = tempfile::tempdir().unwrap();
    println!(
        "{:<44} {:>10} {:>13} {:>13}",
        "export", "median", "allocated", "length"
    );
    for (format, name) in [(DiskFormat::Raw, "raw"), (DiskFormat::Qcow2, "qcow2")] {
        let dest = out.path().join(format!("boot.{name}"));
        let times = (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                export::export_bootable(&rootfs, &dest, format, &BootOptions::default()).unwrap();
                start.elapsed()
            })
            .collect();
        row(&format!("export_bootable --format {name}"), times, &dest);
    }
    let raw = out.path().join("plain.raw");
    let times = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            export::export_raw(&rootfs, &raw).unwrap();
            start.elapsed()
        })
        .collect();
    row("mkfs.ext4 -d (export_raw)", times, &raw);
    let qcow2 = out.path().join("plain.qcow2");
    let times = (0..RUNS)
        .map(|_| {
            let _ = std::fs::remove_file(&qcow2);
            let start = Instant::now();
            let status = Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(&raw)
                .arg(&qcow2)
                .status()
                .unwrap();
            assert!(status.success(), "qemu-img convert failed");
            start.elapsed()
        })
        .collect();
    row("  then qemu-img convert -O qcow2", times, &qcow2);
}
