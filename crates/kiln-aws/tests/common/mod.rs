//! What the AWS tests share: moto in server mode on a free loopback port,
//! a Ui that records, and the demo pipeline of kiln-synth's fixtures.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::Credentials;
use kiln_aws::{Aws, Names, Options, Ui};

pub const REGION: &str = "eu-west-1";

/// A moto server, stopped when dropped.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Moto {
    /// Starts `moto_server` from the venv that scripts/deps.sh's
    /// kiln_install_moto makes (KILN_MOTO_VENV overrides /opt/kiln-moto).
    pub fn start() -> Moto {
        let venv = std::env::var("KILN_MOTO_VENV").unwrap_or_else(|_| "/opt/kiln-moto".into());
        let bin = Path::new(&venv).join("bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: run `source scripts/deps.sh && kiln_install_moto` (scripts/test.sh does)",
            bin.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::env::temp_dir().join(format!("kiln-moto-{port}.log"));
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!(
                    "moto_server exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen in 60s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// kiln's clients against this server, with moto's dummy credentials.
    pub async fn aws(&self) -> Aws {
        let mut options = Options::new(REGION);
        options.region = Some(REGION.into());
        options.endpoint_url = Some(self.url.clone());
        options.poll = Duration::from_millis(50);
        let conf = kiln_aws::loader(&options)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
            .load()
            .await;
        Aws::from_conf(&conf, options.poll)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps every line; answers `confirm` with `yes`.
pub struct Recorder {
    pub yes: bool,
    pub lines: Mutex<Vec<String>>,
}

impl Recorder {
    pub fn new(yes: bool) -> Recorder {
        Recorder {
            yes,
            lines: Mutex::new(Vec::new()),
        }
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

impl Ui for Recorder {
    fn line(&self, text: &str) {
        self.lines.lock().unwrap().push(text.to_string());
    }

    fn confirm(&self, question: &str) -> bool {
        self.line(&format!("? {question}"));
        self.yes
    }
}

/// kiln-synth's demo pipeline, read in place.
pub fn demo() -> (PathBuf, kiln_pipeline::Config, Names) {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../kiln-synth/tests/fixtures/demo/kiln.yaml");
    let config = kiln_pipeline::config::load(&file).unwrap_or_else(|d| panic!("{d}"));
    let names = Names::new(&config).unwrap();
    (file, config, names)
}
