//! Images kiln writes, parents included, taken on by the OCI tools users
//! already have: `skopeo copy` of each export format, `podman load` of the
//! docker archive and `podman build` FROM it. podman and buildah refuse an
//! image whose history does not list one non-empty entry per layer, so
//! these tests fail if any image kiln writes lacks one.
//!
//! The host's cgroups stop crun, so the build uses `--isolation chroot`
//! (no OCI runtime) and `--cgroup-manager cgroupfs`. `podman run` cannot
//! start a container here at all (crun: "setrlimit `RLIMIT_NOFILE`:
//! Operation not permitted"), so what the build's RUN wrote is read back
//! with `podman create` and `podman cp` instead.

mod common;

use common::{kiln, ok};
use std::path::Path;
use std::process::Command;

fn tool(program: &str, args: &[&str]) -> String {
    ok(Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (scripts/deps.sh installs it): {e}")))
}

/// podman with its storage in `dir`, so that tests share nothing with the
/// host's images or with each other.
struct Podman {
    root: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        Podman {
            root: tempfile::tempdir().unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let root = self.root.path().join("root");
        let run = self.root.path().join("run");
        let mut argv = vec![
            "--root",
            root.to_str().unwrap(),
            "--runroot",
            run.to_str().unwrap(),
            "--cgroup-manager",
            "cgroupfs",
        ];
        argv.extend_from_slice(args);
        tool("podman", &argv)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Overlay mounts under the root would keep the tempdir from going.
        let root = self.root.path().join("root");
        let run = self.root.path().join("run");
        let _ = Command::new("podman")
            .args(["--root", root.to_str().unwrap()])
            .args(["--runroot", run.to_str().unwrap()])
            .args(["system", "reset", "--force"])
            .output();
    }
}

/// Layers and non-empty history entries of the single image in the OCI
/// layout `dir`, as skopeo wrote it.
fn layout_counts(dir: &Path) -> (usize, usize) {
    let read = |digest: &str| -> serde_json::Value {
        let hex = digest.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    let config = read(manifest["config"]["digest"].as_str().unwrap());
    let layers = manifest["layers"].as_array().unwrap().len();
    let non_empty = config["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|e| e["empty_layer"].as_bool() != Some(true))
                .count()
        })
        .unwrap_or(0);
    (layers, non_empty)
}

#[test]
fn podman_and_skopeo_build_on_and_copy_what_kiln_exports() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::write(
        dir.path().join("mark.yaml"),
        "name: mark\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Mark\n        action: ExecuteBash\n        inputs:\n          commands: [\"echo baked-by-kiln > /etc/kiln-mark\"]\n",
    )
    .unwrap();
    let recipe = dir.path().join("recipe.yaml");
    std::fs::write(
        &recipe,
        "name: marked\nversion: 1.0.0\nparent: busybox\nshell: sh\ncomponents:\n  - path: mark.yaml\ntests: { enabled: false }\n",
    )
    .unwrap();
    ok(kiln(&state, &["bake", recipe.to_str().unwrap()]));

    let podman = Podman::new();
    // The busybox parent kiln assembled (one layer) and the image baked on
    // it (two), each as both archive formats.
    for (image, layers, expect_mark) in [("busybox", 1, false), ("marked", 2, true)] {
        let oci_archive = dir.path().join(format!("{image}-oci.tar"));
        let docker_archive = dir.path().join(format!("{image}-docker.tar"));
        for (format, path) in [
            ("oci-archive", &oci_archive),
            ("docker-archive", &docker_archive),
        ] {
            ok(kiln(
                &state,
                &[
                    "images",
                    "export",
                    image,
                    "--format",
                    format,
                    path.to_str().unwrap(),
                ],
            ));
            let copied = dir.path().join(format!("{image}-{format}-copy"));
            tool(
                "skopeo",
                &[
                    "copy",
                    &format!("{format}:{}", path.display()),
                    &format!("oci:{}:copied", copied.display()),
                ],
            );
            assert_eq!(
                layout_counts(&copied),
                (layers, layers),
                "{image} as {format}: layers and non-empty history entries"
            );
        }

        let loaded = podman.run(&["load", "-i", docker_archive.to_str().unwrap()]);
        let name = loaded
            .lines()
            .find_map(|l| l.strip_prefix("Loaded image: "))
            .unwrap_or_else(|| panic!("podman load names no image: {loaded}"))
            .trim()
            .to_owned();
        let context = dir.path().join(format!("{image}-context"));
        std::fs::create_dir(&context).unwrap();
        std::fs::write(
            context.join("Containerfile"),
            format!(
                "FROM {name}\nRUN (cat /etc/kiln-mark 2>/dev/null || echo no-mark) > /from-podman && echo ran >> /from-podman\n"
            ),
        )
        .unwrap();
        let derived = format!("localhost/derived-{image}:1");
        podman.run(&[
            "build",
            "--isolation",
            "chroot",
            "-t",
            &derived,
            context.to_str().unwrap(),
        ]);
        let container = podman.run(&["create", &derived, "/bin/sh"]);
        let out = dir.path().join(format!("{image}-from-podman"));
        podman.run(&[
            "cp",
            &format!("{}:/from-podman", container.trim()),
            out.to_str().unwrap(),
        ]);
        let written = std::fs::read_to_string(&out).unwrap();
        let mark = if expect_mark {
            "baked-by-kiln"
        } else {
            "no-mark"
        };
        assert_eq!(written, format!("{mark}\nran\n"), "built FROM {name}");
    }
}
