//! `kiln bake` and `kiln images` as a user runs them, with the container
//! and disk tools that must read what kiln writes: skopeo, umoci, qemu-img.

mod common;

use common::{kiln, ok};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tool(program: &str, args: &[&str]) -> String {
    ok(Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}")))
}

fn hello_recipe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-image/recipe.yaml")
}

#[test]
fn exports_are_read_by_skopeo_umoci_and_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let baked = ok(kiln(&state, &["bake", hello_recipe().to_str().unwrap()]));
    assert!(
        baked.starts_with("hello/1.0.0/1 available sha256:"),
        "{baked}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&ok(kiln(&state, &["images", "ls", "--output", "json"]))).unwrap();
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["busybox/1.35.0/1", "hello/1.0.0/1"]);

    let oci = dir.path().join("oci");
    ok(kiln(
        &state,
        &[
            "images",
            "export",
            "hello/1.x.x",
            "--format",
            "oci",
            oci.to_str().unwrap(),
        ],
    ));
    let inspect: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &["inspect", &format!("oci:{}:1.0.0", oci.display())],
    ))
    .unwrap();
    assert_eq!(inspect["Labels"]["dev.kiln.image.version"], "hello/1.0.0/1");
    let bundle = dir.path().join("bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:1.0.0", oci.display()),
            bundle.to_str().unwrap(),
        ],
    );
    let page = std::fs::read_to_string(bundle.join("rootfs/opt/hello/www/index.html")).unwrap();
    assert_eq!(page, "<h1>Hello from a kiln image</h1>");

    let archive = dir.path().join("hello-oci.tar");
    ok(kiln(
        &state,
        &[
            "images",
            "export",
            "hello",
            "--format",
            "oci-archive",
            archive.to_str().unwrap(),
        ],
    ));
    tool(
        "skopeo",
        &[
            "inspect",
            &format!("oci-archive:{}:1.0.0", archive.display()),
        ],
    );
    let unpacked = dir.path().join("from-archive");
    std::fs::create_dir(&unpacked).unwrap();
    tool(
        "tar",
        &[
            "-xf",
            archive.to_str().unwrap(),
            "-C",
            unpacked.to_str().unwrap(),
        ],
    );
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:1.0.0", unpacked.display()),
            dir.path().join("bundle2").to_str().unwrap(),
        ],
    );

    let docker = dir.path().join("hello-docker.tar");
    ok(kiln(
        &state,
        &[
            "images",
            "export",
            "hello",
            "--format",
            "docker-archive",
            docker.to_str().unwrap(),
        ],
    ));
    tool(
        "skopeo",
        &["inspect", &format!("docker-archive:{}", docker.display())],
    );
    // skopeo fills RepoTags only for registries; the tag resolves by name.
    let tagged: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            &format!("docker-archive:{}:kiln/hello:1.0.0", docker.display()),
        ],
    ))
    .unwrap();
    assert_eq!(tagged["Name"], "docker.io/kiln/hello");

    let qcow2 = dir.path().join("hello.qcow2");
    ok(kiln(
        &state,
        &[
            "images",
            "export",
            "hello",
            "--format",
            "qcow2",
            qcow2.to_str().unwrap(),
        ],
    ));
    tool("qemu-img", &["check", qcow2.to_str().unwrap()]);
    assert!(tool("qemu-img", &["info", qcow2.to_str().unwrap()]).contains("file format: qcow2"));

    // An image baked on an exported archive: images cascade.
    let child = dir.path().join("child.yaml");
    std::fs::write(&child, format!("name: child\nversion: 2.0.0\nparent: oci-archive:{}:1.0.0\nshell: sh\ncomponents: []\n", archive.display())).unwrap();
    ok(kiln(&state, &["bake", child.to_str().unwrap()]));
    let lineage: serde_json::Value = serde_json::from_str(&ok(kiln(
        &state,
        &["images", "inspect", "child", "--output", "json"],
    )))
    .unwrap();
    assert_eq!(lineage["layers"].as_array().unwrap().len(), 2);
}

#[test]
fn inspect_shows_the_lineage() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    ok(kiln(
        &state,
        &[
            "bake",
            hello_recipe().to_str().unwrap(),
            "--source-commit",
            "abc123",
        ],
    ));
    let text = ok(kiln(
        &state,
        &["images", "inspect", "hello/1.0.0/1", "--test-log"],
    ));
    assert!(text.contains("source commit: abc123"), "{text}");
    assert!(text.contains("busybox/1.35.0/1"), "{text}");
    assert!(text.contains("hello-service.yaml sha256:"), "{text}");
    assert!(text.contains("tests:         passed"), "{text}");
    assert!(
        text.contains("CmdExecution: Stdout: <h1>Hello from a kiln image</h1>"),
        "{text}"
    );
}

/// Every blob's name is the digest of its content (nothing half written),
/// and nothing is left mounted.
fn assert_store_consistent(state: &Path) {
    assert_blobs_whole(state);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(state.to_str().unwrap()),
        "a mount under the state directory remains"
    );
}

/// Every blob's name is the digest of its content: nothing half written.
fn assert_blobs_whole(state: &Path) {
    use sha2::{Digest, Sha256};
    for entry in std::fs::read_dir(state.join("images/oci/blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let hex = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            hex,
            "partial blob {}",
            path.display()
        );
    }
}

/// The files whose names start with `prefix` in the store's temporary
/// directory, with their sizes.
fn temp_files(state: &Path, prefix: &str) -> Vec<(PathBuf, u64)> {
    std::fs::read_dir(state.join("images/tmp"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| (e.path(), e.metadata().map_or(0, |m| m.len())))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_bake_killed_while_it_writes_a_layer_leaves_no_partial_blob_or_mount_and_the_next_bake_succeeds()
 {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // 96 MiB that does not compress: the layer takes long enough to write
    // for the kill to land in the middle of it.
    std::fs::write(
        dir.path().join("big.yaml"),
        "name: big\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Work\n        action: ExecuteBash\n        inputs:\n          commands:\n            - sleep 1\n            - dd if=/dev/urandom of=/big bs=1M count=96 2>/dev/null\n",
    )
    .unwrap();
    let recipe = dir.path().join("recipe.yaml");
    std::fs::write(
        &recipe,
        "name: big\nversion: 1.0.0\nparent: busybox\nshell: sh\ncomponents:\n  - path: big.yaml\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--state-dir")
        .arg(&state)
        .arg("bake")
        .arg(&recipe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let merged = state.join("images/tmp");
    // The parent's layer is written before the bake's overlay is mounted;
    // the component's layer after its step ends.
    loop {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        if mounts.contains(merged.to_str().unwrap()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bake never mounted its overlay"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let before: Vec<PathBuf> = temp_files(&state, "layer-")
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let writing = loop {
        if let Some((path, _)) = temp_files(&state, "layer-")
            .into_iter()
            .find(|(p, size)| !before.contains(p) && *size > (1 << 20))
        {
            break path;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the bake ended before it was seen writing its layer"
        );
        assert!(Instant::now() < deadline, "the bake never wrote its layer");
        std::thread::sleep(Duration::from_millis(1));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        writing.exists(),
        "the kill came after the layer {} was published: the test did not kill during the write",
        writing.display()
    );
    // Nothing the killed bake half wrote is a blob, and no image names it.
    assert_blobs_whole(&state);
    let listed = ok(kiln(&state, &["images", "ls"]));
    assert!(!listed.contains("big/"), "{listed}");

    let out = ok(kiln(&state, &["bake", recipe.to_str().unwrap()]));
    assert!(out.starts_with("big/1.0.0/1 available"), "{out}");
    assert_store_consistent(&state);
    assert!(
        !writing.exists(),
        "the next bake cleared what the killed one left"
    );
    assert_eq!(
        std::fs::read_dir(state.join("images/tmp")).unwrap().count(),
        0
    );
}

#[test]
fn every_parent_transport_bakes() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    ok(kiln(&state, &["bake", hello_recipe().to_str().unwrap()]));
    let docker = dir.path().join("hello-docker.tar");
    ok(kiln(
        &state,
        &[
            "images",
            "export",
            "hello",
            "--format",
            "docker-archive",
            docker.to_str().unwrap(),
        ],
    ));
    let oci = dir.path().join("hello-oci");
    ok(kiln(
        &state,
        &[
            "images",
            "export",
            "hello",
            "--format",
            "oci",
            oci.to_str().unwrap(),
        ],
    ));
    let tree = dir.path().join("tree");
    kiln_sandbox::busybox::assemble(&tree).unwrap();
    std::fs::write(tree.join("etc/motd"), "from a rootfs tarball\n").unwrap();
    let rootfs = dir.path().join("rootfs.tar");
    tool(
        "tar",
        &[
            "-cf",
            rootfs.to_str().unwrap(),
            "-C",
            tree.to_str().unwrap(),
            ".",
        ],
    );

    std::fs::write(
        dir.path().join("check.yaml"),
        "name: check\nschemaVersion: 1.0\nparameters:\n  - Expect:\n      type: string\nphases:\n  - name: test\n    steps:\n      - name: Look\n        action: ExecuteBash\n        inputs:\n          commands:\n            - test -f {{ Expect }}\n",
    )
    .unwrap();
    let parents = [
        (
            format!("docker-archive:{}", docker.display()),
            "/opt/hello/www/index.html",
        ),
        (
            format!("oci:{}:1.0.0", oci.display()),
            "/opt/hello/www/index.html",
        ),
        (format!("rootfs:{}", rootfs.display()), "/etc/motd"),
        ("kiln:hello/1.x.x".to_string(), "/opt/hello/www/index.html"),
    ];
    for (i, (parent, expect)) in parents.iter().enumerate() {
        let recipe = dir.path().join(format!("r{i}.yaml"));
        std::fs::write(
            &recipe,
            format!("name: child{i}\nversion: 1.0.0\nparent: {parent}\nshell: sh\ncomponents:\n  - path: check.yaml\n    parameters: {{ Expect: {expect} }}\n"),
        )
        .unwrap();
        let out = ok(kiln(&state, &["bake", recipe.to_str().unwrap()]));
        assert!(
            out.starts_with(&format!("child{i}/1.0.0/1 available")),
            "{parent}: {out}"
        );
    }
    // A failed image is no parent: kiln: takes only images that may be deployed.
    let lineage: serde_json::Value = serde_json::from_str(&ok(kiln(
        &state,
        &["images", "inspect", "child3", "--output", "json"],
    )))
    .unwrap();
    assert!(
        lineage["parents"][0]
            .as_str()
            .unwrap()
            .starts_with("hello/1.0.0/1")
    );
}

#[test]
fn tests_can_be_disabled_per_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::write(
        dir.path().join("failing.yaml"),
        "name: failing\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Make\n        action: CreateFile\n        inputs:\n          - path: /made\n  - name: test\n    steps:\n      - name: Never\n        action: ExecuteBash\n        inputs:\n          commands: [\"exit 1\"]\n",
    )
    .unwrap();
    let recipe = dir.path().join("recipe.yaml");
    std::fs::write(&recipe, "name: untested\nversion: 1.0.0\nparent: busybox\nshell: sh\ncomponents:\n  - path: failing.yaml\ntests:\n  enabled: false\n").unwrap();
    let out = ok(kiln(&state, &["bake", recipe.to_str().unwrap()]));
    assert!(out.starts_with("untested/1.0.0/1 available"), "{out}");
    let lineage: serde_json::Value = serde_json::from_str(&ok(kiln(
        &state,
        &["images", "inspect", "untested", "--output", "json"],
    )))
    .unwrap();
    assert_eq!(lineage["tests"], "disabled");
}

#[test]
fn gc_keeps_the_newest_images_and_their_parents_and_frees_the_rest() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let component = dir.path().join("c.yaml");
    for n in 1..=3 {
        std::fs::write(
            &component,
            format!("name: c\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Write\n        action: CreateFile\n        inputs:\n          - path: /build-{n}\n            content: build {n}\n"),
        )
        .unwrap();
        let recipe = dir.path().join("r.yaml");
        std::fs::write(&recipe, "name: app\nversion: 1.0.0\nparent: busybox\nshell: sh\ncomponents:\n  - path: c.yaml\n").unwrap();
        ok(kiln(&state, &["bake", recipe.to_str().unwrap()]));
    }
    let blobs = || {
        std::fs::read_dir(state.join("images/oci/blobs/sha256"))
            .unwrap()
            .count()
    };
    let before = blobs();

    let dry = ok(kiln(&state, &["gc", "--keep", "1", "--dry-run"]));
    assert!(
        dry.contains("would remove app/1.0.0/1") && dry.contains("would remove app/1.0.0/2"),
        "{dry}"
    );
    assert_eq!(blobs(), before, "a dry run removes nothing");

    let report: serde_json::Value = serde_json::from_str(&ok(kiln(
        &state,
        &["gc", "--keep", "1", "--output", "json"],
    )))
    .unwrap();
    assert_eq!(
        report["images"],
        serde_json::json!(["app/1.0.0/1", "app/1.0.0/2"])
    );
    assert!(report["blobs"].as_u64().unwrap() >= 4, "{report}");
    let left: serde_json::Value =
        serde_json::from_str(&ok(kiln(&state, &["images", "ls", "--output", "json"]))).unwrap();
    let names: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["busybox/1.35.0/1", "app/1.0.0/3"],
        "the kept image's parent stays"
    );
    // What stays is whole: every blob matches its name, and the image exports.
    for entry in std::fs::read_dir(state.join("images/oci/blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            hex::encode(Sha256::digest(std::fs::read(&path).unwrap()))
        );
    }
    assert!(blobs() < before);
    let oci = dir.path().join("oci");
    ok(kiln(
        &state,
        &[
            "images",
            "export",
            "app",
            "--format",
            "oci",
            oci.to_str().unwrap(),
        ],
    ));
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:1.0.0", oci.display()),
            dir.path().join("bundle").to_str().unwrap(),
        ],
    );
    assert!(dir.path().join("bundle/rootfs/build-3").exists());
}

/// Runs `argv` as the user nobody, as another local user would. setpriv
/// keeps root's capabilities until its own exec, so a shell in between
/// is what runs `argv` with none.
fn as_nobody(argv: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/bin/sh", "-c", "exec \"$@\"", "sh"])
        .args(argv)
        .output()
        .expect("setpriv (util-linux)")
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// Every file below `dir` with a setuid or setgid bit.
fn setid_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            out.extend(setid_files(&entry.path()));
        } else if kind.is_file() && mode(&entry.path()) & 0o6000 != 0 {
            out.push(entry.path());
        }
    }
    out
}

#[test]
fn another_user_can_read_nothing_in_the_state_dir_and_run_nothing_kiln_made() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test runs commands as another user and must run as root"
    );
    let dir = tempfile::tempdir().unwrap();
    // Other users may walk up to the state directory, as to /var/lib.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let state = dir.path().join("state");
    std::fs::write(
        dir.path().join("suid.yaml"),
        "name: suid\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Shell\n        action: ExecuteBash\n        inputs:\n          commands: [\"cp /bin/busybox /bin/rootshell\", \"chmod 6755 /bin/rootshell\"]\n",
    )
    .unwrap();
    let recipe = dir.path().join("recipe.yaml");
    std::fs::write(
        &recipe,
        "name: suid\nversion: 1.0.0\nparent: busybox\nshell: sh\ncomponents:\n  - path: suid.yaml\ntests: { enabled: false }\n",
    )
    .unwrap();
    ok(kiln(&state, &["bake", recipe.to_str().unwrap()]));
    ok(kiln(
        &state,
        &["params", "put", "/app/DbPassword", "hunter2"],
    ));

    assert_eq!(mode(&state), 0o700);
    for db in ["kiln.db", "kiln.db-wal", "kiln.db-shm"] {
        let p = state.join(db);
        if db == "kiln.db" || p.exists() {
            assert_eq!(mode(&p), 0o600, "{db}");
        }
    }
    let setid = setid_files(&state);
    assert!(
        setid.iter().any(|p| p.ends_with("bin/rootshell")),
        "the baked setuid file is somewhere in the store: {setid:?}"
    );
    for file in &setid {
        let out = as_nobody(&[file.to_str().unwrap(), "true"]);
        assert!(
            !out.status.success(),
            "nobody ran {} from kiln's state",
            file.display()
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let db = state.join("kiln.db");
    for argv in [
        ["ls", state.to_str().unwrap()],
        ["cat", db.to_str().unwrap()],
    ] {
        let out = as_nobody(&argv);
        assert!(!out.status.success(), "nobody could {argv:?}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("hunter2"),
            "{argv:?}"
        );
    }
}

#[test]
fn a_state_dir_an_older_kiln_left_readable_is_made_private() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("kiln.db"), "").unwrap();
    for (p, m) in [(&state, 0o755), (&state.join("kiln.db"), 0o644)] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap();
    }
    ok(kiln(&state, &["params", "put", "/app/Key", "v"]));
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("kiln.db")), 0o600);

    // A shared directory that is not kiln's is refused, and left as it was.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("notes.txt"), "mine").unwrap();
    std::fs::set_permissions(
        &shared,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let out = kiln(&shared, &["params", "ls"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("readable by other users"), "{err}");
    assert_eq!(mode(&shared), 0o1777);
    assert!(!shared.join("kiln.db").exists());
}
