//! Recipes: `kiln bake RECIPE.yaml` and the `image:` section of kiln.yaml
//! share these fields, in kiln's own snake_case.
//!
//! ```yaml
//! name: web
//! version: 1.0.0
//! parent: debian:bookworm        # busybox, oci:DIR[:TAG], oci-archive:PATH[:TAG],
//!                                # docker-archive:PATH, rootfs:PATH.tar, kiln:NAME/VERSION,
//!                                # docker://HOST/REPO:TAG or docker://HOST/REPO@sha256:...
//! parent_tls_verify: true        # false: a docker:// parent's registry is reached
//!                                # without checking its certificate (or over HTTP)
//! components:
//!   - path: components/app.yaml
//!     parameters: { Port: "8080" }
//! working_directory: /opt/app    # where components run; the image's working dir
//! entrypoint: ["/opt/app/server"]
//! cmd: ["--port", "8080"]
//! env: { MODE: production }
//! user: root
//! port: 8080
//! shell: bash                    # or sh: run ExecuteBash with /bin/sh
//! tests: { enabled: true, timeout: 10m }
//! init: systemd                  # boot mode: the test gate (and, by the image's
//!                                # dev.kiln.init label, instances) run the image's
//!                                # own init as pid 1; `boot: true` says the same,
//!                                # `init: entrypoint` turns an inherited one off
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_doc::diag::{Collector, Diagnostics};
use kiln_doc::yaml::{self, Node, Pos};

#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// The file the recipe came from; component paths are relative to it.
    pub path: PathBuf,
    pub name: String,
    pub version: kiln_image::Version,
    pub description: String,
    pub parent: String,
    /// For a `docker://` parent: verify the registry's TLS certificate.
    pub parent_tls_verify: bool,
    pub components: Vec<Component>,
    pub working_directory: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub user: String,
    pub port: Option<u16>,
    pub allow_sh: bool,
    pub tests: Tests,
    /// Boot mode: `Some(true)` for `init: systemd` (or `boot: true`),
    /// `Some(false)` for `init: entrypoint`; `None` keeps the parent's.
    pub boot: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    pub path: PathBuf,
    pub parameters: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tests {
    pub enabled: bool,
    pub timeout: Duration,
}

const FIELDS: &[&str] = &[
    "name",
    "version",
    "description",
    "parent",
    "parent_tls_verify",
    "components",
    "working_directory",
    "entrypoint",
    "cmd",
    "env",
    "user",
    "port",
    "shell",
    "tests",
    "init",
    "boot",
];

/// Reads a recipe file.
pub fn load(path: &Path) -> Result<Recipe, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut c = Collector::new(path);
        c.push(Pos::default(), "", format!("cannot read the recipe: {e}"));
        Diagnostics(c.errors)
    })?;
    let mut c = Collector::new(path);
    let root = yaml::parse(&text).map_err(|e| {
        c.push(e.pos, "", format!("invalid YAML: {}", e.message));
        Diagnostics(c.errors.clone())
    })?;
    let recipe = from_node(&root, path, "", None, true, &mut c);
    match recipe {
        Some(r) if c.errors.is_empty() => Ok(r),
        _ => Err(Diagnostics(c.errors)),
    }
}

/// Reads a recipe from a node: a recipe file's root, or kiln.yaml's
/// `image:` section (with `prefix` "image" for messages), where the name
/// may be left out for `default_name`. With `check_files`, each component
/// document must exist beside `path`.
pub fn from_node(
    node: &Node,
    path: &Path,
    prefix: &str,
    default_name: Option<&str>,
    check_files: bool,
    c: &mut Collector,
) -> Option<Recipe> {
    let field = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        }
    };
    let Some(entries) = node.as_map() else {
        c.push(
            node.pos,
            prefix,
            format!("a recipe is a map, found a {}", node.kind()),
        );
        return None;
    };
    for (key, _) in entries {
        let k = key.scalar().unwrap_or_default();
        if !FIELDS.contains(&k) {
            c.push(
                key.pos,
                field(k),
                format!("unknown field (expected one of: {})", FIELDS.join(", ")),
            );
        }
    }
    let text = |name: &str, required: bool, c: &mut Collector| -> Option<(String, Pos)> {
        match node.get(name) {
            Some(v) => match v.scalar() {
                Some(s) => Some((s.to_string(), v.pos)),
                None => {
                    c.push(
                        v.pos,
                        field(name),
                        format!("expected a string, found a {}", v.kind()),
                    );
                    None
                }
            },
            None if required => {
                c.push(node.pos, field(name), "required field is missing");
                None
            }
            None => None,
        }
    };
    let name = text("name", default_name.is_none(), c)
        .map(|(s, pos)| {
            if !kiln_toe::vars::is_name(&s) {
                c.push(
                    pos,
                    field("name"),
                    format!("{s:?} is not a valid image name (letters, digits, - and _)"),
                );
            }
            s
        })
        .or(default_name.map(str::to_string));
    let version =
        text("version", false, c).and_then(|(s, pos)| match s.parse::<kiln_image::Version>() {
            Ok(v) => Some(v),
            Err(e) => {
                c.push(pos, field("version"), e.to_string());
                None
            }
        });
    let description = text("description", false, c)
        .map(|t| t.0)
        .unwrap_or_default();
    let parent = text("parent", true, c).map(|(p, pos)| {
        if let Err(e) = crate::parent::ParentRef::parse(&p) {
            c.push(pos, field("parent"), e);
        }
        p
    });
    let parent_tls_verify = match node.get("parent_tls_verify") {
        None => true,
        Some(v) => v.as_bool().unwrap_or_else(|| {
            c.push(v.pos, field("parent_tls_verify"), "expected true or false");
            true
        }),
    };
    let working_directory = text("working_directory", false, c)
        .map(|t| t.0)
        .unwrap_or_else(|| "/".into());
    if !working_directory.starts_with('/') {
        c.push(
            node.get("working_directory").map_or(node.pos, |n| n.pos),
            field("working_directory"),
            "must be an absolute path",
        );
    }
    let user = text("user", false, c).map(|t| t.0).unwrap_or_default();
    let allow_sh = match text("shell", false, c) {
        None => false,
        Some((s, _)) if s == "bash" => false,
        Some((s, _)) if s == "sh" => true,
        Some((s, pos)) => {
            c.push(pos, field("shell"), format!("{s:?}: expected bash or sh"));
            false
        }
    };
    let list = |name: &str, c: &mut Collector| -> Vec<String> {
        match node.get(name) {
            None => Vec::new(),
            Some(v) => match v.as_seq() {
                Some(items) if items.iter().all(|i| i.scalar().is_some()) => items
                    .iter()
                    .filter_map(|i| i.scalar().map(str::to_string))
                    .collect(),
                _ => {
                    c.push(v.pos, field(name), "expected a list of strings");
                    Vec::new()
                }
            },
        }
    };
    let entrypoint = list("entrypoint", c);
    let cmd = list("cmd", c);
    let env = string_map(node.get("env"), &field("env"), c);
    let port = node.get("port").and_then(|p| match p.as_i64() {
        Some(n) if (1..=65535).contains(&n) => Some(n as u16),
        _ => {
            c.push(
                p.pos,
                field("port"),
                "expected a port number from 1 to 65535",
            );
            None
        }
    });
    let tests = tests(node.get("tests"), &field("tests"), c);
    let boot = init_mode(node, &field, c);
    let base = path.parent().unwrap_or(Path::new("."));
    let components = components(
        node.get("components"),
        &field("components"),
        base,
        check_files,
        c,
    );
    Some(Recipe {
        path: path.to_path_buf(),
        name: name?,
        version: version.unwrap_or(kiln_image::Version {
            major: 1,
            minor: 0,
            patch: 0,
        }),
        description,
        parent: parent?,
        parent_tls_verify,
        components,
        working_directory,
        entrypoint,
        cmd,
        env,
        user,
        port,
        allow_sh,
        tests,
        boot,
    })
}

/// `init: systemd | entrypoint` or `boot: true | false`, not both.
fn init_mode(node: &Node, field: &dyn Fn(&str) -> String, c: &mut Collector) -> Option<bool> {
    let init = node.get("init").and_then(|v| match v.scalar() {
        Some("systemd") => Some(true),
        Some("entrypoint") => Some(false),
        other => {
            c.push(
                v.pos,
                field("init"),
                format!(
                    "{:?}: expected systemd (boot the image's own init) or entrypoint",
                    other.unwrap_or_default()
                ),
            );
            None
        }
    });
    let boot = node.get("boot").and_then(|v| match v.as_bool() {
        Some(b) => Some(b),
        None => {
            c.push(v.pos, field("boot"), "expected true or false");
            None
        }
    });
    match (init, boot, node.get("boot")) {
        (Some(i), Some(b), Some(v)) if i != b => {
            c.push(
                v.pos,
                field("boot"),
                "contradicts init: say one of init and boot",
            );
            None
        }
        _ => init.or(boot),
    }
}

fn string_map(node: Option<&Node>, field: &str, c: &mut Collector) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(node) = node else { return out };
    let Some(entries) = node.as_map() else {
        c.push(
            node.pos,
            field,
            format!("expected a map of strings, found a {}", node.kind()),
        );
        return out;
    };
    for (k, v) in entries {
        match (k.scalar(), v.scalar()) {
            (Some(k), Some(v)) => {
                out.insert(k.to_string(), v.to_string());
            }
            _ => c.push(
                v.pos,
                format!("{field}.{}", k.scalar().unwrap_or_default()),
                "expected a string value",
            ),
        }
    }
    out
}

fn tests(node: Option<&Node>, field: &str, c: &mut Collector) -> Tests {
    let mut tests = Tests {
        enabled: true,
        timeout: Duration::from_secs(600),
    };
    let Some(node) = node else { return tests };
    if node.as_map().is_none() {
        c.push(node.pos, field, "expected a map with enabled and timeout");
        return tests;
    }
    for (k, v) in node.as_map().unwrap_or_default() {
        match k.scalar() {
            Some("enabled") => match v.as_bool() {
                Some(b) => tests.enabled = b,
                None => c.push(v.pos, format!("{field}.enabled"), "expected true or false"),
            },
            Some("timeout") => match v.scalar().map(parse_test_timeout) {
                Some(Ok(d)) => tests.timeout = d,
                Some(Err(e)) => c.push(v.pos, format!("{field}.timeout"), e),
                None => c.push(
                    v.pos,
                    format!("{field}.timeout"),
                    "expected a duration such as 90s, 10m or 1h",
                ),
            },
            other => c.push(
                k.pos,
                format!("{field}.{}", other.unwrap_or_default()),
                "unknown field (expected enabled, timeout)",
            ),
        }
    }
    tests
}

/// Image Builder's longest test timeout, 1440 minutes.
pub const MAX_TEST_TIMEOUT: Duration = Duration::from_secs(1440 * 60);

/// `tests.timeout`: kiln.yaml's duration grammar, more than zero and at
/// most [`MAX_TEST_TIMEOUT`].
pub fn parse_test_timeout(text: &str) -> Result<Duration, String> {
    match kiln_doc::duration::parse_within(text, MAX_TEST_TIMEOUT) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

fn components(
    node: Option<&Node>,
    field: &str,
    base: &Path,
    check_files: bool,
    c: &mut Collector,
) -> Vec<Component> {
    let Some(node) = node else { return Vec::new() };
    let Some(items) = node.as_seq() else {
        c.push(
            node.pos,
            field,
            format!("expected a list of components, found a {}", node.kind()),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let here = format!("{field}[{i}]");
        if item.as_map().is_none() {
            c.push(item.pos, &here, "expected a map with path and parameters");
            continue;
        }
        for (k, _) in item.as_map().unwrap_or_default() {
            if !matches!(k.scalar(), Some("path" | "parameters")) {
                c.push(
                    k.pos,
                    format!("{here}.{}", k.scalar().unwrap_or_default()),
                    "unknown field (expected path, parameters)",
                );
            }
        }
        let Some(path) = item.get("path").and_then(Node::scalar) else {
            c.push(
                item.pos,
                format!("{here}.path"),
                "required field is missing",
            );
            continue;
        };
        let full = base.join(path);
        if check_files && !full.is_file() {
            c.push(
                item.get("path").map_or(item.pos, |n| n.pos),
                format!("{here}.path"),
                format!("{} does not exist", full.display()),
            );
        }
        let parameters = string_map(item.get("parameters"), &format!("{here}.parameters"), c);
        out.push(Component {
            path: full,
            parameters,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_timeouts_take_the_kiln_yaml_grammar() {
        assert_eq!(parse_test_timeout("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_test_timeout("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_test_timeout("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_test_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_test_timeout("1440m"), Ok(MAX_TEST_TIMEOUT));
        assert!(parse_test_timeout("10x").is_err());
        assert!(parse_test_timeout("m").is_err());
        assert!(parse_test_timeout("0s").is_err());
    }

    #[test]
    fn init_systemd_and_boot_true_say_the_same_and_mistakes_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.yaml"), "x").unwrap();
        let path = dir.path().join("r.yaml");
        let head = "name: web\nversion: 1.2.3\nparent: busybox\ncomponents:\n  - path: c.yaml\n";
        for (extra, boot) in [
            ("init: systemd\n", Some(true)),
            ("boot: true\n", Some(true)),
            ("init: entrypoint\n", Some(false)),
            ("", None),
        ] {
            std::fs::write(&path, format!("{head}{extra}")).unwrap();
            assert_eq!(load(&path).unwrap().boot, boot, "{extra}");
        }
        std::fs::write(&path, format!("{head}init: upstart\n")).unwrap();
        let errors = load(&path).unwrap_err().to_string();
        assert!(errors.contains("r.yaml:6:7: init:"), "{errors}");
        assert!(errors.contains("expected systemd"), "{errors}");
        std::fs::write(&path, format!("{head}init: systemd\nboot: false\n")).unwrap();
        let errors = load(&path).unwrap_err().to_string();
        assert!(
            errors.contains("r.yaml:7:7: boot: contradicts init"),
            "{errors}"
        );
    }

    #[test]
    fn an_absurd_test_timeout_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.yaml"), "x").unwrap();
        let path = dir.path().join("r.yaml");
        for (absurd, why) in [
            ("18446744073709551615", "longer than the 24h allowed"),
            ("5124095576030431h", "longer than the 24h allowed"),
            ("1441m", "longer than the 24h allowed"),
        ] {
            let text = format!(
                "name: web\nversion: 1.2.3\nparent: busybox\ncomponents:\n  - path: c.yaml\ntests:\n  timeout: {absurd}\n"
            );
            std::fs::write(&path, text).unwrap();
            let errors = load(&path).unwrap_err().to_string();
            assert!(errors.contains("r.yaml:7:12: tests.timeout:"), "{errors}");
            assert!(errors.contains(why), "{errors}");
        }
    }

    #[test]
    fn recipes_report_fields_with_positions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.yaml"), "x").unwrap();
        let path = dir.path().join("r.yaml");
        std::fs::write(&path, "name: web\nversion: 1.2\nparent: busybox\ncomponents:\n  - path: c.yaml\n  - path: missing.yaml\nport: 99999\n").unwrap();
        let errors = load(&path).unwrap_err().to_string();
        assert!(errors.contains("r.yaml:2:10: version:"), "{errors}");
        assert!(
            errors.contains("r.yaml:6:11: components[1].path:"),
            "{errors}"
        );
        assert!(errors.contains("r.yaml:7:7: port:"), "{errors}");
    }
}
