//! Instance metadata on a config drive: a small FAT disk labeled CIDATA
//! that the guest reads without any network service.
//!
//! Its tree follows the paths of the EC2 instance metadata service
//! (`latest/meta-data/instance-id`, `latest/meta-data/tags/instance/KEY`,
//! `latest/dynamic/instance-identity/document`), so a script written for
//! EC2 only swaps its URL prefix for the drive's mount point. The label
//! and the `meta-data`/`user-data` files at its root make it a NoCloud
//! source for images that run cloud-init. `kiln/metadata.json` holds all
//! of it verbatim, `kiln/environment` the template's env and secrets.
//!
//! The drive is made with mkfs.fat and filled with mtools: no mount, so
//! nothing needs root or a loop device.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::model::{Group, Template};

/// The drive's FAT label: cloud-init's NoCloud looks for it.
pub const LABEL: &str = "CIDATA";

/// Size of the drive in KiB: metadata is a few files of a few bytes.
const SIZE_KIB: u32 = 2048;

/// Files of the drive, by path inside it.
pub fn files(id: &str, group: &Group, template: &Template) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut put = |path: &str, text: String| {
        files.insert(path.to_string(), text.into_bytes());
    };
    put(
        "meta-data",
        format!("instance-id: {id}\nlocal-hostname: {id}\n"),
    );
    put("user-data", "#cloud-config\n".into());
    let md = "latest/meta-data";
    put(&format!("{md}/instance-id"), id.into());
    put(&format!("{md}/hostname"), id.into());
    put(&format!("{md}/local-hostname"), id.into());
    put(&format!("{md}/instance-type"), "kiln.vm".into());
    put(&format!("{md}/ami-id"), template.image_digest.clone());
    put(&format!("{md}/autoscaling/group-name"), group.name.clone());
    put(
        &format!("{md}/kiln/template"),
        format!("{}:{}", template.name, template.version),
    );
    for (key, value) in &template.tags {
        // EC2 leaves out of the metadata service the tag keys a path
        // cannot carry; FAT cannot name a file with these either. They
        // remain in kiln/metadata.json.
        if key.is_empty()
            || key == "."
            || key == ".."
            || key.contains(['/', '\\', ':', '*', '?', '"', '<', '>', '|'])
        {
            continue;
        }
        put(&format!("{md}/tags/instance/{key}"), value.clone());
    }
    let document = serde_json::json!({
        "instanceId": id,
        "imageId": template.image_digest,
        "instanceType": "kiln.vm",
        "region": "local",
        "architecture": "x86_64",
        "pendingTime": crate::model::now(),
    });
    put(
        "latest/dynamic/instance-identity/document",
        serde_json::to_string_pretty(&document).unwrap_or_default(),
    );
    let metadata = serde_json::json!({
        "instance-id": id, "group": group.name, "template": template.name,
        "template-version": template.version, "image": template.image,
        "image-digest": template.image_digest, "tags": template.tags,
        "port": group.spec.port,
    });
    put(
        "kiln/metadata.json",
        serde_json::to_string_pretty(&metadata).unwrap_or_default(),
    );
    let env: String = template
        .spec
        .env
        .iter()
        .chain(&template.spec.secrets)
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    put("kiln/environment", env);
    files
}

/// Writes the drive with `files` to `image` (created; its staging tree
/// next to it is removed again).
pub fn write_drive(image: &Path, files: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
    let staging = image.with_extension("tree");
    let _ = std::fs::remove_dir_all(&staging);
    let result = (|| {
        for (path, bytes) in files {
            let file = staging.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            std::fs::write(&file, bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        }
        let _ = std::fs::remove_file(image);
        run(Command::new("mkfs.fat")
            .args(["-C", "-n", LABEL])
            .arg(image)
            .arg(SIZE_KIB.to_string()))?;
        restrict(image)?;
        let mut copy = Command::new("mcopy");
        copy.args(["-s", "-Q", "-i"]).arg(image);
        for entry in std::fs::read_dir(&staging).map_err(|e| e.to_string())? {
            copy.arg(entry.map_err(|e| e.to_string())?.path());
        }
        copy.arg("::/");
        run(&mut copy)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// The drive carries the template's secrets: only root reads it.
fn restrict(image: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(image, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", image.display()))
}

fn run(command: &mut Command) -> Result<(), String> {
    // mtools refuses images whose geometry it finds odd unless told not
    // to check; the image is ours and mkfs.fat made it.
    command.env("MTOOLS_SKIP_CHECK", "1");
    let out = command
        .output()
        .map_err(|e| format!("{:?}: {e}", command.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} {}: {}",
            command.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GroupSpec, TemplateSpec};

    fn read(image: &Path, path: &str) -> String {
        let out = Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(image)
            .arg(format!("::/{path}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{path}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn the_config_drive_holds_the_metadata_at_the_paths_ec2_serves_it() {
        let template = Template {
            name: "web".into(),
            version: 3,
            image: "web/1.0.0/1".into(),
            image_digest: "sha256:abc".into(),
            spec: TemplateSpec {
                env: [("MODE".to_string(), "prod".to_string())].into(),
                ..TemplateSpec::default()
            },
            tags: [
                ("Team".to_string(), "blue".to_string()),
                ("Source/CommitId".to_string(), "1234".to_string()),
            ]
            .into(),
            created: String::new(),
        };
        let group = Group {
            name: "front".into(),
            template: "web".into(),
            version: 3,
            spec: GroupSpec::default(),
            created: String::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("meta.img");
        write_drive(&image, &files("i-0123", &group, &template)).unwrap();
        assert_eq!(read(&image, "latest/meta-data/instance-id"), "i-0123");
        assert_eq!(read(&image, "latest/meta-data/tags/instance/Team"), "blue");
        assert_eq!(read(&image, "latest/meta-data/kiln/template"), "web:3");
        assert_eq!(read(&image, "kiln/environment"), "MODE=prod\n");
        let all: serde_json::Value =
            serde_json::from_str(&read(&image, "kiln/metadata.json")).unwrap();
        assert_eq!(all["tags"]["Source/CommitId"], "1234");
        assert_eq!(all["group"], "front");
        assert!(read(&image, "meta-data").contains("instance-id: i-0123"));
        let label = Command::new("mlabel")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-s", "-i"])
            .arg(&image)
            .arg("::")
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&label.stdout).contains(LABEL),
            "{label:?}"
        );
        assert!(!dir.path().join("meta.tree").exists());
    }
}
