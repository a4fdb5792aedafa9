//! The inputs every action module accepts, as AWSTOE documents them, and
//! their validation.

use crate::error::Collector;
use crate::yaml::Node;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// Any scalar; numbers are kept as written (`permissions: 0755`).
    Str,
    Bool,
    Int,
    StrList,
    StrMap,
    /// ExecuteDocument's list of `{name, value}`.
    NameValueList,
    /// A scalar or a list of scalars (SetRegistry's `value`).
    ScalarOrList,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `inputs` is one map.
    Map,
    /// `inputs` is a list of maps, each one item of work.
    List,
    /// `inputs` is one map and may be left out.
    OptionalMap,
    /// `inputs` is a condition (Assert).
    Expression,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Any,
    Linux,
    Windows,
}

#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
}

#[derive(Debug)]
pub struct ActionSpec {
    pub name: &'static str,
    pub shape: Shape,
    pub fields: &'static [Field],
    pub platform: Platform,
}

const fn f(name: &'static str, ty: Ty, required: bool) -> Field {
    Field { name, ty, required }
}

const fn a(
    name: &'static str,
    shape: Shape,
    platform: Platform,
    fields: &'static [Field],
) -> ActionSpec {
    ActionSpec {
        name,
        shape,
        fields,
        platform,
    }
}

use Platform::{Any, Linux, Windows};
use Shape::{Expression, List, Map, OptionalMap};
use Ty::*;

const SOURCE_DEST: &[Field] = &[
    f("source", Str, true),
    f("destination", Str, true),
    f("overwrite", Bool, false),
];
const OWNER: &[Field] = &[
    f("path", Str, true),
    f("owner", Str, true),
    f("group", Str, false),
];
const FOLDER_OWNER: &[Field] = &[
    f("path", Str, true),
    f("owner", Str, true),
    f("group", Str, false),
    f("recursive", Bool, false),
];
const MSI: &[Field] = &[
    f("path", Str, true),
    f("reboot", Str, false),
    f("logOptions", Str, false),
    f("logFile", Str, false),
    f("properties", StrMap, false),
    f("ignoreAuthenticodeSignatureErrors", Bool, false),
    f("allowUnsignedInstaller", Bool, false),
];

pub const ACTIONS: &[ActionSpec] = &[
    a("Assert", Expression, Any, &[]),
    a("ExecuteBash", Map, Linux, &[f("commands", StrList, true)]),
    a(
        "ExecuteBinary",
        Map,
        Any,
        &[f("path", Str, true), f("arguments", StrList, false)],
    ),
    a(
        "ExecuteDocument",
        Map,
        Any,
        &[
            f("document", Str, true),
            f("document-s3-bucket-owner", Str, false),
            f("phases", Str, false),
            f("parameters", NameValueList, false),
        ],
    ),
    a(
        "ExecutePowerShell",
        Map,
        Windows,
        &[f("commands", StrList, false), f("file", Str, false)],
    ),
    a(
        "S3Download",
        List,
        Any,
        &[
            f("source", Str, true),
            f("destination", Str, true),
            f("expectedBucketOwner", Str, false),
            f("overwrite", Bool, false),
        ],
    ),
    a(
        "S3Upload",
        List,
        Any,
        &[
            f("source", Str, true),
            f("destination", Str, true),
            f("recurse", Bool, false),
            f("expectedBucketOwner", Str, false),
        ],
    ),
    a(
        "WebDownload",
        List,
        Any,
        &[
            f("source", Str, true),
            f("destination", Str, true),
            f("overwrite", Bool, false),
            f("checksum", Str, false),
            f("algorithm", Str, false),
            f("ignoreCertificateErrors", Bool, false),
        ],
    ),
    a(
        "AppendFile",
        List,
        Any,
        &[
            f("path", Str, true),
            f("content", Str, false),
            f("encoding", Str, false),
        ],
    ),
    a("CopyFile", List, Any, SOURCE_DEST),
    a("CopyFolder", List, Any, SOURCE_DEST),
    a(
        "CreateFile",
        List,
        Any,
        &[
            f("path", Str, true),
            f("content", Str, false),
            f("encoding", Str, false),
            f("owner", Str, false),
            f("group", Str, false),
            f("permissions", Str, false),
            f("overwrite", Bool, false),
        ],
    ),
    a(
        "CreateFolder",
        List,
        Any,
        &[
            f("path", Str, true),
            f("owner", Str, false),
            f("group", Str, false),
            f("permissions", Str, false),
            f("overwrite", Bool, false),
        ],
    ),
    a(
        "CreateSymlink",
        List,
        Linux,
        &[
            f("path", Str, true),
            f("target", Str, true),
            f("force", Bool, false),
        ],
    ),
    a("DeleteFile", List, Any, &[f("path", Str, true)]),
    a(
        "DeleteFolder",
        List,
        Any,
        &[f("path", Str, true), f("force", Bool, false)],
    ),
    a(
        "ListFiles",
        List,
        Any,
        &[
            f("path", Str, true),
            f("fileNamePattern", Str, false),
            f("recursive", Bool, false),
        ],
    ),
    a("MoveFile", List, Any, SOURCE_DEST),
    a("MoveFolder", List, Any, SOURCE_DEST),
    a(
        "ReadFile",
        List,
        Any,
        &[
            f("path", Str, true),
            f("encoding", Str, false),
            f("printFileContent", Bool, false),
        ],
    ),
    a(
        "SetFileEncoding",
        List,
        Any,
        &[f("path", Str, true), f("encoding", Str, false)],
    ),
    a("SetFileOwner", List, Linux, OWNER),
    a("SetFolderOwner", List, Linux, FOLDER_OWNER),
    a(
        "SetFilePermissions",
        List,
        Linux,
        &[f("path", Str, true), f("permissions", Str, true)],
    ),
    a(
        "SetFolderPermissions",
        List,
        Linux,
        &[
            f("path", Str, true),
            f("permissions", Str, true),
            f("recursive", Bool, false),
        ],
    ),
    a("InstallMSI", Map, Windows, MSI),
    a("UninstallMSI", Map, Windows, MSI),
    a("Reboot", OptionalMap, Any, &[f("delaySeconds", Int, false)]),
    a(
        "SetRegistry",
        List,
        Windows,
        &[
            f("path", Str, true),
            f("name", Str, true),
            f("value", ScalarOrList, true),
            f("type", Str, true),
        ],
    ),
    a(
        "UpdateOS",
        OptionalMap,
        Any,
        &[f("include", StrList, false), f("exclude", StrList, false)],
    ),
];

pub fn spec(action: &str) -> Option<&'static ActionSpec> {
    ACTIONS.iter().find(|s| s.name == action)
}

/// The encodings AWSTOE accepts, case-insensitively.
pub const ENCODINGS: &[&str] = &[
    "utf8",
    "utf-8",
    "utf16",
    "utf-16",
    "utf16-le",
    "utf-16-le",
    "utf16-be",
    "utf-16-be",
    "utf32",
    "utf-32",
    "utf32-le",
    "utf-32-le",
    "utf32-be",
    "utf-32-be",
];

const REGISTRY_TYPES: &[&str] = &["BINARY", "DWORD", "QWORD", "SZ", "EXPAND_SZ", "MULTI_SZ"];

fn templated(node: &Node) -> bool {
    node.scalar().is_some_and(|s| s.contains("{{"))
}

fn check_type(node: &Node, ty: Ty, field: &str, c: &mut Collector) {
    // A list of strings with one odd item: point at that item. (An
    // unquoted `: ` inside a command makes YAML read the item as a map.)
    if matches!(ty, StrList | ScalarOrList)
        && let Some((i, item)) = node
            .as_seq()
            .and_then(|items| items.iter().enumerate().find(|(_, i)| i.scalar().is_none()))
    {
        let hint = if item.as_map().is_some() {
            " (quote the item: an unquoted `: ` makes it a map)"
        } else {
            ""
        };
        c.push(
            item.pos,
            format!("{field}[{i}]"),
            format!("expected a string, found a {}{hint}", item.kind()),
        );
        return;
    }
    let scalar = node.scalar().is_some();
    let ok = match ty {
        Str => scalar,
        Bool => node.as_bool().is_some() || templated(node),
        Int => node.as_i64().is_some() || templated(node),
        StrList => node
            .as_seq()
            .is_some_and(|items| items.iter().all(|i| i.scalar().is_some())),
        StrMap => node
            .as_map()
            .is_some_and(|entries| entries.iter().all(|(_, v)| v.scalar().is_some())),
        ScalarOrList => {
            scalar
                || node
                    .as_seq()
                    .is_some_and(|items| items.iter().all(|i| i.scalar().is_some()))
        }
        NameValueList => node.as_seq().is_some_and(|items| {
            items
                .iter()
                .all(|i| i.get("name").and_then(Node::scalar).is_some() && i.get("value").is_some())
        }),
    };
    if !ok {
        let want = match ty {
            Str => "a string",
            Bool => "true or false",
            Int => "an integer",
            StrList => "a list of strings",
            StrMap => "a map of strings",
            ScalarOrList => "a value or a list of values",
            NameValueList => "a list of {name, value} maps",
        };
        c.push(
            node.pos,
            field,
            format!("expected {want}, found a {}", node.kind()),
        );
    }
}

/// Checks a step's `inputs` against its action's fields.
pub fn check_inputs(spec: &ActionSpec, inputs: Option<&Node>, field: &str, c: &mut Collector) {
    let items: Vec<(String, &Node)> = match (spec.shape, inputs) {
        (Expression, _) => return,
        (OptionalMap, None) => return,
        (_, None) => {
            c.push(
                Default::default(),
                field,
                format!("{} needs inputs", spec.name),
            );
            return;
        }
        (List, Some(node)) => match (node.as_seq(), node.as_map()) {
            (Some([]), _) => {
                c.push(
                    node.pos,
                    field,
                    format!("{} needs at least one input item", spec.name),
                );
                return;
            }
            (Some(items), _) => items
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("{field}[{i}]"), n))
                .collect(),
            // A single map is taken as a one-item list, as AWSTOE does.
            (None, Some(_)) => vec![(field.to_string(), node)],
            _ => {
                c.push(
                    node.pos,
                    field,
                    format!("expected a list of maps, found a {}", node.kind()),
                );
                return;
            }
        },
        (Map | OptionalMap, Some(node)) => vec![(field.to_string(), node)],
    };
    for (here, item) in items {
        let Some(entries) = item.as_map() else {
            c.push(
                item.pos,
                &here,
                format!("expected a map, found a {}", item.kind()),
            );
            continue;
        };
        for (key, value) in entries {
            let name = key.scalar().unwrap_or_default();
            match spec.fields.iter().find(|f| f.name == name) {
                Some(f) => check_type(value, f.ty, &format!("{here}.{name}"), c),
                // AWSTOE ignores inputs its module does not read, and
                // real documents carry some (`force` on DeleteFile).
                None => c.warn(
                    key.pos,
                    format!("{here}.{name}"),
                    format!("{} has no input {name:?}; AWSTOE ignores it", spec.name),
                ),
            }
        }
        for f in spec.fields.iter().filter(|f| f.required) {
            if item.get(f.name).is_none_or(Node::is_null) {
                c.push(
                    item.pos,
                    format!("{here}.{}", f.name),
                    "required input is missing",
                );
            }
        }
        check_values(spec.name, item, &here, c);
    }
}

/// Rules that go beyond types.
fn check_values(action: &str, item: &Node, here: &str, c: &mut Collector) {
    let literal = |k: &str| {
        item.get(k)
            .filter(|n| !templated(n))
            .and_then(|n| n.scalar().map(|s| (n, s)))
    };
    if let Some((node, enc)) = literal("encoding")
        && !ENCODINGS.contains(&enc.to_ascii_lowercase().as_str())
    {
        c.push(
            node.pos,
            format!("{here}.encoding"),
            format!("unknown encoding {enc:?} (use utf8, utf16, utf32 and their -le / -be forms)"),
        );
    }
    if let Some((node, mode)) = literal("permissions")
        && crate::actions::files::parse_mode(mode).is_none()
    {
        c.push(
            node.pos,
            format!("{here}.permissions"),
            format!("{mode:?} is not an octal mode such as 0755"),
        );
    }
    match action {
        "ExecutePowerShell" if item.get("commands").is_some() == item.get("file").is_some() => {
            c.push(
                item.pos,
                here,
                "ExecutePowerShell takes exactly one of commands or file",
            );
        }
        "WebDownload" => {
            if item.get("checksum").is_some() != item.get("algorithm").is_some() {
                c.push(
                    item.pos,
                    here,
                    "checksum and algorithm are given together or not at all",
                );
            }
            if let Some((node, alg)) = literal("algorithm")
                && !crate::digest::ALGORITHMS.contains(&alg.to_ascii_uppercase().as_str())
            {
                c.push(
                    node.pos,
                    format!("{here}.algorithm"),
                    format!("unknown algorithm {alg:?} (MD5, SHA1, SHA256 or SHA512)"),
                );
            }
        }
        "SetRegistry" => {
            if let Some((node, ty)) = literal("type")
                && !REGISTRY_TYPES.contains(&ty)
            {
                c.push(
                    node.pos,
                    format!("{here}.type"),
                    format!("unknown registry type {ty:?}"),
                );
            }
        }
        "InstallMSI" | "UninstallMSI" => {
            if let Some((node, reboot)) = literal("reboot")
                && !matches!(reboot, "Allow" | "Force" | "Skip")
            {
                c.push(
                    node.pos,
                    format!("{here}.reboot"),
                    "must be one of Allow, Force, Skip",
                );
            }
        }
        _ => {}
    }
}

/// The outputs an action module produces, for chaining checks.
pub fn outputs(action: &str) -> &'static [&'static str] {
    match action {
        "ExecuteBash" | "ExecuteBinary" | "ExecutePowerShell" => &["stdout"],
        "WebDownload" => &["destination"],
        "ListFiles" => &["files"],
        "ReadFile" => &["content"],
        "InstallMSI" | "UninstallMSI" => &["logFile", "msiExitCode", "stdout"],
        "ExecuteDocument" => &[
            "executedStepCount",
            "failedStepCount",
            "ignoredFailedStepCount",
            "status",
            "executionId",
            "failureMessage",
            "logUrl",
        ],
        _ => &[],
    }
}
