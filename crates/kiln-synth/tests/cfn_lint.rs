//! Every synthesized template passes cfn-lint (PyPI, pinned in
//! scripts/deps.sh) with no error and no warning.

use std::path::Path;
use std::process::Command;

const FIXTURES: &[&str] = &["demo", "full"];

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .join("kiln.yaml")
}

fn lint(fixture: &str, file: &Path) {
    let config = kiln_pipeline::config::load(file).unwrap_or_else(|d| panic!("{d}"));
    let out = tempfile::tempdir().unwrap();
    kiln_synth::synth(&config, file)
        .unwrap()
        .write(out.path())
        .unwrap();
    let mut templates: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    templates.sort();
    assert!(templates.len() >= 2, "{fixture}: {templates:?}");
    let run = Command::new("cfn-lint")
        .args(&templates)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cfn-lint cannot run ({e}); install it with scripts/deps.sh (pip install cfn-lint)"
            )
        });
    assert!(
        run.status.success(),
        "{fixture}: cfn-lint found problems:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn every_fixtures_templates_pass_cfn_lint() {
    for f in FIXTURES {
        lint(f, &fixture(f));
    }
}

/// The seed's Windows IIS golden image as a kiln repository.
#[test]
fn the_windows_iis_example_passes_cfn_lint() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/windows-iis/kiln.yaml");
    lint("windows-iis", &file);
}

/// The README's example, with the demo's buildspec and component beside it.
#[test]
fn the_readme_example_passes_cfn_lint() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let marker = "<!-- kiln synth aws example -->\n```yaml\n";
    let start = readme.find(marker).expect("the README has the example") + marker.len();
    let example = &readme[start..start + readme[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let demo = fixture("demo");
    let demo = demo.parent().unwrap();
    for name in ["buildspec.yml", "components/app.yaml"] {
        let to = dir.path().join(name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(demo.join(name), to).unwrap();
    }
    let file = dir.path().join("kiln.yaml");
    std::fs::write(&file, example).unwrap();
    lint("README", &file);
}
