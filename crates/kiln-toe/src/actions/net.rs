//! Downloads and uploads: WebDownload over HTTP(S), S3Download and
//! S3Upload against kiln's artifact store.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::{ActionError, Ctx, Outputs, fail, flag, output, required, text};
use crate::digest::hex_digest;
use kiln_sandbox::Kind;

/// AWSTOE retries each download up to five times on its own.
const DOWNLOAD_ATTEMPTS: u32 = 5;

pub fn web_download(ctx: &mut Ctx, inputs: &Value) -> Result<Outputs, ActionError> {
    let mut destinations = Vec::new();
    for item in super::items(inputs) {
        destinations.push(download_one(ctx, item)?);
    }
    Ok(vec![output("destination", destinations.join("\n"))])
}

fn download_one(ctx: &mut Ctx, item: &Map<String, Value>) -> Result<String, ActionError> {
    let source = required(item, "source")?;
    let raw_dest = required(item, "destination")?;
    let overwrite = flag(item, "overwrite", true)?;
    let checksum = text(item, "checksum").filter(|c| !c.is_empty());
    let algorithm = text(item, "algorithm").filter(|a| !a.is_empty());
    if !(source.starts_with("http://") || source.starts_with("https://")) {
        return Err(fail(format!("{source} is not an http:// or https:// URL")));
    }
    let destination = if raw_dest.ends_with('/') {
        let name = source
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .rsplit('/')
            .next()
            .unwrap_or_default();
        if name.is_empty() {
            return Err(fail(format!(
                "{source} names no file; give destination a file name"
            )));
        }
        format!("{raw_dest}{name}")
    } else {
        raw_dest.clone()
    };
    let path = ctx.path(&destination);
    let root = ctx.root();
    if let Some(meta) = root.stat(&path).map_err(|e| fail(e.to_string()))? {
        if meta.kind == Kind::Dir {
            return Err(fail(format!("{destination} is a folder")));
        }
        if !overwrite {
            return Err(fail(format!(
                "{destination} already exists and overwrite is false"
            )));
        }
        // A file that already has the expected checksum is not fetched again.
        if let (Some(sum), Some(alg)) = (&checksum, &algorithm) {
            let data = root.read(&path).map_err(|e| fail(e.to_string()))?;
            if hex_digest(alg, &data).is_some_and(|d| d.eq_ignore_ascii_case(sum)) {
                ctx.console(&format!(
                    "WebDownload: {destination} already matches its checksum"
                ));
                return Ok(destination);
            }
        }
    }
    let insecure = flag(item, "ignoreCertificateErrors", false)?;
    let body = fetch(ctx, &source, insecure)?;
    if let (Some(sum), Some(alg)) = (&checksum, &algorithm) {
        let got = hex_digest(alg, &body).ok_or_else(|| fail(format!("unknown algorithm {alg}")))?;
        if !got.eq_ignore_ascii_case(sum) {
            return Err(fail(format!(
                "{source}: {alg} checksum is {got}, expected {sum}"
            )));
        }
    }
    let parent = match path.rsplit_once('/') {
        Some(("", _)) | None => "/".to_string(),
        Some((dir, _)) => dir.to_string(),
    };
    root.create_dir_all(&parent, 0o755)
        .map_err(|e| fail(e.to_string()))?;
    root.write(&path, &body, 0o644, false)
        .map_err(|e| fail(e.to_string()))?;
    ctx.console(&format!(
        "WebDownload: {source} -> {destination} ({} bytes)",
        body.len()
    ));
    Ok(destination)
}

fn fetch(ctx: &Ctx, url: &str, insecure: bool) -> Result<Vec<u8>, ActionError> {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)));
    if let Some(deadline) = ctx.deadline {
        config = config.timeout_global(Some(
            deadline.saturating_duration_since(std::time::Instant::now()),
        ));
    }
    if insecure {
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .disable_verification(true)
                .build(),
        );
    }
    let agent: ureq::Agent = config.build().into();
    let mut last = String::new();
    for attempt in 1..=DOWNLOAD_ATTEMPTS {
        if attempt > 1 {
            std::thread::sleep(Duration::from_millis(250 << (attempt - 2)));
        }
        match agent.get(url).call() {
            Ok(resp) if resp.status() == 200 => {
                let mut body = Vec::new();
                match resp.into_body().into_reader().read_to_end(&mut body) {
                    Ok(_) => return Ok(body),
                    Err(e) => last = format!("reading the body: {e}"),
                }
            }
            // Only a 200 counts, and a client error will not improve.
            Ok(resp) if resp.status().is_client_error() => {
                return Err(fail(format!("{url}: HTTP {}", resp.status())));
            }
            Ok(resp) => last = format!("HTTP {}", resp.status()),
            Err(e) => last = e.to_string(),
        }
        ctx.console(&format!(
            "WebDownload: attempt {attempt} of {url} failed: {last}"
        ));
    }
    Err(fail(format!(
        "{url}: {last} (after {DOWNLOAD_ATTEMPTS} attempts)"
    )))
}

/// Maps `s3://bucket/key` onto the artifact store; any other bucket is out
/// of reach on the local target.
fn store_path(ctx: &Ctx, uri: &str) -> Result<(PathBuf, String), ActionError> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| fail(format!("{uri} is not an s3:// URI")))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(store) = &ctx.run.opts.artifacts else {
        return Err(fail(format!(
            "{uri}: no artifact store is configured, so no S3 bucket is reachable on the local target"
        )));
    };
    if bucket != store.bucket {
        return Err(fail(format!(
            "{uri}: bucket {bucket:?} is not the pipeline's artifact bucket ({:?}); on the local target only that bucket is reachable",
            store.bucket
        )));
    }
    if Path::new(key)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(fail(format!(
            "{uri}: the key may not hold `..` or start with `/`"
        )));
    }
    if !key.starts_with(&store.prefix) {
        return Err(fail(format!(
            "{uri}: only keys below s3://{}/{} are this pipeline's",
            store.bucket, store.prefix
        )));
    }
    Ok((store.dir.clone(), key.to_string()))
}

pub fn s3_download(ctx: &mut Ctx, inputs: &Value) -> Result<Outputs, ActionError> {
    for item in super::items(inputs) {
        let source = required(item, "source")?;
        let destination = required(item, "destination")?;
        let overwrite = flag(item, "overwrite", true)?;
        let (dir, key) = store_path(ctx, source.trim_end_matches('*'))?;
        let root = ctx.root();
        let dest = ctx.path(&destination);
        let mut objects = Vec::new();
        if source.ends_with("/*") {
            collect_files(&dir.join(&key), &key, &mut objects)
                .map_err(|e| fail(format!("{source}: {e}")))?;
            if !root
                .stat(&dest)
                .map_err(|e| fail(e.to_string()))?
                .is_some_and(|m| m.kind == Kind::Dir)
            {
                return Err(fail(format!(
                    "the destination folder {destination} does not exist"
                )));
            }
        } else {
            objects.push(key.clone());
        }
        for object in objects {
            let data = std::fs::read(dir.join(&object))
                .map_err(|e| fail(format!("s3://{}: {e}", object)))?;
            let target = if source.ends_with("/*") {
                let relative = object
                    .strip_prefix(&key)
                    .unwrap_or(&object)
                    .trim_start_matches('/');
                let t = kiln_sandbox::rootfs::join(&dest, relative);
                if let Some((parent, _)) = t.rsplit_once('/') {
                    root.create_dir_all(if parent.is_empty() { "/" } else { parent }, 0o755)
                        .map_err(|e| fail(e.to_string()))?;
                }
                t
            } else {
                dest.clone()
            };
            root.write(&target, &data, 0o644, !overwrite)
                .map_err(|e| fail(e.to_string()))?;
        }
    }
    Ok(Vec::new())
}

fn collect_files(dir: &Path, prefix: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = format!(
            "{}/{}",
            prefix.trim_end_matches('/'),
            entry.file_name().to_string_lossy()
        );
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(&entry.path(), &name, out)?;
        } else if kind.is_file() {
            out.push(name);
        }
    }
    out.sort();
    Ok(())
}

pub fn s3_upload(ctx: &mut Ctx, inputs: &Value) -> Result<Outputs, ActionError> {
    for item in super::items(inputs) {
        let source = required(item, "source")?;
        let destination = required(item, "destination")?;
        let recurse = flag(item, "recurse", false)?;
        let (dir, key) = store_path(ctx, &destination)?;
        let root = ctx.root();
        let mut files: Vec<(String, String)> = Vec::new();
        if let Some(folder) = source.strip_suffix("/*") {
            let folder = ctx.path(if folder.is_empty() { "/" } else { folder });
            let mut pending = vec![(folder, String::new())];
            while let Some((d, rel)) = pending.pop() {
                for (name, k) in root.read_dir(&d).map_err(|e| fail(e.to_string()))? {
                    let (full, r) = (
                        kiln_sandbox::rootfs::join(&d, &name),
                        format!("{rel}{name}"),
                    );
                    match k {
                        Kind::Dir if recurse => pending.push((full, format!("{r}/"))),
                        Kind::File => files.push((full, r)),
                        _ => {}
                    }
                }
            }
        } else {
            let name = source.rsplit('/').next().unwrap_or(&source).to_string();
            files.push((ctx.path(&source), name));
        }
        for (path, rel) in files {
            let data = root.read(&path).map_err(|e| fail(e.to_string()))?;
            let object = if key.is_empty() || key.ends_with('/') {
                format!("{key}{rel}")
            } else {
                key.clone()
            };
            write_atomic(&dir.join(&object), &data)
                .map_err(|e| fail(format!("{destination}: {e}")))?;
        }
    }
    Ok(Vec::new())
}

/// A half-written object is never visible: write aside, sync, rename.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
