//! `kiln gc`: retention and garbage collection of the image store.

use std::collections::HashSet;
use std::process::ExitCode;

use clap::Args;

use crate::output::{Format, print_json};
use crate::state::StateDir;
use kiln_image::Store;

#[derive(Args)]
pub struct GcArgs {
    /// Images of each name to keep, newest first (the images of each
    /// group's current and previous template version are kept too, and
    /// every kept image's parents).
    #[arg(long, default_value_t = 5)]
    keep: usize,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, value_enum, default_value_t)]
    output: Format,
}

fn in_use(state: &StateDir) -> anyhow::Result<HashSet<String>> {
    let path = state.join("kiln.db");
    if !path.exists() {
        return Ok(HashSet::new());
    }
    Ok(kiln_fleet::Db::open(&path)?.images_in_use()?)
}

pub fn main(args: GcArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    let store = Store::open(&state.join("images"))?;
    let _lock = store.lock()?;
    let report = kiln_image::gc::collect(&store, args.keep, None, &in_use(state)?, args.dry_run)?;
    if args.output == Format::Json {
        print_json(&report)?;
    } else {
        let verb = if args.dry_run {
            "would remove"
        } else {
            "removed"
        };
        for image in &report.images {
            println!("{verb} {image}");
        }
        println!(
            "{verb} {} images, {} blobs ({}), {} unpacked layers, {} cache entries",
            report.images.len(),
            report.blobs,
            crate::images::human(report.bytes),
            report.layers,
            report.cache_entries
        );
    }
    Ok(ExitCode::SUCCESS)
}
