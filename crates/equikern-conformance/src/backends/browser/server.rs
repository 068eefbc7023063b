//! The static server for the harness: `/` (the harness page), `/harness.js`, and the files of
//! the wasm package under `/pkg/`, on 127.0.0.1 at an ephemeral port (localhost is a secure
//! context, so the page gets `navigator.gpu`). Nothing else is served.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Response, Server};

const HARNESS_HTML: &str = include_str!("harness.html");
const HARNESS_JS: &str = include_str!("harness.js");

pub struct HarnessServer {
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
    pub url: String,
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("ts") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The body for `path`, or `None` (404). Package files must be plain names inside the package
/// directory: no subdirectories, no `..`.
fn lookup(pkg: &Path, path: &str) -> Option<(Vec<u8>, &'static str)> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    match path {
        "/" | "/index.html" => Some((HARNESS_HTML.as_bytes().to_vec(), content_type(".html"))),
        "/harness.js" => Some((HARNESS_JS.as_bytes().to_vec(), content_type(".js"))),
        _ => {
            let name = path.strip_prefix("/pkg/")?;
            let plain = !name.is_empty()
                && !name.starts_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !plain {
                return None;
            }
            let body = std::fs::read(pkg.join(name)).ok()?;
            Some((body, content_type(name)))
        }
    }
}

impl HarnessServer {
    pub fn start(pkg: PathBuf) -> Result<HarnessServer, String> {
        let server = Arc::new(
            Server::http("127.0.0.1:0").map_err(|e| format!("harness server on 127.0.0.1: {e}"))?,
        );
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .ok_or("harness server: no TCP address")?;
        let s = server.clone();
        let thread = std::thread::Builder::new()
            .name("equikern-harness-http".into())
            .spawn(move || {
                for req in s.incoming_requests() {
                    let found = lookup(&pkg, req.url());
                    // A client that went away is not our problem: ignore write errors.
                    let _ = match found {
                        Some((body, ct)) => {
                            let mut r = Response::from_data(body);
                            if let Ok(h) = Header::from_bytes("Content-Type", ct) {
                                r.add_header(h);
                            }
                            if let Ok(h) = Header::from_bytes("Cache-Control", "no-store") {
                                r.add_header(h);
                            }
                            req.respond(r)
                        }
                        None => {
                            req.respond(Response::from_string("not found").with_status_code(404))
                        }
                    };
                }
            })
            .map_err(|e| format!("harness server thread: {e}"))?;
        Ok(HarnessServer {
            server,
            thread: Some(thread),
            url: format!("http://127.0.0.1:{port}/"),
        })
    }
}

impl Drop for HarnessServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_only_the_harness_and_plain_package_files() {
        let dir =
            std::env::temp_dir().join(format!("equikern-harness-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a_bg.wasm"), b"\0asm").unwrap();
        assert_eq!(
            lookup(&dir, "/pkg/a_bg.wasm").unwrap().1,
            "application/wasm"
        );
        assert!(lookup(&dir, "/").unwrap().0.starts_with(b"<!doctype html>"));
        assert!(lookup(&dir, "/harness.js?x=1").is_some());
        for bad in [
            "/pkg/../Cargo.toml",
            "/pkg/",
            "/pkg/.hidden",
            "/pkg/a/b",
            "/etc/passwd",
            "/pkg/missing.js",
        ] {
            assert!(lookup(&dir, bad).is_none(), "{bad} must be 404");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
