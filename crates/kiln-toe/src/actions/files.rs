//! File system modules. kiln performs these itself, through
//! [`kiln_sandbox::Root`], so every path resolves inside the instance's root
//! even when it holds `..` or passes through an absolute symlink.

use serde_json::{Map, Value};

use super::{ActionError, Ctx, Outputs, fail, flag, output, required, text};
use kiln_sandbox::{Kind, Root, RootError};

pub fn run(ctx: &mut Ctx, inputs: &Value) -> Result<Outputs, ActionError> {
    let mut outputs = Vec::new();
    for item in super::items(inputs) {
        let out = match ctx.step.action.as_str() {
            "CreateFile" => create_file(ctx, item),
            "AppendFile" => append_file(ctx, item),
            "CreateFolder" => create_folder(ctx, item),
            "CreateSymlink" => create_symlink(ctx, item),
            "CopyFile" => transfer(ctx, item, Kind::File, false),
            "CopyFolder" => transfer(ctx, item, Kind::Dir, false),
            "MoveFile" => transfer(ctx, item, Kind::File, true),
            "MoveFolder" => transfer(ctx, item, Kind::Dir, true),
            "DeleteFile" => delete_file(ctx, item),
            "DeleteFolder" => delete_folder(ctx, item),
            "ListFiles" => list_files(ctx, item),
            "ReadFile" => read_file(ctx, item),
            "SetFileEncoding" => set_file_encoding(ctx, item),
            "SetFileOwner" | "SetFolderOwner" => set_owner(ctx, item),
            "SetFilePermissions" | "SetFolderPermissions" => set_permissions(ctx, item),
            other => return Err(fail(format!("no action module named {other}"))),
        }?;
        outputs.extend(out);
    }
    Ok(outputs)
}

fn err(e: RootError) -> ActionError {
    fail(e.to_string())
}

/// `0755`, `755` and `"0755"` all mean rwxr-xr-x.
pub fn parse_mode(text: &str) -> Option<u32> {
    let t = text.trim();
    if t.is_empty() || t.len() > 5 {
        return None;
    }
    u32::from_str_radix(t, 8).ok().filter(|m| *m <= 0o7777)
}

fn mode_of(item: &Map<String, Value>) -> Result<Option<u32>, ActionError> {
    match text(item, "permissions") {
        None => Ok(None),
        Some(p) => parse_mode(&p)
            .map(Some)
            .ok_or_else(|| fail(format!("{p:?} is not an octal mode such as 0755"))),
    }
}

fn parent(path: &str) -> &str {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) => "/",
        Some((dir, _)) => dir,
        None => ".",
    }
}

fn base_name(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
}

fn kind(root: &Root, path: &str) -> Result<Option<Kind>, ActionError> {
    root.lstat(path).map(|m| m.map(|m| m.kind)).map_err(err)
}

/// Encodes text in one of AWSTOE's encodings.
pub fn encode(content: &str, encoding: &str) -> Result<Vec<u8>, ActionError> {
    let e = encoding.to_ascii_lowercase().replace("utf-", "utf");
    Ok(match e.as_str() {
        "utf8" => content.as_bytes().to_vec(),
        "utf16" | "utf16-le" => content.encode_utf16().flat_map(u16::to_le_bytes).collect(),
        "utf16-be" => content.encode_utf16().flat_map(u16::to_be_bytes).collect(),
        "utf32" | "utf32-le" => content
            .chars()
            .flat_map(|c| (c as u32).to_le_bytes())
            .collect(),
        "utf32-be" => content
            .chars()
            .flat_map(|c| (c as u32).to_be_bytes())
            .collect(),
        _ => return Err(fail(format!("unknown encoding {encoding:?}"))),
    })
}

pub fn decode(data: &[u8], encoding: &str) -> Result<String, ActionError> {
    let e = encoding.to_ascii_lowercase().replace("utf-", "utf");
    let bad = || fail(format!("the file is not valid {encoding}"));
    match e.as_str() {
        "utf8" => String::from_utf8(data.to_vec()).map_err(|_| bad()),
        "utf16" | "utf16-le" | "utf16-be" => {
            let be = e.ends_with("be");
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| {
                    if be {
                        u16::from_be_bytes([c[0], c[1]])
                    } else {
                        u16::from_le_bytes([c[0], c[1]])
                    }
                })
                .collect();
            String::from_utf16(&units).map_err(|_| bad())
        }
        "utf32" | "utf32-le" | "utf32-be" => data
            .chunks_exact(4)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                let v = if e.ends_with("be") {
                    u32::from_be_bytes(b)
                } else {
                    u32::from_le_bytes(b)
                };
                char::from_u32(v).ok_or_else(bad)
            })
            .collect(),
        _ => Err(fail(format!("unknown encoding {encoding:?}"))),
    }
}

/// Resolves user and group names against the root's own /etc/passwd and
/// /etc/group: the instance's accounts, not the host's.
fn ids(
    root: &Root,
    owner: Option<&str>,
    group: Option<&str>,
) -> Result<(Option<u32>, Option<u32>), ActionError> {
    let table = |file: &str| -> Vec<Vec<String>> {
        let text = root
            .read(file)
            .map(|d| String::from_utf8_lossy(&d).into_owned())
            .unwrap_or_default();
        text.lines()
            .map(|l| l.split(':').map(str::to_string).collect())
            .filter(|f: &Vec<String>| f.len() >= 3)
            .collect()
    };
    let lookup = |rows: &[Vec<String>], name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .and_then(|r| r[2].parse::<u32>().ok())
    };
    let mut uid = None;
    let mut primary_gid = None;
    if let Some(owner) = owner {
        let users = table("/etc/passwd");
        uid = Some(match owner.parse::<u32>() {
            Ok(id) => id,
            Err(_) => lookup(&users, owner)
                .ok_or_else(|| fail(format!("no user {owner:?} in the root's /etc/passwd")))?,
        });
        primary_gid = users
            .iter()
            .find(|r| r[0] == owner || r[2] == owner)
            .and_then(|r| r.get(3)?.parse::<u32>().ok());
    }
    let gid = match group {
        Some(group) => Some(match group.parse::<u32>() {
            Ok(id) => id,
            Err(_) => lookup(&table("/etc/group"), group)
                .ok_or_else(|| fail(format!("no group {group:?} in the root's /etc/group")))?,
        }),
        None => primary_gid,
    };
    Ok((uid, gid))
}

fn apply_owner(root: &Root, path: &str, item: &Map<String, Value>) -> Result<(), ActionError> {
    let (owner, group) = (text(item, "owner"), text(item, "group"));
    if owner.is_none() && group.is_none() {
        return Ok(());
    }
    let (uid, gid) = ids(root, owner.as_deref(), group.as_deref())?;
    let meta = root
        .stat(path)
        .map_err(err)?
        .ok_or_else(|| fail(format!("{path} does not exist")))?;
    root.chown(path, uid.unwrap_or(meta.uid), gid.unwrap_or(meta.gid))
        .map_err(err)
}

fn create_file(ctx: &mut Ctx, item: &Map<String, Value>) -> Result<Outputs, ActionError> {
    let path = ctx.path(&required(item, "path")?);
    let root = ctx.root();
    let data = encode(
        &text(item, "content").unwrap_or_default(),
        &text(item, "encoding").unwrap_or("utf8".into()),
    )?;
    let overwrite = flag(item, "overwrite", true)?;
    if kind(root, &path)? == Some(Kind::Dir) {
        return Err(fail(format!("{path} is a folder")));
    }
    root.create_dir_all(parent(&path), 0o755).map_err(err)?;
    root.write(&path, &data, 0o666, !overwrite).map_err(err)?;
    if let Some(mode) = mode_of(item)? {
        root.chmod(&path, mode).map_err(err)?;
    }
    apply_owner(root, &path, item)?;
    Ok(Vec::new())
}

fn append_file(ctx: &mut Ctx, item: &Map<String, Value>) -> Result<Outputs, ActionError> {
    let path = ctx.path(&required(item, "path")?);
    let data = encode(
        &text(item, "content").unwrap_or_default(),
        &text(item, "encoding").unwrap_or("utf8".into()),
    )?;
    ctx.root().append(&path, &data).map_err(err)?;
    Ok(Vec::new())
}

fn create_folder(ctx: &mut Ctx, item: &Map<String, Value>) -> Result<Outputs, ActionError> {
    let path = ctx.path(&required(item, "path")?);
    let root = ctx.root();
    match kind(root, &path)? {
        Some(Kind::Dir) if !flag(item, "overwrite", true)? => {
            return Err(fail(format!(
                "{path} already exists and overwrite is false"
            )));
        }
        Some(Kind::File) => return Err(fail(format!("{path} exists and is a file"))),
        // An existing folder is kept with its contents: overwriting means
        // making sure it exists with the requested owner and mode.
        _ => root.create_dir_all(&path, 0o777).map_err(err)?,
    }
    if let Some(mode) = mode_of(item)? {
        root.chmod(&path, mode).map_err(err)?;
    }
    apply_owner(root, &path, item)?;
    Ok(Vec::new())
}

fn create_symlink(ctx: &mut Ctx, item: &Map<String, Value>) -> Result<Outputs, ActionError> {
    let path = ctx.path(&required(item, "path")?);
    let target = required(item, "target")?;
    let root = ctx.root();
    let resolved = kiln_sandbox::rootfs::join(parent(&path), &target);
    if root.stat(&resolved).map_err(err)?.is_none() {
        return Err(fail(format!(
            "the symlink's target {target} does not exist"
        )));
    }
    match kind(root, &path)? {
        None => {}
        Some(Kind::Symlink) if flag(item, "force", false)? => {
            root.remove_file(&path).map_err(err)?
        }
        Some(Kind::Symlink) => {
            return Err(fail(format!(
                "{path} already exists; set force: true to replace the link"
            )));
        }
        Some(_) => return Err(fail(format!("{path} exists and is not a symlink"))),
    }
    root.create_dir_all(parent(&path), 0o755).map_err(err)?;
    root.symlink(&target, &path).map_err(err)?;
    Ok(Vec::new())
}

/// Matches a name against a pattern with `*` and `?` wildcards.
pub fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The sources a path names: itself, or with a wildcard in its last
/// segment, every matching entry of the wanted kind.
fn sources(root: &Root, source: &str, want: Kind) -> Result<Vec<String>, ActionError> {
    let name = base_name(source);
    if !name.contains('*') && !name.contains('?') {
        return Ok(vec![source.to_string()]);
    }
    let dir = parent(source);
    let mut out = Vec::new();
    for (entry, _) in root.read_dir(dir).map_err(err)? {
        let full = kiln_sandbox::rootfs::join(dir, &entry);
        if wildcard(name, &entry)
            && root
                .stat(&full)
                .map_err(err)?
                .is_some_and(|m| m.kind == want)
        {
            out.push(full);
        }
    }
    Ok(out)
}

/// CopyFile, CopyFolder, MoveFile and MoveFolder: a destination ending in
/// `/` (or an existing folder, for files) receives the source by its name.
fn transfer(
    ctx: &mut Ctx,
    item: &Map<String, Value>,
    want: Kind,
    remove: bool,
) -> Result<Outputs, ActionError> {
    let source = ctx.path(&required(item, "source")?);
    let raw_dest = required(item, "destination")?;
    let destination = ctx.path(&raw_dest);
    let overwrite = flag(item, "overwrite", true)?;
    let root = ctx.root();
    let matched = sources(root, &source, want)?;
    let what = if want == Kind::File { "file" } else { "folder" };
    if matched.is_empty() {
        return Err(fail(format!("no {what} matches {source}")));
    }
    let into_dir = raw_dest.ends_with('/') || raw_dest.ends_with('\\') || matched.len() > 1;
    for src in matched {
        match root.stat(&src).map_err(err)? {
            Some(m) if m.kind == want => {}
            Some(_) => return Err(fail(format!("{src} is not a {what}"))),
            None => return Err(fail(format!("the source {what} {src} does not exist"))),
        }
        let existing_dir = want == Kind::File
            && root
                .stat(&destination)
                .map_err(err)?
                .is_some_and(|m| m.kind == Kind::Dir);
        let dest = if into_dir || existing_dir {
            kiln_sandbox::rootfs::join(&destination, base_name(&src))
        } else {
            destination.trim_end_matches('/').to_string()
        };
        let exists = kind(root, &dest)?.is_some();
        if exists && !overwrite {
            return Err(fail(format!(
                "{dest} already exists and overwrite is false"
            )));
        }
        root.create_dir_all(parent(&dest), 0o755).map_err(err)?;
        match (want, remove) {
            (Kind::File, false) => root.copy_file(&src, &dest).map_err(err)?,
            (_, false) => root.copy_tree(&src, &dest).map_err(err)?,
            (_, true) => {
                if exists && want == Kind::Dir {
                    root.remove_all(&dest).map_err(err)?;
                }
                root.rename(&src, &dest).map_err(err)?;
            }
        }
    }
    Ok(Vec::new())
}

fn delete_file(ctx: &mut Ctx, item: &Map<String, Value>) -> Result<Outputs, ActionError> {
    let path = ctx.path(&required(item, "path")?);
    let root = ctx.root();
    for p in sources(root, &path, Kind::File)? {
        match kind(root, &p)? {
            // Deleting what is already gone succeeds, so that a step rerun
            // after a reboot or a retry is harmless.
            None => ctx.console(&format!("DeleteFile: {p} does not exist")),
            Some(Kind::Dir) => return Err(fail(format!("{p} is a folder; use DeleteFolder"))),
            Some(_) => root.remove_file(&p).map_err(err)?,
        }
    }
    Ok(Vec::new())
}

fn delete_folder(ctx: &mut Ctx, item: &Map<String, Value>) -> Result<Outputs, ActionError> {
    let path = ctx.path(&required(item, "path")?);
    let root = ctx.root();
    match kind(root, &path)? {
        None => ctx.console(&format!("DeleteFolder: {path} does not exist")),
        // A link is removed, never followed: what it points to stays.
        Some(Kind::Symlink) => root.remove_file(&path).map_err(err)?,
        Some(Kind::Dir) => {
            if flag(item, "force", false)? {
                root.remove_all(&path).map_err(err)?;
            } else if !root.read_dir(&path).map_err(err)?.is_empty() {
                return Err(fail(format!(
                    "{path} is not empty; set force: true to delete it with its contents"
                )));
            } else {
                root.remove_dir(&path).map_err(err)?;
            }
        }
        Some(_) => return Err(fail(format!("{path} is not a folder"))),
    }
    Ok(Vec::new())
}

fn list_files(ctx: &mut Ctx, item: &Map<String, Value>) -> Result<Outputs, ActionError> {
    let path = ctx.path(&required(item, "path")?);
    let pattern = text(item, "fileNamePattern");
    let recursive = flag(item, "recursive", false)?;
    let root = ctx.root();
    if !root
        .stat(&path)
        .map_err(err)?
        .is_some_and(|m| m.kind == Kind::Dir)
    {
        return Err(fail(format!("the folder {path} does not exist")));
    }
    let mut files = Vec::new();
    let mut pending = vec![path.trim_end_matches('/').to_string()];
    while let Some(dir) = pending.pop() {
        for (name, k) in root
            .read_dir(if dir.is_empty() { "/" } else { &dir })
            .map_err(err)?
        {
            let full = format!("{dir}/{name}");
            match k {
                Kind::Dir if recursive => pending.push(full),
                Kind::Dir => {}
                _ if pattern.as_deref().is_none_or(|p| wildcard(p, &name)) => files.push(full),
                _ => {}
            }
        }
    }
    files.sort();
    Ok(vec![output("files", files.join(","))])
}

fn read_file(ctx: &mut Ctx, item: &Map<String, Value>) -> Result<Outputs, ActionError> {
    let path = ctx.path(&required(item, "path")?);
    let data = ctx.root().read(&path).map_err(err)?;
    let content = decode(&data, &text(item, "encoding").unwrap_or("utf8".into()))?;
    if flag(item, "printFileContent", false)? {
        ctx.console(&content);
    }
    Ok(vec![output("content", content)])
}

fn set_file_encoding(ctx: &mut Ctx, item: &Map<String, Value>) -> Result<Outputs, ActionError> {
    let path = ctx.path(&required(item, "path")?);
    let root = ctx.root();
    let data = root.read(&path).map_err(err)?;
    let content = decode(&data, "utf8")?;
    let encoded = encode(&content, &text(item, "encoding").unwrap_or("utf8".into()))?;
    root.write(&path, &encoded, 0o666, false).map_err(err)?;
    Ok(Vec::new())
}

/// Visits `path` and, when `recursive`, everything below it without
/// following symlinks.
fn walk(
    root: &Root,
    path: &str,
    recursive: bool,
    visit: &mut dyn FnMut(&str) -> Result<(), ActionError>,
) -> Result<(), ActionError> {
    visit(path)?;
    if !recursive || kind(root, path)? != Some(Kind::Dir) {
        return Ok(());
    }
    for (name, k) in root.read_dir(path).map_err(err)? {
        let full = kiln_sandbox::rootfs::join(path, &name);
        match k {
            Kind::Dir => walk(root, &full, true, visit)?,
            Kind::Symlink => {}
            _ => visit(&full)?,
        }
    }
    Ok(())
}

fn expect_kind(ctx: &Ctx, path: &str) -> Result<(), ActionError> {
    let want = if ctx.step.action.contains("Folder") {
        Kind::Dir
    } else {
        Kind::File
    };
    match ctx.root().stat(path).map_err(err)? {
        Some(m) if m.kind == want => Ok(()),
        Some(_) => Err(fail(format!(
            "{path} is not a {}",
            if want == Kind::Dir { "folder" } else { "file" }
        ))),
        None => Err(fail(format!("{path} does not exist"))),
    }
}

fn set_owner(ctx: &mut Ctx, item: &Map<String, Value>) -> Result<Outputs, ActionError> {
    let path = ctx.path(&required(item, "path")?);
    expect_kind(ctx, &path)?;
    let root = ctx.root();
    let owner = required(item, "owner")?;
    let (uid, gid) = ids(root, Some(&owner), text(item, "group").as_deref())?;
    let recursive = ctx.step.action == "SetFolderOwner" && flag(item, "recursive", true)?;
    walk(root, &path, recursive, &mut |p| {
        let meta = root
            .stat(p)
            .map_err(err)?
            .ok_or_else(|| fail(format!("{p} does not exist")))?;
        root.chown(p, uid.unwrap_or(meta.uid), gid.unwrap_or(meta.gid))
            .map_err(err)
    })?;
    Ok(Vec::new())
}

fn set_permissions(ctx: &mut Ctx, item: &Map<String, Value>) -> Result<Outputs, ActionError> {
    let path = ctx.path(&required(item, "path")?);
    expect_kind(ctx, &path)?;
    let mode = mode_of(item)?.ok_or_else(|| fail("input \"permissions\" is required"))?;
    let root = ctx.root();
    let recursive = ctx.step.action == "SetFolderPermissions" && flag(item, "recursive", true)?;
    walk(root, &path, recursive, &mut |p| {
        root.chmod(p, mode).map_err(err)
    })?;
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_a_shell() {
        assert!(wildcard("*log", "syslog"));
        assert!(wildcard("Sample*", "Sample.txt"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("*.log", "log.txt"));
        assert!(wildcard("*", ""));
    }

    #[test]
    fn modes_are_octal_whatever_the_spelling() {
        assert_eq!(parse_mode("0755"), Some(0o755));
        assert_eq!(parse_mode("755"), Some(0o755));
        assert_eq!(parse_mode("rwx"), None);
        assert_eq!(parse_mode("0999"), None);
    }

    #[test]
    fn encodings_round_trip() {
        for enc in ["utf8", "UTF-16", "utf16-BE", "utf-32", "utf32-be"] {
            let bytes = encode("héllo\n", enc).unwrap();
            assert_eq!(decode(&bytes, enc).unwrap(), "héllo\n");
        }
        assert_eq!(encode("A", "utf-16").unwrap(), vec![0x41, 0]);
        assert_eq!(encode("A", "utf16-be").unwrap(), vec![0, 0x41]);
    }
}
