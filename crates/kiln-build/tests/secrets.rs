//! kiln's secrets store and `env.secrets-manager`: values sealed at rest,
//! given to the build, and masked wherever the build's output goes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use kiln_build::secrets::{SecretError, Secrets};
use kiln_build::{BuildOptions, NoObserver, buildspec};

const VALUE: &str = "s3cr3t-Hunter2-value";

#[test]
fn secrets_are_sealed_at_rest_listed_by_name_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Secrets::new(dir.path());
    assert_eq!(store.get("prod/db").unwrap(), None);
    store.put("prod/db", VALUE).unwrap();
    store.put("ci/token", "other").unwrap();
    assert_eq!(store.get("prod/db").unwrap().as_deref(), Some(VALUE));
    assert_eq!(store.list().unwrap(), ["ci/token", "prod/db"]);
    let key = dir.path().join("secrets.key");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // No file of the store holds the value.
    for entry in fs::read_dir(dir.path().join("secrets")).unwrap() {
        let bytes = fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()));
    }
    // A file moved to another name does not open: the name is sealed in.
    let a = dir.path().join("secrets").join(hex::encode("prod/db"));
    let b = dir.path().join("secrets").join(hex::encode("ci/token"));
    fs::copy(&a, &b).unwrap();
    assert!(matches!(
        store.get("ci/token"),
        Err(SecretError::Corrupt { .. })
    ));
    assert!(store.remove("prod/db").unwrap());
    assert!(!store.remove("prod/db").unwrap());
    assert_eq!(store.list().unwrap(), ["ci/token"]);
    // A key others can read is refused.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = store.put("x", "y").unwrap_err().to_string();
    assert!(err.contains("secrets.key") && err.contains("0600"), "{err}");
    assert!(matches!(
        store.put("no spaces", "y"),
        Err(SecretError::BadName { .. })
    ));
}

#[test]
fn a_build_gets_its_secrets_and_its_log_exports_and_output_mask_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    kiln_sandbox::busybox::assemble(&root).unwrap();
    let source = dir.path().join("source");
    fs::create_dir_all(&source).unwrap();
    let store = Arc::new(Secrets::new(&dir.path().join("state")));
    store.put("prod/db", VALUE).unwrap();
    store
        .put(
            "prod/json",
            r#"{"user":"app","password":"pw-Json-Secret-9"}"#,
        )
        .unwrap();
    let mut opts =
        BuildOptions::new(root, source, dir.path().join("ws"), dir.path().join("out")).unwrap();
    let log = dir.path().join("build.log");
    opts.log_path = Some(log.clone());
    let lookup = store.clone();
    opts.secrets = Some(Arc::new(move |id: &str| {
        lookup.get(id).map_err(|e| e.to_string())
    }));
    let yaml = r#"version: 0.2
env:
  secrets-manager:
    DB: prod/db
    PW: prod/json:password
    USER_NAME: prod/json:user
  exported-variables: [DB, USER_NAME]
phases:
  build:
    commands:
      - echo "db=$DB pw=$PW user=$USER_NAME"
      - test "$DB" = s3cr3t-Hunter2-value
      - test "$PW" = pw-Json-Secret-9
      - echo "<testsuite><testcase name=\"login\"><failure message=\"bad password $PW\"/></testcase></testsuite>" > report.xml
reports:
  unit:
    files: [report.xml]
"#;
    let spec = buildspec::parse(yaml, Path::new("buildspec.yml")).unwrap();
    let mut lines = Vec::new();
    struct Collect<'a>(&'a mut Vec<String>);
    impl kiln_build::BuildObserver for Collect<'_> {
        fn output(&mut self, line: &str) {
            self.0.push(line.to_string());
        }
    }
    let report = kiln_build::run(&spec, &opts, &mut Collect(&mut lines)).unwrap();
    assert!(report.succeeded, "{}", fs::read_to_string(&log).unwrap());
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("db=*** pw=*** user=***"), "{text}");
    assert!(
        !text.contains("s3cr3t") && !text.contains("pw-Json"),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l == "db=*** pw=*** user=***"),
        "{lines:?}"
    );
    assert_eq!(
        report.exported,
        [
            ("DB".to_string(), "***".to_string()),
            ("USER_NAME".to_string(), "***".to_string())
        ]
    );
    assert_eq!(
        report.reports[0].failed_tests[0].message,
        "bad password ***"
    );
    let shown = serde_json::to_string(&report).unwrap();
    assert!(!shown.contains("s3cr3t"), "{shown}");

    // A secret that is not there fails the build before it starts, naming
    // the variable and the secret.
    let spec = buildspec::parse(
        "version: 0.2\nenv:\n  secrets-manager:\n    K: prod/missing\nphases:\n  build:\n    commands: [touch ran]\n",
        Path::new("buildspec.yml"),
    )
    .unwrap();
    opts.workspace = dir.path().join("ws2");
    let err = kiln_build::run(&spec, &opts, &mut NoObserver)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("env.secrets-manager.K")
            && err.contains("\"prod/missing\"")
            && err.contains("kiln secrets put"),
        "{err}"
    );
    assert!(!dir.path().join("ws2/src/ran").exists());

    // A store whose key others can read fails the build saying so.
    let key = dir.path().join("state/secrets.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let spec = buildspec::parse(yaml, Path::new("buildspec.yml")).unwrap();
    opts.workspace = dir.path().join("ws3");
    let err = kiln_build::run(&spec, &opts, &mut NoObserver)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("env.secrets-manager.DB") && err.contains("0600"),
        "{err}"
    );
}
