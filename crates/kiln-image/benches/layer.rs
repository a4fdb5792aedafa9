//! Layer creation throughput, against the shell pipeline it replaces.
//!
//!     cargo bench -p kiln-image --bench layer [-- DIR]
//!
//! Times `create_layer(DIR, sink, Zstd)` and
//! `tar -cf - -C DIR . | zstd -1 -T0 -q -c > /dev/null` in the same run,
//! best of a few alternating runs with a warm page cache, and prints both
//! throughputs and their ratio. Without DIR it uses /tmp/deb-minbase-root
//! when that exists (a Debian minbase root filesystem), else a synthetic
//! ~150 MB tree of small and large files in a temporary directory, which
//! DIR `synthetic` asks for in any case.
//! `KILN_BENCH_RUNS` sets the number of runs (default 3); `KILN_BENCH_ONLY`
//! set to `layer` or `cli` runs just that one, for `perf` and friends.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_image::tarball::{Compression, ExtractOptions, create_layer, extract};

const DEBIAN_TREE: &str = "/tmp/deb-minbase-root";

fn main() {
    // cargo bench passes `--bench`; anything else starting with `-` is ours
    // to ignore as well.
    let arg = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut _synthetic = None;
    let dir = match arg.as_deref() {
        Some(d) if d != "synthetic" => PathBuf::from(d),
        None if Path::new(DEBIAN_TREE).is_dir() => PathBuf::from(DEBIAN_TREE),
        _ => {
            let t = tempfile::tempdir().expect("tempdir");
            let started = Instant::now();
            synthetic_tree(t.path(), 150 << 20);
            eprintln!("built a synthetic tree in {:.1?}", started.elapsed());
            let p = t.path().to_owned();
            _synthetic = Some(t);
            p
        }
    };
    let runs: usize = std::env::var("KILN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (files, bytes) = tree_size(&dir);
    let mb = bytes as f64 / 1e6;
    println!("tree {}: {files} files, {mb:.1} MB", dir.display());

    let zstd = if Command::new("zstd")
        .args(["-1", "-T0", "-q", "-c"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        "zstd -1 -T0 -q -c"
    } else {
        "zstd -1 -q -c"
    };
    let pipeline = format!("tar -cf - -C '{}' . | {zstd}", dir.display());
    // Warms the page cache for both contenders and gives the CLI's size.
    let cli_size = shell(&format!("{pipeline} | wc -c"))
        .trim()
        .parse::<u64>()
        .expect("size from wc");

    let only = std::env::var("KILN_BENCH_ONLY").unwrap_or_default();
    let mut ours = Runs::default();
    let mut theirs = Runs::default();
    let mut plain = Runs::default();
    let mut size = 0;
    for _ in 0..runs {
        if only != "cli" {
            ours.time(|| {
                size = create_layer(&dir, std::io::sink(), Compression::Zstd, false)
                    .expect("layer")
                    .size;
            });
        }
        if only != "layer" {
            theirs.time(|| {
                shell(&format!("{pipeline} > /dev/null"));
            });
        }
        if only.is_empty() {
            plain.time(|| {
                create_layer(&dir, std::io::sink(), Compression::None, false).expect("layer");
            });
        }
    }
    let extracted = if only.is_empty() {
        time_extract(&dir)
    } else {
        Duration::ZERO
    };
    let rate = |d: Duration| mb / d.as_secs_f64();
    let mut out = std::io::stdout().lock();
    let mut line = |name: &str, r: &Runs, extra: String| {
        if r.best == Duration::ZERO {
            return;
        }
        let _ = writeln!(
            out,
            "{name:<24} {:7.1} MB/s  best {:.3?}  median {:.3?}  cpu {:.2}s/run{extra}",
            rate(r.best),
            r.best,
            r.median(),
            r.cpu_per_run(),
        );
    };
    line(
        "create_layer zstd",
        &ours,
        format!("  {:.1} MB compressed", size as f64 / 1e6),
    );
    line(
        &format!("tar | {zstd}"),
        &theirs,
        format!("  {:.1} MB compressed", cli_size as f64 / 1e6),
    );
    line("create_layer none", &plain, String::new());
    if extracted > Duration::ZERO {
        let _ = writeln!(
            out,
            "{:<24} {:7.1} MB/s  {extracted:.3?}",
            "extract zstd layer",
            rate(extracted)
        );
    }
    if ours.best > Duration::ZERO && theirs.best > Duration::ZERO {
        let _ = writeln!(
            out,
            "ratio create_layer zstd / tar|zstd: {:.2} (best), {:.2} (median), {:.2} (cpu)",
            rate(ours.best) / rate(theirs.best),
            rate(ours.median()) / rate(theirs.median()),
            theirs.cpu_per_run() / ours.cpu_per_run(),
        );
    }
}

/// Wall and CPU times of one contender's runs. CPU time is what a busy
/// machine cannot distort, wall time is what a user waits.
#[derive(Default)]
struct Runs {
    wall: Vec<Duration>,
    best: Duration,
    cpu: f64,
}

impl Runs {
    fn time(&mut self, f: impl FnOnce()) {
        let cpu = cpu_seconds();
        let started = Instant::now();
        f();
        let took = started.elapsed();
        self.cpu += cpu_seconds() - cpu;
        self.wall.push(took);
        self.best = self.wall.iter().copied().min().unwrap_or_default();
    }

    fn median(&self) -> Duration {
        let mut w = self.wall.clone();
        w.sort();
        w.get(w.len() / 2).copied().unwrap_or_default()
    }

    fn cpu_per_run(&self) -> f64 {
        self.cpu / self.wall.len().max(1) as f64
    }
}

/// User and system time of this process and of its waited-for children,
/// from /proc/self/stat (in the kernel's 100 Hz clock ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name may hold spaces; the fields after it do not.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat format") + 2..]
        .split(' ')
        .collect();
    // utime, stime, cutime, cstime are fields 14 to 17, counted from the
    // pid; `fields` starts at field 3.
    fields[11..15]
        .iter()
        .map(|f| f.parse::<f64>().expect("stat field"))
        .sum::<f64>()
        / 100.0
}

/// One extraction of the tree's zstd layer into a fresh directory next to
/// the system's temporary files.
fn time_extract(dir: &Path) -> Duration {
    let mut blob = Vec::new();
    create_layer(dir, &mut blob, Compression::Zstd, false).expect("layer");
    let t = tempfile::tempdir().expect("tempdir");
    let opts = ExtractOptions {
        whiteouts: false,
        allow_devices: true,
        preserve_owners: rustix::process::geteuid().is_root(),
        ..Default::default()
    };
    let started = Instant::now();
    extract(&blob[..], t.path(), "bench layer", &opts).expect("extract");
    started.elapsed()
}

fn shell(cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .stderr(Stdio::inherit())
        .output()
        .expect("run sh");
    assert!(out.status.success(), "{cmd} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Regular files and their total size, the payload both contenders carry.
fn tree_size(dir: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let entry = entry.expect("dir entry");
            let meta = entry.metadata().expect("lstat");
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                files += 1;
                bytes += meta.size();
            }
        }
    }
    (files, bytes)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Roughly what a root filesystem holds: many small text files, a good deal
/// of machine code, a few already compressed files, some very large.
fn synthetic_tree(root: &Path, total: u64) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let words: Vec<Vec<u8>> = (0..512)
        .map(|_| {
            let len = 2 + rng.below(9) as usize;
            (0..len).map(|_| b'a' + rng.below(26) as u8).collect()
        })
        .collect();
    let ops: Vec<[u8; 8]> = (0..2048).map(|_| rng.next().to_le_bytes()).collect();
    let mut written = 0u64;
    let mut n = 0u64;
    let mut data = Vec::new();
    while written < total {
        let dir = root.join(format!("d{:02}/s{:02}", n % 37, (n / 37) % 11));
        if n.is_multiple_of(61) {
            let _ = std::os::unix::fs::symlink(format!("f{n}"), root.join(format!("l{n}")));
        }
        std::fs::create_dir_all(&dir).expect("mkdir");
        // Sizes: mostly a few KB, some tens of KB, one in 300 of megabytes.
        let size = match rng.below(300) {
            0 => 1 << 20 | rng.below(6 << 20),
            1..=30 => 16 << 10 | rng.below(160 << 10),
            _ => 100 + rng.below(8 << 10),
        } as usize;
        data.clear();
        match rng.below(10) {
            // Text.
            0..=4 => {
                while data.len() < size {
                    data.extend_from_slice(&words[rng.below(words.len() as u64) as usize]);
                    data.push(if rng.below(12) == 0 { b'\n' } else { b' ' });
                }
            }
            // Machine code: recurring instruction patterns and addresses.
            5..=8 => {
                while data.len() < size {
                    if rng.below(8) == 0 {
                        data.extend_from_slice(&rng.next().to_le_bytes()[..4]);
                    } else {
                        data.extend_from_slice(&ops[rng.below(ops.len() as u64) as usize]);
                    }
                }
            }
            // Already compressed.
            _ => {
                while data.len() < size {
                    data.extend_from_slice(&rng.next().to_le_bytes());
                }
            }
        }
        data.truncate(size);
        std::fs::write(dir.join(format!("f{n}")), &data).expect("write");
        written += size as u64;
        n += 1;
    }
}
