//! Machines: instances that boot the image's own systemd, golden images
//! exported as bootable disks, and groups of virtual machines. Every test
//! here starts from one Debian image with a kernel, systemd and a web
//! service as a systemd unit (see `fixture`), built once per target
//! directory.

mod boot;
#[path = "../common/mod.rs"]
mod common;
mod disk;
mod fixture;
mod vm;

/// The fixture itself: the base machine bakes, and a web version bakes on
/// it with the service installed and enabled.
#[test]
fn the_base_machine_and_a_web_version_bake() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    fixture::bake_web(dir.path(), &state, "1.0.0", "v1", "");
    let info = common::ok(common::kiln(&state, &["images", "inspect", "web/1.0.0"]));
    assert!(info.contains("web"), "{info}");
}
