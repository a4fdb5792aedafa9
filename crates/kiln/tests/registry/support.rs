//! A real registry (Debian's docker-registry, the CNCF distribution
//! registry) on loopback, started by the tests in a temporary directory,
//! and a small hostile registry of our own for what a real one refuses to
//! serve (blobs that do not match their digest, huge manifests).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{json, kiln, ok};

pub fn tool(program: &str, args: &[&str]) -> String {
    ok(Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (scripts/deps.sh installs it): {e}")))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Default)]
pub struct RegistryConfig {
    /// `htpasswd` basic auth with this user and password.
    pub basic_auth: Option<(String, String)>,
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// `docker-registry` listening on 127.0.0.1, its storage and log in a
/// temporary directory; killed on drop.
pub struct Registry {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Registry {
    pub fn start(config: RegistryConfig) -> Registry {
        assert!(
            Path::new("/usr/bin/docker-registry").exists(),
            "/usr/bin/docker-registry is missing: scripts/deps.sh installs the Debian package docker-registry"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("storage").display()
        );
        if let Some((cert, key)) = &config.tls {
            yaml += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
        }
        if let Some((user, password)) = &config.basic_auth {
            let line = tool("htpasswd", &["-Bbn", user, password]);
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, line.trim()).unwrap();
            yaml += &format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                file.display()
            );
        }
        std::fs::write(dir.path().join("config.yml"), yaml).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let registry = Registry {
            port,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {port}: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many requests the registry logged for `path` (its access log).
    pub fn requests(&self, path: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains(&format!("\"{path}")))
            .count()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the hostile registry answers for one path.
#[derive(Clone)]
pub struct Canned {
    pub content_type: String,
    pub body: Vec<u8>,
}

/// A registry API of our own on loopback that serves whatever it is told
/// to, for paths under `/v2/`; with a token, it asks for bearer auth as
/// Docker Hub does, and its `/token` realm hands the token out for the
/// right basic credentials only. Every request line is kept.
pub struct Hostile {
    pub port: u16,
    pub routes: Arc<Mutex<HashMap<String, Canned>>>,
    pub seen: Arc<Mutex<Vec<String>>>,
}

/// Bearer auth of the hostile registry: the token it hands out, and the
/// `Authorization` header its realm wants for it.
#[derive(Clone)]
pub struct TokenAuth {
    pub token: String,
    pub basic: String,
}

impl Hostile {
    pub fn start(auth: Option<TokenAuth>) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes: Arc<Mutex<HashMap<String, Canned>>> = Arc::default();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let (table, log) = (routes.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (table, log, auth) = (table.clone(), log.clone(), auth.clone());
                std::thread::spawn(move || serve(stream, port, &table, &log, auth.as_ref()));
            }
        });
        Hostile { port, routes, seen }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn route(&self, path: &str, content_type: &str, body: Vec<u8>) {
        self.routes.lock().unwrap().insert(
            path.to_string(),
            Canned {
                content_type: content_type.to_string(),
                body,
            },
        );
    }
}

fn serve(
    stream: TcpStream,
    port: u16,
    routes: &Mutex<HashMap<String, Canned>>,
    seen: &Mutex<Vec<String>>,
    auth: Option<&TokenAuth>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut length = 0usize;
    let mut authorization = String::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((&header, ""));
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap_or(0),
            "authorization" => authorization = value.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    seen.lock().unwrap().push(line.trim().to_string());
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let json = |body: &[u8]| Canned {
        content_type: "application/json".into(),
        body: body.to_vec(),
    };
    let mut extra = String::new();
    let (status, canned) = if let (Some(a), true) = (auth, path.starts_with("/token")) {
        if authorization == a.basic {
            (
                "200 OK",
                json(format!(r#"{{"token":"{}"}}"#, a.token).as_bytes()),
            )
        } else {
            (
                "401 Unauthorized",
                json(br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#),
            )
        }
    } else if auth.is_some_and(|a| authorization != format!("Bearer {}", a.token)) {
        let repo = path
            .strip_prefix("/v2/")
            .and_then(|p| {
                p.split_once("/manifests/")
                    .or_else(|| p.split_once("/blobs/"))
            })
            .map(|(r, _)| r)
            .unwrap_or("");
        extra = format!(
            "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"hostile\",scope=\"repository:{repo}:pull\"\r\n"
        );
        (
            "401 Unauthorized",
            json(br#"{"errors":[{"code":"UNAUTHORIZED","message":"token wanted"}]}"#),
        )
    } else if path == "/v2/" {
        ("200 OK", json(b"{}"))
    } else {
        match routes.lock().unwrap().get(path).cloned() {
            Some(c) => ("200 OK", c),
            None => (
                "404 Not Found",
                json(br#"{"errors":[{"code":"NOT_FOUND","message":"not here"}]}"#),
            ),
        }
    };
    let mut stream = stream;
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        canned.content_type,
        canned.body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = stream.write_all(&canned.body);
    }
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A gzip tar layer holding one file, and its diff_id.
pub fn layer(dir: &Path, name: &str, content: &str) -> (Vec<u8>, String) {
    let tree = dir.join(format!("tree-{name}"));
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join(name), content).unwrap();
    let tar = dir.join(format!("{name}.tar"));
    tool(
        "tar",
        &[
            "-cf",
            tar.to_str().unwrap(),
            "-C",
            tree.to_str().unwrap(),
            name,
        ],
    );
    let plain = std::fs::read(&tar).unwrap();
    tool("gzip", &["-kn", tar.to_str().unwrap()]);
    let gz = std::fs::read(dir.join(format!("{name}.tar.gz"))).unwrap();
    (gz, sha256(&plain))
}

/// Files below `dir`, recursively (what a store holds).
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push(p.clone());
                out.extend(files_below(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Writes a recipe `NAME-recipe.yaml` whose one component (`NAME.yaml`)
/// runs `command`, bakes it into `state` and returns the image's digest.
pub fn bake(
    dir: &Path,
    state: &Path,
    name: &str,
    version: &str,
    parent: &str,
    extra: &str,
    command: &str,
) -> String {
    std::fs::write(
        dir.join(format!("{name}.yaml")),
        format!(
            "name: {name}\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Run\n        action: ExecuteBash\n        inputs:\n          commands: [\"{command}\"]\n"
        ),
    )
    .unwrap();
    let recipe = dir.join(format!("{name}-recipe.yaml"));
    std::fs::write(
        &recipe,
        format!(
            "name: {name}\nversion: {version}\nparent: {parent}\n{extra}shell: sh\ncomponents:\n  - path: {name}.yaml\ntests: {{ enabled: false }}\n"
        ),
    )
    .unwrap();
    ok(kiln(state, &["bake", recipe.to_str().unwrap()]));
    image_field(state, &format!("{name}/{version}"), "digest")
}

/// A field of `kiln images ls --output json` for the image `reference`
/// (`NAME/VERSION/BUILD`, or `NAME/VERSION` for its newest build).
pub fn image_field(state: &Path, reference: &str, field: &str) -> String {
    let images = json(kiln(state, &["images", "ls", "--output", "json"]));
    let found = images
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|i| {
            let r = i["reference"].as_str().unwrap();
            r == reference || r.rsplit_once('/').is_some_and(|(nv, _)| nv == reference)
        })
        .unwrap_or_else(|| panic!("no image {reference} in {images}"));
    found[field].as_str().unwrap().to_string()
}

/// The references of every image of the store, oldest first.
pub fn image_references(state: &Path) -> Vec<String> {
    json(kiln(state, &["images", "ls", "--output", "json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap().to_string())
        .collect()
}

/// base64 of `text`, as auth files hold credentials.
pub fn base64(text: &str) -> String {
    let mut child = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

/// `kiln images push IMAGE DEST --tls-verify=false --output json`.
pub fn push(state: &Path, image: &str, dest: &str) -> serde_json::Value {
    json(kiln(
        state,
        &[
            "images",
            "push",
            image,
            dest,
            "--tls-verify=false",
            "--output",
            "json",
        ],
    ))
}

/// `kiln images pull SOURCE --output json` with `flags`.
pub fn pull(state: &Path, source: &str, flags: &[&str]) -> serde_json::Value {
    let mut args = vec!["images", "pull", source, "--output", "json"];
    args.extend_from_slice(flags);
    json(kiln(state, &args))
}
