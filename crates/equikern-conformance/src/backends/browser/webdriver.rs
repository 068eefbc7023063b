//! A minimal W3C WebDriver client for chromedriver (plain HTTP + JSON through `ureq`): start
//! chromedriver on an ephemeral port, open one headless Chromium session with a fresh profile,
//! navigate, run `execute/async` scripts; on drop, end the session and stop chromedriver.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Flags for every session. `--enable-unsafe-webgpu` is added separately (the negative
/// control leaves it out). Without the networking flags Chromium floods a closed network.
pub const BASE_ARGS: [&str; 9] = [
    "--headless=new",
    "--no-sandbox",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--disable-extensions",
];

pub struct Chrome {
    agent: ureq::Agent,
    base: String,
    driver: Child,
    session: Option<String>,
    work: PathBuf,
    /// `browserName browserVersion` from the session's capabilities.
    pub browser: String,
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let v: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    v[v.len().saturating_sub(lines)..].join(" | ")
}

impl Chrome {
    /// Start chromedriver and open a session. `chromium`: the browser binary, or `None` for
    /// chromedriver's default. `script_timeout`: the longest one `execute/async` may run.
    pub fn launch(
        chromedriver: &Path,
        chromium: Option<&Path>,
        args: &[String],
        script_timeout: Duration,
    ) -> Result<Chrome, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let work = std::env::temp_dir().join(format!(
            "equikern-browser-{}-{nanos:09}",
            std::process::id()
        ));
        let profile = work.join("profile");
        std::fs::create_dir_all(&profile)
            .map_err(|e| format!("creating {}: {e}", profile.display()))?;
        let log = work.join("chromedriver.log");
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let port = free_port()?;
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            // A bad Vulkan driver override gives Chromium a null WebGPU adapter.
            .env_remove("VK_ICD_FILENAMES")
            .env_remove("VK_DRIVER_FILES")
            .spawn()
            .map_err(|e| format!("starting {}: {e}", chromedriver.display()))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(script_timeout + Duration::from_secs(60)))
            .build()
            .into();
        let mut c = Chrome {
            agent,
            base: format!("http://127.0.0.1:{port}"),
            driver,
            session: None,
            work,
            browser: String::new(),
        };
        let t0 = Instant::now();
        loop {
            if let Ok(v) = c.request("GET", "/status", None) {
                if v["ready"].as_bool() == Some(true) {
                    break;
                }
            }
            if let Ok(Some(st)) = c.driver.try_wait() {
                return Err(format!(
                    "chromedriver exited ({st}): {}",
                    tail(&c.work.join("chromedriver.log"), 5)
                ));
            }
            if t0.elapsed() > Duration::from_secs(30) {
                return Err("chromedriver did not become ready within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut all_args: Vec<String> = BASE_ARGS.iter().map(|s| s.to_string()).collect();
        all_args.push(format!("--user-data-dir={}", profile.display()));
        all_args.extend(args.iter().cloned());
        let mut opts = json!({ "args": all_args });
        if let Some(b) = chromium {
            opts["binary"] = json!(b.display().to_string());
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": opts,
            "timeouts": { "script": script_timeout.as_millis() as u64, "pageLoad": 120_000 },
        }}});
        let v = c.request("POST", "/session", Some(&caps)).map_err(|e| {
            format!(
                "{e} (chromedriver log: {})",
                tail(&c.work.join("chromedriver.log"), 5)
            )
        })?;
        let sid = v["sessionId"]
            .as_str()
            .ok_or_else(|| format!("new session: no sessionId in {v}"))?;
        c.session = Some(sid.to_string());
        c.browser = format!(
            "{} {}",
            v["capabilities"]["browserName"]
                .as_str()
                .unwrap_or("chrome"),
            v["capabilities"]["browserVersion"].as_str().unwrap_or("?")
        );
        Ok(c)
    }

    /// One WebDriver command; the `value` of the answer, or the WebDriver error as text.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let url = format!("{}{}", self.base, path);
        let res = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json; charset=utf-8")
                .send(body.map_or_else(|| "{}".to_string(), |b| b.to_string())),
        };
        let mut res = res.map_err(|e| format!("webdriver {method} {path}: {e}"))?;
        let status = res.status().as_u16();
        let text = res
            .body_mut()
            .with_config()
            .limit(1 << 31)
            .read_to_string()
            .map_err(|e| format!("webdriver {method} {path}: reading the answer: {e}"))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            format!(
                "webdriver {method} {path}: HTTP {status}, not JSON ({e}): {}",
                &text[..text.len().min(300)]
            )
        })?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if status != 200 {
            return Err(format!(
                "webdriver {method} {path}: {}: {}",
                value["error"].as_str().unwrap_or("error"),
                value["message"]
                    .as_str()
                    .unwrap_or(&text[..text.len().min(300)])
            ));
        }
        Ok(value)
    }

    fn session_path(&self, rest: &str) -> Result<String, String> {
        let sid = self.session.as_deref().ok_or("no WebDriver session")?;
        Ok(format!("/session/{sid}{rest}"))
    }

    pub fn navigate(&self, url: &str) -> Result<(), String> {
        self.request(
            "POST",
            &self.session_path("/url")?,
            Some(&json!({ "url": url })),
        )
        .map(|_| ())
    }

    /// Run `script` as an asynchronous WebDriver script with `args`; its callback's value.
    pub fn execute_async(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        let body = json!({ "script": script, "args": args });
        self.request("POST", &self.session_path("/execute/async")?, Some(&body))
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        if let Ok(p) = self.session_path("") {
            // Ends the browser; chromedriver would also end it on exit.
            let _ = self.request("DELETE", &p, None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.work);
    }
}
