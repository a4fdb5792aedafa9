//! Where the real-world corpus is: `$KILN_CORPUS`, else
//! `<workspace>/../shared/corpus`. Shared by the `real_corpus` suites of
//! kiln-toe, kiln-build and kiln-bake (included with `#[path]`).

use std::path::PathBuf;

/// The corpus folder holding `sub` (`components` or `buildspecs`). A
/// missing folder fails the test: a skipped corpus would look green.
pub fn corpus(sub: &str) -> PathBuf {
    let dir = match std::env::var_os("KILN_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
    };
    assert!(
        dir.join(sub).is_dir(),
        "the real-world corpus is missing: no folder {}/{sub} \
         (set KILN_CORPUS to the folder holding components/ and buildspecs/)",
        dir.display()
    );
    dir
}
