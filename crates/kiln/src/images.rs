//! `kiln images ls | inspect | rm | export`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::output::{Format, print_json};
use crate::state::StateDir;
use kiln_image::Store;
use kiln_image::export::{self, Format as ExportFormat};
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
        dest: PathBuf,
    },
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
            dest,
        } => {
            let image = store.resolve(&reference)?;
            let layout = store.layout();
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
