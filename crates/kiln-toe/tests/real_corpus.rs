//! Real AWSTOE component documents written by other people, read in place
//! from the shared corpus (`../shared/corpus/components` next to the
//! workspace, or `$KILN_CORPUS/components`). They are never copied into the
//! project. Every one of them is in use on AWS, so every one must validate.

use std::path::PathBuf;

#[path = "common/corpus_dir.rs"]
mod corpus_dir;
use corpus_dir::corpus;

/// Documents of the corpus that AWS refuses too: file name, what kiln's
/// error says, and why AWS refuses it. Each must be refused, with that error.
const AWS_REFUSES: &[(&str, &str, &str)] = &[(
    "linux-awscli-v2-hardening-pipeline.yaml",
    "ExecuteBash needs inputs",
    "the file ends after `inputs:` at its source commit, so its last \
     ExecuteBash step has no commands, which AWSTOE requires",
)];

#[test]
fn every_real_component_validates() {
    let dir = corpus("components").join("components");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no documents in {}", dir.display());
    let mut refused = Vec::new();
    let mut warned = 0;
    let mut expected = 0;
    for path in &files {
        match kiln_toe::load(path) {
            Ok(doc) => {
                if !doc.warnings.is_empty() {
                    warned += 1;
                    for w in &doc.warnings {
                        println!("warning: {w}");
                    }
                }
            }
            Err(d) => {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                match AWS_REFUSES.iter().find(|(f, _, _)| *f == name) {
                    Some((_, error, why)) if d.to_string().contains(error) => {
                        println!("refused as AWS refuses it: {name}: {why}\n  {d}");
                        expected += 1;
                    }
                    _ => refused.push(d.to_string()),
                }
            }
        }
    }
    println!(
        "components: validated {} of {}, {warned} with warnings, refused: {} ({expected} as AWS refuses them)",
        files.len() - refused.len() - expected,
        files.len(),
        refused.len() + expected
    );
    assert!(
        refused.is_empty(),
        "refused {} of {} that AWS accepts:\n{}",
        refused.len(),
        files.len(),
        refused.join("\n")
    );
    assert_eq!(
        expected,
        AWS_REFUSES.len(),
        "every document AWS refuses is refused"
    );
}
