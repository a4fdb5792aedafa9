//! A bake: parent layers below an overlay, each component's build and
//! validate phases in the sandbox, each component's changes one layer,
//! then config, manifest and the test gate.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use oci_spec::image::{ConfigBuilder, Descriptor, HistoryBuilder, ImageConfiguration, MediaType};
use sha2::{Digest, Sha256};

use crate::parent::{self, ParentError, ParentRef};
use crate::recipe::Recipe;
use crate::sandbox::{Overlay, instance, run_options};
use crate::test_gate::test_gate;
use crate::types::{
    BakeError, BakeObserver, BakeOptions, BakeReport, ComponentFailure, ComponentReport,
    TestReport, file_name, setup,
};
use kiln_image::import;
use kiln_image::store::{ANNOTATION_RECIPE_KEY, ANNOTATION_TEST_LOG, CachedLayer};
use kiln_image::{ImageRecord, Status, Store};
use kiln_toe::Document;

pub const LABEL_VERSION: &str = "dev.kiln.image.version";
pub const LABEL_RECIPE: &str = "dev.kiln.recipe.digest";
pub const LABEL_PARENT: &str = "dev.kiln.parent";
pub const LABEL_PARENT_DIGEST: &str = "dev.kiln.parent.digest";
pub const LABEL_SOURCE_COMMIT: &str = "dev.kiln.source.commit";
/// `systemd` on an image baked in boot mode (`init: systemd`): its test
/// gate booted it, and a launch template that does not say otherwise
/// boots its instances too.
pub const LABEL_INIT: &str = "dev.kiln.init";
pub const ANNOTATION_TESTS: &str = "dev.kiln.image.tests";

fn hash(parts: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(parts.to_string().as_bytes()))
}

/// What goes into one component's layer: the layers below (through the
/// previous key), the document, its parameters and the bake settings it
/// sees. Any change gives a new key, and only then does the layer rebuild.
fn component_key(
    below: &str,
    doc: &Document,
    params: &BTreeMap<String, String>,
    recipe: &Recipe,
) -> String {
    hash(&serde_json::json!({
        "format": 1,
        "below": below,
        "document": hex::encode(Sha256::digest(doc.source.as_bytes())),
        "nested": nested_documents(doc),
        "parameters": params,
        "working_directory": recipe.working_directory,
        "env": recipe.env,
        "allow_sh": recipe.allow_sh,
    }))
}

/// Digests of the documents an ExecuteDocument step names literally.
fn nested_documents(doc: &Document) -> Vec<String> {
    let mut out = Vec::new();
    for step in doc
        .phases
        .iter()
        .flat_map(|p| &p.steps)
        .filter(|s| s.action == "ExecuteDocument")
    {
        if let Some(path) = step
            .inputs
            .as_ref()
            .and_then(|i| i.get("document"))
            .and_then(|d| d.scalar())
            .filter(|p| !p.contains("{{"))
        {
            let full = doc.path.parent().unwrap_or(Path::new(".")).join(path);
            let digest = std::fs::read(&full)
                .map(|d| hex::encode(Sha256::digest(&d)))
                .unwrap_or_else(|_| "missing".into());
            out.push(format!("{path}:{digest}"));
        }
    }
    out
}

pub fn bake(
    store: &Store,
    recipe: &Recipe,
    opts: &BakeOptions,
    observer: &mut dyn BakeObserver,
) -> Result<BakeReport, BakeError> {
    let started = Instant::now();
    let _lock = store.lock()?;
    recover(store, observer);
    let documents: Vec<Document> = recipe
        .components
        .iter()
        .map(|c| kiln_toe::load(&c.path))
        .collect::<Result<_, _>>()?;
    let parent_ref = ParentRef::parse(&recipe.parent)
        .map_err(|why| ParentError::Build {
            parent: recipe.parent.clone(),
            why,
        })?
        .relative_to(recipe.path.parent().unwrap_or(Path::new(".")));
    let registry = kiln_registry::Options {
        tls_verify: recipe.parent_tls_verify,
        ..Default::default()
    };
    let parent = parent::resolve(store, &parent_ref, &recipe.parent, &registry, &mut |m| {
        observer.event(m)
    })?;
    let parent_manifest = store.manifest(&parent)?;
    let parent_config = store.config(&parent_manifest)?;

    let mut key = hash(&serde_json::json!({ "parent": parent.digest() }));
    let mut keys = Vec::new();
    for (doc, component) in documents.iter().zip(&recipe.components) {
        key = component_key(&key, doc, &component.parameters, recipe);
        keys.push(key.clone());
    }
    let mut recipe_key = serde_json::json!({
        "components": key,
        "recipe": [&recipe.name, recipe.version.to_string(), &recipe.entrypoint, &recipe.cmd, &recipe.env, &recipe.user, recipe.port, &recipe.working_directory],
        "tests": recipe.tests.enabled,
        "source_commit": opts.source_commit,
        "source_labels": opts.source_labels,
    });
    // Only when said, so that the keys of recipes without it stay as
    // they were.
    if let (Some(boot), Some(map)) = (recipe.boot, recipe_key.as_object_mut()) {
        map.insert("boot".into(), boot.into());
    }
    let recipe_key = hash(&recipe_key);
    if let Some(image) = store.images()?.into_iter().rev().find(|i| {
        i.name == recipe.name
            && i.version == recipe.version
            && i.status == Status::Available
            && i.annotation(ANNOTATION_RECIPE_KEY) == Some(&recipe_key)
    }) {
        observer.event(&format!(
            "unchanged: {} is already baked from these inputs",
            image.reference()
        ));
        let components = recipe
            .components
            .iter()
            .map(|c| ComponentReport {
                path: c.path.clone(),
                cached: true,
                layer: String::new(),
                size: 0,
                seconds: 0.0,
                log: None,
            })
            .collect();
        let tests = match image.annotation(ANNOTATION_TESTS) {
            Some("disabled") => TestReport::Disabled,
            Some("none") => TestReport::None,
            _ => TestReport::Passed {
                log: image
                    .annotation(ANNOTATION_TEST_LOG)
                    .unwrap_or_default()
                    .to_string(),
            },
        };
        return Ok(BakeReport {
            image: image.reference(),
            digest: image.digest(),
            status: image.status,
            unchanged: true,
            components,
            tests,
            seconds: started.elapsed().as_secs_f64(),
        });
    }

    let mut lowers = import::unpack_layers(store, &parent_manifest)?;
    let mut layers: Vec<Descriptor> = parent_manifest.layers().clone();
    let mut diff_ids: Vec<String> = parent_config.rootfs().diff_ids().clone();
    let mut history = parent_config.history().clone().unwrap_or_default();
    // One history entry per layer, so that each layer shows where it came from.
    while history
        .iter()
        .filter(|h| h.empty_layer() != Some(true))
        .count()
        < layers.len()
    {
        let entry = HistoryBuilder::default()
            .created_by(format!("parent {}", recipe.parent))
            .build()
            .map_err(|e| setup(&recipe.name, "history", e))?;
        history.push(entry);
    }
    let mut reports = Vec::new();
    for ((doc, component), key) in documents.iter().zip(&recipe.components).zip(&keys) {
        let shown = component.path.display().to_string();
        let t = Instant::now();
        let cached = store.cached_layer(key);
        let (layer, log) = match cached {
            Some(layer) => {
                observer.event(&format!(
                    "{shown}: from cache (layer {})",
                    short(&layer.digest)
                ));
                (layer, None)
            }
            None => {
                observer.event(&format!("{shown}: running build and validate"));
                let (layer, log) =
                    run_component(store, recipe, opts, doc, component, &lowers, observer)?;
                store.put_cached_layer(key, &layer)?;
                (layer, Some(log))
            }
        };
        let dir = import::unpack_layer(store, &layer.digest, &layer.diff_id)?;
        lowers.push(dir);
        layers.push(Descriptor::new(
            MediaType::from(layer.media_type.as_str()),
            layer.size,
            kiln_image::store::parse_digest(&layer.digest)?,
        ));
        diff_ids.push(layer.diff_id.clone());
        history.push(
            HistoryBuilder::default()
                .created(jiff::Timestamp::now().to_string())
                .created_by(format!("kiln component {}", file_name(&component.path)))
                .build()
                .map_err(|e| setup(&shown, "history", e))?,
        );
        reports.push(ComponentReport {
            path: component.path.clone(),
            cached: log.is_none(),
            layer: layer.digest.clone(),
            size: layer.size,
            seconds: t.elapsed().as_secs_f64(),
            log,
        });
    }

    let build = store.next_build(&recipe.name, recipe.version)?;
    let reference = format!("{}/{}/{}", recipe.name, recipe.version, build);
    let config = image_config(
        recipe,
        &parent,
        &parent_config,
        &documents,
        diff_ids,
        history,
        &reference,
        opts,
    )?;
    let manifest = import::write_manifest(store, &config, layers)?;

    let tests = test_gate(store, recipe, opts, &documents, &lowers, &config, observer)?;
    let status = if matches!(tests, TestReport::Failed { .. }) {
        Status::Failed
    } else {
        Status::Available
    };
    let mut annotations = HashMap::from([
        (ANNOTATION_RECIPE_KEY.to_string(), recipe_key),
        (
            import::ANNOTATION_SOURCE.to_string(),
            format!("recipe:{}", recipe.path.display()),
        ),
        (
            ANNOTATION_TESTS.to_string(),
            match &tests {
                TestReport::Disabled => "disabled",
                TestReport::None => "none",
                TestReport::Passed { .. } => "passed",
                TestReport::Failed { .. } => "failed",
            }
            .to_string(),
        ),
    ]);
    if let TestReport::Passed { log } | TestReport::Failed { log, .. } = &tests {
        let data = std::fs::read(log).unwrap_or_default();
        let blob = store.put_blob(MediaType::Other("text/plain".into()), &data)?;
        annotations.insert(ANNOTATION_TEST_LOG.to_string(), blob.digest().to_string());
    }
    let image = store.add_image(
        manifest,
        &recipe.name,
        recipe.version,
        build,
        status,
        annotations,
    )?;
    observer.event(&format!(
        "{} {} ({})",
        image.reference(),
        image.status,
        short(&image.digest())
    ));
    Ok(BakeReport {
        image: image.reference(),
        digest: image.digest(),
        status,
        unchanged: false,
        components: reports,
        tests,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// Unmounts what a killed bake left mounted and clears its temporary files.
fn recover(store: &Store, observer: &mut dyn BakeObserver) {
    let tmp = store.dir().join("tmp");
    for m in kiln_sandbox::mounts::unmount_below(&tmp) {
        observer.event(&format!(
            "unmounted {} left by an interrupted bake",
            m.display()
        ));
    }
    if let Err(e) = store.clean_temp() {
        observer.event(&format!("could not clean the store's temporary files: {e}"));
    }
}

/// Runs one component's build and validate phases; its changes become a
/// layer in the store.
fn run_component(
    store: &Store,
    recipe: &Recipe,
    opts: &BakeOptions,
    doc: &Document,
    component: &crate::recipe::Component,
    lowers: &[PathBuf],
    observer: &mut dyn BakeObserver,
) -> Result<(CachedLayer, String), BakeError> {
    let shown = component.path.display().to_string();
    let mut overlay = Overlay::mount(store, lowers, "bake")?;
    let inst = instance(&overlay.merged(), recipe, opts)?;
    let execution = kiln_toe::run(
        std::slice::from_ref(doc),
        &inst,
        &run_options(opts, &component.parameters, &["build", "validate"], None),
        observer,
    )
    .map_err(|e| setup(&shown, "run", e))?;
    drop(inst);
    if let Some((_, phase, step)) = execution.failed_step() {
        let kept = if opts.keep_on_failure {
            let mount = overlay.mount.take();
            let kept_dir = store
                .dir()
                .join("kept")
                .join(overlay.dir.file_name().unwrap_or_default());
            if let Some(m) = mount {
                // Moving the directory keeps the mount; it leaves the
                // temporary area, so the next bake does not clean it up.
                std::mem::forget(m);
            }
            let moved = std::fs::create_dir_all(store.dir().join("kept"))
                .and_then(|()| std::fs::rename(&overlay.dir, &kept_dir));
            // The error names where the root really is.
            let kept_root = match moved {
                Ok(()) => kept_dir,
                Err(e) => {
                    tracing::warn!(
                        from = %overlay.dir.display(), to = %kept_dir.display(), error = %e,
                        "the failed bake's root stays in the temporary area, which the next bake empties"
                    );
                    overlay.dir.clone()
                }
            };
            overlay.dir = PathBuf::from("/nonexistent-kiln-kept");
            Some(kept_root.join("merged").display().to_string())
        } else {
            None
        };
        return Err(BakeError::Component(Box::new(ComponentFailure {
            component: shown,
            phase: phase.name.clone(),
            step: step.name.clone(),
            message: step.failure_message.clone(),
            log: execution.log_url.clone(),
            kept,
        })));
    }
    if !execution.status.is_success() {
        return Err(setup(
            &shown,
            "run",
            format!("{} (log: {})", execution.failure_message, execution.log_url),
        ));
    }
    overlay.unmount()?;
    let (descriptor, info) = import::write_layer(store, &overlay.upper(), true)?;
    store.put_unpacked_layer(&overlay.upper(), &info.diff_id)?;
    let layer = CachedLayer {
        digest: descriptor.digest().to_string(),
        diff_id: info.diff_id,
        size: info.size,
        media_type: descriptor.media_type().to_string(),
    };
    Ok((layer, execution.log_url))
}

#[allow(clippy::too_many_arguments)]
fn image_config(
    recipe: &Recipe,
    parent: &ImageRecord,
    parent_config: &ImageConfiguration,
    documents: &[Document],
    diff_ids: Vec<String>,
    history: Vec<oci_spec::image::History>,
    reference: &str,
    opts: &BakeOptions,
) -> Result<ImageConfiguration, BakeError> {
    let base = parent_config.config().clone().unwrap_or_default();
    let mut labels = base.labels().clone().unwrap_or_default();
    labels.insert(LABEL_VERSION.into(), reference.into());
    let recipe_text = std::fs::read(&recipe.path).unwrap_or_default();
    labels.insert(
        LABEL_RECIPE.into(),
        format!("sha256:{}", hex::encode(Sha256::digest(&recipe_text))),
    );
    labels.insert(LABEL_PARENT.into(), recipe.parent.clone());
    labels.insert(LABEL_PARENT_DIGEST.into(), parent.digest());
    for (i, doc) in documents.iter().enumerate() {
        labels.insert(format!("dev.kiln.component.{i}.path"), file_name(&doc.path));
        labels.insert(
            format!("dev.kiln.component.{i}.digest"),
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(doc.source.as_bytes()))
            ),
        );
    }
    if let Some(commit) = &opts.source_commit {
        labels.insert(LABEL_SOURCE_COMMIT.into(), commit.clone());
    }
    for (k, v) in &opts.source_labels {
        labels.insert(format!("dev.kiln.source.{k}"), v.clone());
    }
    match recipe.boot {
        Some(true) => {
            labels.insert(LABEL_INIT.into(), "systemd".into());
        }
        Some(false) => {
            labels.remove(LABEL_INIT);
        }
        None => {}
    }
    let mut env = base.env().clone().unwrap_or_else(|| {
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()]
    });
    for (k, v) in &recipe.env {
        env.retain(|e| !e.starts_with(&format!("{k}=")));
        env.push(format!("{k}={v}"));
    }
    let mut builder = ConfigBuilder::default()
        .labels(labels)
        .env(env)
        .working_dir(recipe.working_directory.clone());
    let entrypoint = if recipe.entrypoint.is_empty() {
        base.entrypoint().clone()
    } else {
        Some(recipe.entrypoint.clone())
    };
    if let Some(e) = entrypoint {
        builder = builder.entrypoint(e);
    }
    let cmd = if recipe.cmd.is_empty() {
        base.cmd().clone()
    } else {
        Some(recipe.cmd.clone())
    };
    if let Some(c) = cmd {
        builder = builder.cmd(c);
    }
    let user = if recipe.user.is_empty() {
        base.user().clone()
    } else {
        Some(recipe.user.clone())
    };
    if let Some(u) = user {
        builder = builder.user(u);
    }
    let mut ports = base.exposed_ports().clone().unwrap_or_default();
    if let Some(p) = recipe.port {
        ports.push(format!("{p}/tcp"));
    }
    if !ports.is_empty() {
        builder = builder.exposed_ports(ports);
    }
    let config = builder
        .build()
        .map_err(|e| setup(&recipe.name, "config", e))?;
    let rootfs = oci_spec::image::RootFsBuilder::default()
        .typ("layers")
        .diff_ids(diff_ids)
        .build()
        .map_err(|e| setup(&recipe.name, "config", e))?;
    oci_spec::image::ImageConfigurationBuilder::default()
        .architecture(parent_config.architecture().clone())
        .os(parent_config.os().clone())
        .created(jiff::Timestamp::now().to_string())
        .author("kiln")
        .config(config)
        .rootfs(rootfs)
        .history(history)
        .build()
        .map_err(|e| setup(&recipe.name, "config", e))
}
