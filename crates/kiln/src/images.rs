//! `kiln images ls | inspect | rm | export | push | pull`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::output::{Format, print_json};
use crate::state::StateDir;
use kiln_image::Store;
use kiln_image::export::{self, BootOptions, DiskFormat, Format as ExportFormat};
use kiln_image::store::ANNOTATION_TEST_LOG;

#[derive(Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    command: ImagesCommand,
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// List images, oldest first.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show an image's lineage: parents, components, source commit, tests, sizes.
    Inspect {
        /// A digest (or 12+ hex digits of one), NAME, NAME/1.2.3, NAME/1.x.x or NAME/1.2.3/BUILD.
        reference: String,
        /// Print the test log too.
        #[arg(long)]
        test_log: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Remove an image from the store (garbage collection frees its blobs).
    Rm { reference: String },
    /// Write an image as oci, oci-archive, docker-archive, raw (ext4) or qcow2.
    Export {
        reference: String,
        #[arg(long)]
        format: ExportFormat,
        /// With raw or qcow2: a whole disk that UEFI firmware boots (GPT,
        /// an EFI system partition with systemd-boot and the image's own
        /// kernel and initramfs, the image as the ext4 root partition),
        /// for a hypervisor or an AMI import. The serial console is ttyS0.
        #[arg(long)]
        bootable: bool,
        dest: PathBuf,
    },
    /// Push an image to a registry: docker://HOST/REPO:TAG.
    Push {
        /// A digest (or 12+ hex digits of one), NAME, NAME/1.2.3, NAME/1.x.x or NAME/1.2.3/BUILD.
        reference: String,
        /// docker://HOST/REPO:TAG (or docker://HOST/REPO@sha256:... of this image).
        dest: String,
        /// zstd: the layers as stored (kiln bakes zstd; the registry's
        /// digest is the store's). gzip: recompressed for tools that read
        /// no zstd (docker before 23, umoci 0.4), with another digest.
        #[arg(long, value_enum, default_value_t)]
        compression_format: Compression,
        #[command(flatten)]
        registry: RegistryArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Pull an image from a registry into the store (docker://HOST/REPO:TAG
    /// or @sha256:...), asking the registry what the reference names now.
    Pull {
        source: String,
        #[command(flatten)]
        registry: RegistryArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

/// `--compression-format`, as podman push names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
enum Compression {
    #[default]
    Zstd,
    Gzip,
}

/// How to reach a registry, with skopeo's and podman's flag names.
#[derive(Args)]
struct RegistryArgs {
    /// Verify the registry's TLS certificate and use HTTPS only;
    /// `--tls-verify=false` for a registry on loopback or with a
    /// self-signed certificate (then plain HTTP is tried too).
    #[arg(long, default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    tls_verify: bool,
    /// Credentials from this file only (containers-auth.json format);
    /// otherwise REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
    /// ~/.config/containers/auth.json, ~/.docker/config.json.
    #[arg(long)]
    authfile: Option<PathBuf>,
    /// CA certificates (*.crt) to trust for the registry, instead of
    /// /etc/containers/certs.d/HOST/ and the built-in roots.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
}

impl RegistryArgs {
    fn options(&self) -> kiln_registry::Options {
        kiln_registry::Options {
            tls_verify: self.tls_verify,
            authfile: self.authfile.clone(),
            cert_dir: self.cert_dir.clone(),
        }
    }
}

/// What a push or pull is doing: a spinner on a terminal, lines elsewhere.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new() -> Progress {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Progress { bar }
    }

    fn say(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(message.to_string()),
            None => eprintln!("==> {message}"),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

#[derive(serde::Serialize)]
struct PulledOut {
    reference: String,
    image: String,
    digest: String,
    registry_digest: String,
}

pub fn main(args: ImagesArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    let store = Store::open(&state.join("images"))?;
    match args.command {
        ImagesCommand::Ls { output } => {
            // The groups running each image are the daemon's to tell
            // (`GET /v1/images`); this listing reads the store alone.
            let list: Vec<_> = store
                .images()?
                .iter()
                .map(|i| kiln_api::lineage::summary(&store, i, Vec::new()))
                .collect();
            if output == Format::Json {
                print_json(&list)?;
            } else {
                println!(
                    "{:<36} {:<10} {:<19} {:>10}  CREATED",
                    "IMAGE", "STATUS", "DIGEST", "SIZE"
                );
                for i in list {
                    println!(
                        "{:<36} {:<10} {:<19} {:>10}  {}",
                        i.reference,
                        i.status,
                        &i.digest[..19.min(i.digest.len())],
                        human(i.size),
                        i.created
                    );
                }
            }
        }
        ImagesCommand::Inspect {
            reference,
            test_log,
            output,
        } => {
            let image = store.resolve(&reference)?;
            let lineage = kiln_api::lineage::lineage(&store, &image)?;
            if output == Format::Json {
                print_json(&lineage)?;
            } else {
                crate::lineage::print(&lineage);
            }
            if test_log && let Some(digest) = image.annotation(ANNOTATION_TEST_LOG) {
                println!(
                    "--- test log\n{}",
                    String::from_utf8_lossy(&store.read_blob(digest)?)
                );
            }
        }
        ImagesCommand::Rm { reference } => {
            let _lock = store.lock()?;
            let image = store.resolve(&reference)?;
            store.remove_image(&image)?;
            println!("removed {} ({})", image.reference(), image.digest());
        }
        ImagesCommand::Export {
            reference,
            format,
            bootable,
            dest,
        } => {
            let image = store.resolve(&reference)?;
            let layout = store.layout();
            if bootable {
                let disk_format = match format {
                    ExportFormat::Raw => DiskFormat::Raw,
                    ExportFormat::Qcow2 => DiskFormat::Qcow2,
                    other => anyhow::bail!(
                        "--bootable makes a disk: use it with --format raw or qcow2, not {other}"
                    ),
                };
                let _lock = store.lock()?;
                let disk = kiln_image::flatten::export_bootable_image(
                    &store,
                    &image,
                    &dest,
                    disk_format,
                    &BootOptions::default(),
                )?;
                println!(
                    "exported {} to {} as a bootable {format} disk ({}, UEFI): kernel {}, \
                     root PARTUUID={}",
                    image.reference(),
                    dest.display(),
                    human(disk.size),
                    disk.kernel_version,
                    disk.root_partuuid
                );
                return Ok(ExitCode::SUCCESS);
            }
            match format {
                ExportFormat::Oci => export::export_oci_dir(
                    &layout,
                    &image.descriptor,
                    &image.version.to_string(),
                    &dest,
                )?,
                ExportFormat::OciArchive => export::export_oci_archive(
                    &layout,
                    &image.descriptor,
                    &image.version.to_string(),
                    &dest,
                )?,
                ExportFormat::DockerArchive => {
                    let tag = format!("kiln/{}:{}", image.name, image.version);
                    export::export_docker_archive(&layout, &image.descriptor, &tag, &dest)?
                }
                ExportFormat::Raw | ExportFormat::Qcow2 => {
                    let _lock = store.lock()?;
                    let rootfs = kiln_image::flatten::flatten(&store, &image)
                        .context("unpacking the image's root filesystem")?;
                    let result = if format == ExportFormat::Raw {
                        export::export_raw(&rootfs, &dest)
                    } else {
                        export::export_qcow2(&rootfs, &dest)
                    };
                    // The export's own result is what to report; the rootfs is
                    // in the store's temporary area, which clean_temp empties.
                    let _ = std::fs::remove_dir_all(&rootfs);
                    result?
                }
            }
            println!("exported {} to {}", image.reference(), dest.display());
        }
        ImagesCommand::Push {
            reference,
            dest,
            compression_format,
            registry,
            output,
        } => {
            let image = store.resolve(&reference)?;
            let dest = kiln_registry::Reference::parse(&dest)?;
            let format = match compression_format {
                Compression::Zstd => kiln_registry::LayerFormat::AsStored,
                Compression::Gzip => kiln_registry::LayerFormat::Gzip,
            };
            let mut progress = Progress::new();
            let pushed = kiln_registry::push(
                &store,
                &image,
                &dest,
                &registry.options(),
                format,
                &mut |m| progress.say(m),
            )?;
            drop(progress);
            if output == Format::Json {
                print_json(&pushed)?;
            } else {
                println!(
                    "pushed {} to {} ({}; {} blobs uploaded, {} mounted, {} already there)",
                    image.reference(),
                    pushed.reference,
                    pushed.digest,
                    pushed.uploaded,
                    pushed.mounted,
                    pushed.existing
                );
            }
        }
        ImagesCommand::Pull {
            source,
            registry,
            output,
        } => {
            let reference = kiln_registry::Reference::parse(&source)?;
            let _lock = store.lock()?;
            let limits =
                kiln_image::tarball::ExtractLimits::from_env().map_err(anyhow::Error::msg)?;
            let mut progress = Progress::new();
            let pulled = kiln_registry::pull(
                &store,
                &reference,
                &registry.options(),
                kiln_registry::Policy::Always,
                &limits,
                &mut |m| progress.say(m),
            )?;
            drop(progress);
            let out = PulledOut {
                reference: reference.to_string(),
                image: pulled.image.reference(),
                digest: pulled.image.digest(),
                registry_digest: pulled.digest,
            };
            if output == Format::Json {
                print_json(&out)?;
            } else {
                println!("pulled {} as {} ({})", out.reference, out.image, out.digest);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}
