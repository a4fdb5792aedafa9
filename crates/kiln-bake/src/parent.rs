//! Parent images, named with skopeo's transport names: `busybox`,
//! `debian:SUITE`, `oci:DIR[:TAG]`, `oci-archive:PATH[:TAG]`,
//! `docker-archive:PATH`, `rootfs:PATH.tar`, `kiln:NAME/VERSION` and
//! `docker://HOST/REPO:TAG` (or `@sha256:...`) from a registry.
//! Built, imported and pulled parents are kept in the store and found
//! again: a registry parent is pulled once.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_image::import::{self, ImportError};
use kiln_image::tarball::ExtractLimits;
use kiln_image::{ImageRecord, Store, Version};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParentRef {
    Busybox,
    Debian(String),
    Oci {
        dir: PathBuf,
        tag: Option<String>,
    },
    OciArchive {
        path: PathBuf,
        tag: Option<String>,
    },
    DockerArchive(PathBuf),
    Rootfs(PathBuf),
    Kiln(String),
    /// An image in a registry, pulled once into the store.
    Registry(kiln_registry::Reference),
    /// A public AMI (`amazon-linux:2023`, `ubuntu:22.04`, `ubuntu:24.04`,
    /// `windows-server:2022`): valid in a recipe, baked only on the AWS
    /// target (`kiln synth aws`), where Image Builder starts from it.
    Ami(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    #[error("parent {parent}: {source}")]
    Import { parent: String, source: ImportError },
    #[error("parent {parent}: {source}")]
    Store {
        parent: String,
        source: kiln_image::StoreError,
    },
    #[error("parent {parent}: {why}")]
    Build { parent: String, why: String },
    #[error("parent {parent}: {source}")]
    Registry {
        parent: String,
        source: Box<kiln_registry::RegistryError>,
    },
}

fn split_tag(rest: &str) -> (PathBuf, Option<String>) {
    match rest.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') && !tag.is_empty() => {
            (PathBuf::from(path), Some(tag.to_string()))
        }
        _ => (PathBuf::from(rest), None),
    }
}

impl ParentRef {
    pub fn parse(text: &str) -> Result<ParentRef, String> {
        if text.starts_with("docker://") {
            return kiln_registry::Reference::parse(text)
                .map(ParentRef::Registry)
                .map_err(|e| e.to_string());
        }
        let (transport, rest) = text.split_once(':').unwrap_or((text, ""));
        Ok(match (transport, rest) {
            ("busybox", "") => ParentRef::Busybox,
            ("debian", suite) if kiln_toe::vars::is_name(suite) => {
                ParentRef::Debian(suite.to_string())
            }
            ("oci", rest) if !rest.is_empty() => {
                let (dir, tag) = split_tag(rest);
                ParentRef::Oci { dir, tag }
            }
            ("oci-archive", rest) if !rest.is_empty() => {
                let (path, tag) = split_tag(rest);
                ParentRef::OciArchive { path, tag }
            }
            ("docker-archive", path) if !path.is_empty() => {
                ParentRef::DockerArchive(PathBuf::from(path))
            }
            ("rootfs", path) if !path.is_empty() => ParentRef::Rootfs(PathBuf::from(path)),
            ("kiln", image) if !image.is_empty() => ParentRef::Kiln(image.to_string()),
            ("amazon-linux", "2023")
            | ("ubuntu", "22.04" | "24.04")
            | ("windows-server", "2022") => ParentRef::Ami(text.to_string()),
            _ => {
                return Err(format!(
                    "{text:?} is not a parent image; use busybox, debian:SUITE, oci:DIR[:TAG], oci-archive:PATH[:TAG], docker-archive:PATH, rootfs:PATH.tar, kiln:NAME/VERSION or docker://HOST/REPO:TAG, or for the AWS target amazon-linux:2023, ubuntu:22.04, ubuntu:24.04 or windows-server:2022"
                ));
            }
        })
    }

    /// Relative paths are taken from the recipe's directory.
    pub fn relative_to(self, base: &Path) -> ParentRef {
        let fix = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        match self {
            ParentRef::Oci { dir, tag } => ParentRef::Oci { dir: fix(dir), tag },
            ParentRef::OciArchive { path, tag } => ParentRef::OciArchive {
                path: fix(path),
                tag,
            },
            ParentRef::DockerArchive(p) => ParentRef::DockerArchive(fix(p)),
            ParentRef::Rootfs(p) => ParentRef::Rootfs(fix(p)),
            other => other,
        }
    }
}

/// Finds or makes the parent image in the store; `registry` says how to
/// reach a registry parent's registry. The caller holds the store lock.
pub fn resolve(
    store: &Store,
    parent: &ParentRef,
    text: &str,
    registry: &kiln_registry::Options,
    progress: &mut dyn FnMut(&str),
) -> Result<ImageRecord, ParentError> {
    let imp = |source: ImportError| ParentError::Import {
        parent: text.to_string(),
        source,
    };
    let file_name = |p: &Path| {
        p.file_stem()
            .map(|s| {
                s.to_string_lossy()
                    .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-")
            })
            .unwrap_or_default()
    };
    match parent {
        ParentRef::Kiln(image) => {
            store
                .resolve_deployable(image)
                .map_err(|source| ParentError::Store {
                    parent: text.into(),
                    source,
                })
        }
        ParentRef::Ami(_) => Err(ParentError::Build {
            parent: text.into(),
            why: "an AMI parent has no local image: it bakes only on the AWS target \
                  (`kiln synth aws`, where EC2 Image Builder starts from it); \
                  use busybox or debian:SUITE to bake here"
                .into(),
        }),
        ParentRef::Busybox => busybox(store, progress).map_err(imp),
        ParentRef::Registry(reference) => kiln_registry::pull(
            store,
            reference,
            registry,
            kiln_registry::Policy::Missing,
            &limits(text)?,
            progress,
        )
        .map(|pulled| pulled.image)
        .map_err(|source| ParentError::Registry {
            parent: text.into(),
            source: Box::new(source),
        }),
        ParentRef::Debian(suite) => debian(store, suite, text, progress),
        ParentRef::Rootfs(path) => import::import_rootfs_tar(
            store,
            path,
            &format!("rootfs-{}", file_name(path)),
            &limits(text)?,
        )
        .map_err(imp),
        ParentRef::Oci { dir, tag } => import::import_oci_dir(
            store,
            dir,
            tag.as_deref(),
            &format!("oci-{}", file_name(dir)),
            &limits(text)?,
        )
        .map_err(imp),
        ParentRef::OciArchive { path, tag } => import::import_oci_archive(
            store,
            path,
            tag.as_deref(),
            &format!("oci-{}", file_name(path)),
            &limits(text)?,
        )
        .map_err(imp),
        ParentRef::DockerArchive(path) => import::import_docker_archive(
            store,
            path,
            &format!("docker-{}", file_name(path)),
            &limits(text)?,
        )
        .map_err(imp),
    }
}

/// The bounds on an imported parent: the defaults of [`ExtractLimits`],
/// overridden by the `KILN_IMPORT_*` environment variables.
fn limits(parent: &str) -> Result<ExtractLimits, ParentError> {
    ExtractLimits::from_env().map_err(|why| ParentError::Build {
        parent: parent.to_string(),
        why,
    })
}

/// The busybox parent, keyed by the host busybox binary's digest so that
/// an upgraded package makes a new parent.
fn busybox(store: &Store, progress: &mut dyn FnMut(&str)) -> Result<ImageRecord, ImportError> {
    let binary = kiln_sandbox::busybox::find().map_err(|e| ImportError::Invalid {
        source_name: "busybox".into(),
        why: e.to_string(),
    })?;
    let data = std::fs::read(&binary).map_err(|error| ImportError::Io {
        path: binary.clone(),
        error,
    })?;
    let source = format!("busybox:sha256:{}", kiln_image::store::sha256_hex(&data));
    if let Some(found) = import::find_by_source(store, &source)? {
        return Ok(found);
    }
    progress("assembling the busybox parent image");
    let tree = store.temp_path("busybox");
    kiln_sandbox::busybox::assemble(&tree).map_err(|e| ImportError::Invalid {
        source_name: "busybox".into(),
        why: e.to_string(),
    })?;
    let version = busybox_version(&binary).unwrap_or(Version {
        major: 1,
        minor: 0,
        patch: 0,
    });
    import::image_from_tree(store, &tree, "busybox", version, &source)
}

fn busybox_version(binary: &Path) -> Option<Version> {
    let out = kiln_sandbox::tool::output(&mut Command::new(binary), None).ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split_whitespace().nth(1)?.trim_start_matches('v');
    v.parse().ok()
}

/// A Debian parent made with mmdebstrap from the machine's own apt
/// sources, so it works wherever the host's package mirror is reachable.
fn debian(
    store: &Store,
    suite: &str,
    text: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<ImageRecord, ParentError> {
    let imp = |source: ImportError| ParentError::Import {
        parent: text.to_string(),
        source,
    };
    let source = format!("debian:{suite}");
    if let Some(found) = import::find_by_source(store, &source).map_err(imp)? {
        return Ok(found);
    }
    let build = |why: String| ParentError::Build {
        parent: text.to_string(),
        why,
    };
    if kiln_sandbox::probe::find_on_path("mmdebstrap").is_none() {
        return Err(build(
            "mmdebstrap is not installed: install the Debian package mmdebstrap".into(),
        ));
    }
    let sources = apt_sources(suite).map_err(build)?;
    progress(&format!(
        "building the debian:{suite} parent image with mmdebstrap (once; later bakes reuse it)"
    ));
    let tree = store.temp_path("debian");
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=minbase", "--mode=root", "--quiet", suite])
        .arg(&tree)
        .arg("-");
    if let Err(e) = kiln_sandbox::tool::run_with_input(&mut cmd, Some(sources.as_bytes())) {
        // Best effort: mmdebstrap's failure is the error to report; the tree is
        // in the store's temporary area, which the next bake empties.
        let _ = std::fs::remove_dir_all(&tree);
        return Err(build(format!("building debian:{suite}: {e}")));
    }
    if let Err(e) = remove_device_nodes(&tree.join("dev")) {
        let _ = std::fs::remove_dir_all(&tree);
        return Err(build(format!("building debian:{suite}: {e}")));
    }
    let version = std::fs::read_to_string(tree.join("etc/debian_version"))
        .ok()
        .and_then(|v| {
            let mut parts = v.trim().split('.').map(|p| p.parse::<u64>().ok());
            Some(Version {
                major: parts.next()??,
                minor: parts.next().flatten().unwrap_or(0),
                patch: 0,
            })
        })
        .unwrap_or(Version {
            major: 1,
            minor: 0,
            patch: 0,
        });
    import::image_from_tree(store, &tree, &format!("debian-{suite}"), version, &source).map_err(imp)
}

/// mmdebstrap's root mode leaves /dev/null, /dev/console and the like in
/// the tree. Images keep /dev empty, as Debian's container images do: every
/// runtime (kiln's sandboxes, a booted kernel's devtmpfs) provides its own,
/// and kiln's imports refuse device nodes, so an image carrying them could
/// not be exported and imported again.
fn remove_device_nodes(dev: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir(dev) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dev.display()))?;
        let kind = entry
            .file_type()
            .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        if kind.is_dir() {
            remove_device_nodes(&entry.path())?;
        } else if kind.is_char_device() || kind.is_block_device() {
            std::fs::remove_file(entry.path())
                .map_err(|e| format!("remove {}: {e}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The machine's apt sources in deb822 or one-line form, for mmdebstrap's
/// standard input, with the host's release replaced by `suite`.
fn apt_sources(suite: &str) -> Result<String, String> {
    let host = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("VERSION_CODENAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .filter(|c| !c.is_empty());
    let mut out = String::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "sources" || e == "list"))
            .collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        if let Ok(text) = std::fs::read_to_string(&f) {
            // Only Debian's own archives: third-party repositories of the
            // host have no place in a base image.
            let debian = text.contains("deb.debian.org")
                || text.contains("security.debian.org")
                || text.contains("/debian");
            if debian && !text.trim().is_empty() {
                let text = match &host {
                    Some(host) => text.replace(host.as_str(), suite),
                    None => text,
                };
                out.push_str(&text);
                out.push('\n');
            }
        }
    }
    if out.trim().is_empty() {
        return Err(
            "no Debian apt sources found in /etc/apt/sources.list or /etc/apt/sources.list.d"
                .into(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ami_parent_says_it_bakes_only_on_the_aws_target() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("images")).unwrap();
        let text = "windows-server:2022";
        let parent = ParentRef::parse(text).unwrap();
        let e = resolve(&store, &parent, text, &Default::default(), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("parent windows-server:2022: an AMI parent has no local image: it bakes only on the AWS target (`kiln synth aws`"),
            "{e}"
        );
    }

    #[test]
    fn parents_use_skopeo_transport_names() {
        assert_eq!(ParentRef::parse("busybox"), Ok(ParentRef::Busybox));
        assert_eq!(
            ParentRef::parse("windows-server:2022"),
            Ok(ParentRef::Ami("windows-server:2022".into()))
        );
        assert!(ParentRef::parse("windows-server:2019").is_err());
        assert_eq!(
            ParentRef::parse("debian:bookworm"),
            Ok(ParentRef::Debian("bookworm".into()))
        );
        assert_eq!(
            ParentRef::parse("oci:/x/layout:v1"),
            Ok(ParentRef::Oci {
                dir: "/x/layout".into(),
                tag: Some("v1".into())
            })
        );
        assert_eq!(
            ParentRef::parse("oci-archive:img.tar"),
            Ok(ParentRef::OciArchive {
                path: "img.tar".into(),
                tag: None
            })
        );
        assert_eq!(
            ParentRef::parse("kiln:web/1.x.x"),
            Ok(ParentRef::Kiln("web/1.x.x".into()))
        );
        assert_eq!(
            ParentRef::parse("docker://127.0.0.1:5000/base:1"),
            Ok(ParentRef::Registry(
                kiln_registry::Reference::parse("docker://127.0.0.1:5000/base:1").unwrap()
            ))
        );
        assert!(ParentRef::parse("docker://Bad/Name").is_err());
        assert!(ParentRef::parse("debian:").is_err());
    }
}
