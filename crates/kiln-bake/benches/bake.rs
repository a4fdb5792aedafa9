//! Bake figures: wall time of a bake against the same component commands
//! run directly in a shell, and the time of an unchanged re-bake.
//! Prints its figures.
//!
//! `cargo bench -p kiln-bake --bench bake`

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use kiln_bake::{BakeObserver, BakeOptions};
use kiln_image::Store;

struct Silent;
impl kiln_toe::Observer for Silent {}
impl BakeObserver for Silent {
    fn event(&mut self, _: &str) {}
}

/// Work of the size a real component does: many small files and a few
/// megabytes of data, in the working directory.
const COMMANDS: &[&str] = &[
    "mkdir -p data",
    "i=0; while [ $i -lt 3000 ]; do echo \"file $i\" > data/f$i; i=$((i + 1)); done",
    "dd if=/dev/zero of=data/blob bs=1M count=32 2>/dev/null",
    "tar -cf data.tar data && gzip -1 data.tar",
];

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let items: String = COMMANDS
        .iter()
        .map(|c| format!("            - '{}'\n", c.replace('\'', "''")))
        .collect();
    std::fs::write(
        dir.path().join("work.yaml"),
        format!("name: work\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Work\n        action: ExecuteBash\n        inputs:\n          commands:\n{items}"),
    )
    .unwrap();
    let recipe_path = dir.path().join("recipe.yaml");
    std::fs::write(&recipe_path, "name: bench\nversion: 1.0.0\nparent: busybox\nshell: sh\nworking_directory: /work\ncomponents:\n  - path: work.yaml\n").unwrap();
    let recipe = kiln_bake::recipe::load(&recipe_path).unwrap();
    let store = Store::open(&dir.path().join("images")).unwrap();
    let opts = BakeOptions {
        isolation: Arc::new(kiln_sandbox::Bubblewrap::detect().unwrap()),
        log_root: dir.path().join("logs"),
        artifacts: None,
        source_commit: None,
        source_labels: Default::default(),
        keep_on_failure: false,
    };
    // The parent is built once, outside the measurement, as it is in use.
    let warm = std::fs::read_to_string(&recipe_path)
        .unwrap()
        .replace("components:\n  - path: work.yaml\n", "components: []\n");
    let warm_path = dir.path().join("warm.yaml");
    std::fs::write(&warm_path, warm.replace("name: bench", "name: warm")).unwrap();
    kiln_bake::bake(
        &store,
        &kiln_bake::recipe::load(&warm_path).unwrap(),
        &opts,
        &mut Silent,
    )
    .unwrap();

    // Each side three times, the median taken: the machine has two cores.
    let mut bakes = Vec::new();
    for i in 0..3 {
        // A changed comment makes a new document, so the layer is baked again.
        std::fs::write(
            dir.path().join("work.yaml"),
            format!(
                "# run {i}\n{}",
                std::fs::read_to_string(dir.path().join("work.yaml")).unwrap()
            ),
        )
        .unwrap();
        let t = Instant::now();
        let report = kiln_bake::bake(&store, &recipe, &opts, &mut Silent).unwrap();
        bakes.push(t.elapsed().as_secs_f64());
        assert!(!report.unchanged && !report.components[0].cached);
    }
    let mut shells = Vec::new();
    for i in 0..3 {
        let shell_dir = dir.path().join(format!("shell{i}"));
        std::fs::create_dir(&shell_dir).unwrap();
        // The same shell the bake runs (busybox sh), on the host.
        let t = Instant::now();
        let status = Command::new("busybox")
            .arg("sh")
            .arg("-c")
            .arg(COMMANDS.join("\n"))
            .current_dir(&shell_dir)
            .status()
            .unwrap();
        shells.push(t.elapsed().as_secs_f64());
        assert!(status.success());
    }
    bakes.sort_by(f64::total_cmp);
    shells.sort_by(f64::total_cmp);
    let (bake, shell) = (bakes[1], shells[1]);

    let mut unchanged = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let again = kiln_bake::bake(&store, &recipe, &opts, &mut Silent).unwrap();
        unchanged.push(t.elapsed().as_secs_f64());
        assert!(again.unchanged);
    }
    unchanged.sort_by(f64::total_cmp);

    println!("bake of one component (median of 3):   {bake:>8.3} s");
    println!("same commands in busybox sh (median):  {shell:>8.3} s");
    println!(
        "bake / shell:                          {:>8.2}x",
        bake / shell
    );
    println!(
        "unchanged re-bake (median of 5):       {:>8.3} s",
        unchanged[2]
    );
}
