//! Layer creation throughput, against the shell pipeline it replaces.
//!
//!     cargo bench -p kiln-image --bench layer [-- DIR]
//!
//! Times `create_layer(DIR, sink, Zstd)` and
//! `tar -cf - -C DIR . | zstd -1 -T0 -q -c > /dev/null` in the same run,
//! best of a few alternating runs with a warm page cache, and prints both
//! throughputs and their ratio. Without DIR it uses /tmp/deb-minbase-root
//! when that exists (a Debian minbase root filesystem), else a synthetic
//! ~150 MB tree of small and large files in a temporary directory.
//! `KILN_BENCH_RUNS` sets the number of runs (default 3); `KILN_BENCH_ONLY`
//! set to `layer` or `cli` runs just that one, for `perf` and friends.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_image::tarball::{Compression, create_layer};

const DEBIAN_TREE: &str = "/tmp/deb-minbase-root";

fn main() {
    // cargo bench passes `--bench`; anything else starting with `-` is ours
    // to ignore as well.
    let arg = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut _synthetic = None;
    let dir = match arg {
        Some(d) => PathBuf::from(d),
        None if Path::new(DEBIAN_TREE).is_dir() => PathBuf::from(DEBIAN_TREE),
        None => {
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

    let mut ours = Duration::MAX;
    let mut theirs = Duration::MAX;
    let mut plain = Duration::MAX;
    let mut size = 0;
    let only = std::env::var("KILN_BENCH_ONLY").unwrap_or_default();
    for _ in 0..runs {
        if only != "cli" {
            let started = Instant::now();
            let info =
                create_layer(&dir, std::io::sink(), Compression::Zstd, false).expect("layer");
            ours = ours.min(started.elapsed());
            size = info.size;
        }
        if only != "layer" {
            let started = Instant::now();
            shell(&format!("{pipeline} > /dev/null"));
            theirs = theirs.min(started.elapsed());
        }
        if only.is_empty() {
            let started = Instant::now();
            create_layer(&dir, std::io::sink(), Compression::None, false).expect("layer");
            plain = plain.min(started.elapsed());
        }
    }
    let rate = |d: Duration| mb / d.as_secs_f64();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "create_layer zstd:   {:8.1} MB/s  ({:.3?}, {:.1} MB compressed)",
        rate(ours),
        ours,
        size as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "tar | {zstd}: {:8.1} MB/s  ({:.3?}, {:.1} MB compressed)",
        rate(theirs),
        theirs,
        cli_size as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "create_layer none:   {:8.1} MB/s  ({:.3?})",
        rate(plain),
        plain
    );
    let _ = writeln!(
        out,
        "ratio create_layer zstd / tar|zstd: {:.2}",
        rate(ours) / rate(theirs)
    );
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
        if n % 61 == 0 {
            let _ = std::os::unix::fs::symlink(format!("f{n}"), root.join(format!("l{n}")));
        }
        std::fs::create_dir_all(&dir).expect("mkdir");
        // Sizes: mostly a few KB, some tens of KB, one in 150 of megabytes.
        let size = match rng.below(150) {
            0 => 1 << 20 | rng.below(6 << 20),
            1..=20 => 16 << 10 | rng.below(200 << 10),
            _ => 100 + rng.below(12 << 10),
        } as usize;
        data.clear();
        match rng.below(10) {
            // Text.
            0..=3 => {
                while data.len() < size {
                    data.extend_from_slice(&words[rng.below(words.len() as u64) as usize]);
                    data.push(if rng.below(12) == 0 { b'\n' } else { b' ' });
                }
            }
            // Machine code: recurring instruction patterns and addresses.
            4..=8 => {
                while data.len() < size {
                    if rng.below(4) == 0 {
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
