//! An image's lineage, as `kiln images inspect` and the API show it:
//! where it came from (commit, parents, components and their layers) and
//! what its tests said.

use kiln_bake::bake::{ANNOTATION_TESTS, LABEL_PARENT, LABEL_PARENT_DIGEST, LABEL_SOURCE_COMMIT};
use kiln_image::store::ANNOTATION_TEST_LOG;
use kiln_image::{ImageRecord, Store};

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Lineage {
    pub reference: String,
    pub digest: String,
    pub status: String,
    pub created: String,
    pub source_commit: Option<String>,
    pub parent: Option<String>,
    /// The parent chain, nearest first.
    pub parents: Vec<String>,
    pub components: Vec<ComponentInfo>,
    pub tests: String,
    pub test_log: Option<String>,
    pub layers: Vec<LayerInfo>,
    pub size: u64,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub exposed_ports: Vec<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ComponentInfo {
    pub path: String,
    pub digest: String,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LayerInfo {
    pub digest: String,
    pub size: u64,
    pub created_by: String,
}

pub fn lineage(store: &Store, image: &ImageRecord) -> Result<Lineage, kiln_image::StoreError> {
    let manifest = store.manifest(image)?;
    let config = store.config(&manifest)?;
    let c = config.config().clone().unwrap_or_default();
    let labels = c.labels().clone().unwrap_or_default();
    let all = store.images()?;
    let mut parents = Vec::new();
    let mut next = labels.get(LABEL_PARENT_DIGEST).cloned();
    while let Some(digest) = next.take() {
        let Some(parent) = all.iter().find(|i| i.digest() == digest) else {
            parents.push(format!("{digest} (no longer in the store)"));
            break;
        };
        parents.push(format!("{} ({})", parent.reference(), parent.digest()));
        if parents.len() > 64 {
            break;
        }
        let pm = store.manifest(parent)?;
        let pc = store.config(&pm)?;
        next = pc
            .config()
            .as_ref()
            .and_then(|c| c.labels().as_ref())
            .and_then(|l| l.get(LABEL_PARENT_DIGEST).cloned());
    }
    let mut components = Vec::new();
    for i in 0.. {
        let (Some(path), Some(digest)) = (
            labels.get(&format!("dev.kiln.component.{i}.path")),
            labels.get(&format!("dev.kiln.component.{i}.digest")),
        ) else {
            break;
        };
        components.push(ComponentInfo {
            path: path.clone(),
            digest: digest.clone(),
        });
    }
    let history: Vec<String> = config
        .history()
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|h| h.created_by().clone().unwrap_or_default())
        .collect();
    let layers: Vec<LayerInfo> = manifest
        .layers()
        .iter()
        .enumerate()
        .map(|(i, l)| LayerInfo {
            digest: l.digest().to_string(),
            size: l.size(),
            created_by: history.get(i).cloned().unwrap_or_default(),
        })
        .collect();
    Ok(Lineage {
        reference: image.reference(),
        digest: image.digest(),
        status: image.status.to_string(),
        created: image.created.clone(),
        source_commit: labels.get(LABEL_SOURCE_COMMIT).cloned(),
        parent: labels.get(LABEL_PARENT).cloned(),
        parents,
        components,
        tests: image
            .annotation(ANNOTATION_TESTS)
            .unwrap_or("none")
            .to_string(),
        test_log: image.annotation(ANNOTATION_TEST_LOG).map(str::to_string),
        size: layers.iter().map(|l| l.size).sum::<u64>() + manifest.config().size(),
        layers,
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().unwrap_or_default(),
        exposed_ports: c.exposed_ports().clone().unwrap_or_default(),
    })
}

/// An image's bytes: its layers and its config; 0 when its manifest is gone.
pub fn size(store: &Store, image: &ImageRecord) -> u64 {
    store
        .manifest(image)
        .map(|m| m.layers().iter().map(|l| l.size()).sum::<u64>() + m.config().size())
        .unwrap_or(0)
}

/// One image version as listings show it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ImageSummary {
    /// `name/x.y.z/build`.
    pub reference: String,
    pub name: String,
    pub version: String,
    pub build: u32,
    /// `available`, or `failed` (its tests failed: never deployed).
    pub status: String,
    pub digest: String,
    /// Bytes of its layers and config.
    pub size: u64,
    pub created: String,
    /// What its tests said: passed, failed, none.
    pub tests: String,
    /// Groups that run it or are rolling to it.
    pub groups: Vec<String>,
}

/// `image` as listings show it, with the groups that run it.
pub fn summary(store: &Store, image: &ImageRecord, groups: Vec<String>) -> ImageSummary {
    ImageSummary {
        reference: image.reference(),
        name: image.name.clone(),
        version: image.version.to_string(),
        build: image.build,
        status: image.status.to_string(),
        digest: image.digest(),
        size: size(store, image),
        created: image.created.clone(),
        tests: image
            .annotation(ANNOTATION_TESTS)
            .unwrap_or("none")
            .to_string(),
        groups,
    }
}
