//! The `browser` backend: the corpus run inside headless Chromium on the browser's WebGPU
//! (Dawn; WGSL compiled by Tint, not naga; SwiftShader on a CPU-only machine).
//!
//! The backend serves the wasm package (`web/pkg`, built by `web/build.sh`; or
//! `EQUIKERN_WASM_PKG`) and a small harness page on 127.0.0.1 at an ephemeral port, starts
//! chromedriver and one headless Chromium session (fresh profile, `--enable-unsafe-webgpu`),
//! and performs every backend call as one WebDriver `execute/async` round trip: the request
//! carries the bound product's handle and the input tensors, the answer the output tensors
//! (base64 of little-endian f32, exact both ways, NaN kept). The page binds each spec once per
//! case (`bind`), with outputs NaN-poisoned before every run and, for split cases, a device
//! whose dispatches are clamped; handles are released with the next request.
//!
//! Missing Chromium, chromedriver or package, or a browser without a WebGPU adapter, make the
//! backend unavailable with the reason (a skip; `EQUIKERN_CONFORMANCE_REQUIRE_BROWSER=1` turns
//! it into an error in the CLI and the tests).

mod server;
mod webdriver;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use equikern_core::oracle::{DoubleGrads, Grads};
use equikern_core::TensorProduct;
use serde_json::{json, Value};

use super::{backend_err, BoundOp, ConformanceBackend};
use crate::{Error, Prec, Result};

use server::HarnessServer;
use webdriver::Chrome;

const NAME: &str = "browser";

/// Where the browser and the package come from. [`BrowserOptions::from_env`] reads
/// `EQUIKERN_CHROMIUM`, `EQUIKERN_CHROMEDRIVER` and `EQUIKERN_WASM_PKG`.
#[derive(Clone, Debug)]
pub struct BrowserOptions {
    /// Launch Chromium with `--enable-unsafe-webgpu` (without it, Linux Chromium has no
    /// adapter: the negative control).
    pub webgpu: bool,
    /// The browser binary; `None`: chromedriver's default (after checking one is on PATH).
    pub chromium: Option<PathBuf>,
    /// chromedriver; `None`: from PATH.
    pub chromedriver: Option<PathBuf>,
    /// The wasm-bindgen `--target web` output; `None`: `web/pkg` of this repository.
    pub package: Option<PathBuf>,
    /// The longest a single call (compile + run in the browser) may take.
    pub call_timeout: Duration,
}

impl Default for BrowserOptions {
    fn default() -> Self {
        BrowserOptions {
            webgpu: true,
            chromium: None,
            chromedriver: None,
            package: None,
            call_timeout: Duration::from_secs(600),
        }
    }
}

impl BrowserOptions {
    pub fn from_env() -> BrowserOptions {
        let path = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        BrowserOptions {
            chromium: path("EQUIKERN_CHROMIUM"),
            chromedriver: path("EQUIKERN_CHROMEDRIVER"),
            package: path("EQUIKERN_WASM_PKG"),
            ..BrowserOptions::default()
        }
    }
}

/// `web/pkg` of the repository this crate was built from.
pub fn default_package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/pkg")
}

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Newest modification time of the `.rs` files under `dir`.
fn newest_rs(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest_rs(&p)
        } else if p.extension().is_some_and(|x| x == "rs") {
            mtime(&p)
        } else {
            None
        };
        newest = newest.max(t);
    }
    newest
}

/// A note when the default package is older than the sources it is built from.
fn staleness(pkg: &Path, wasm: &Path) -> String {
    if pkg != default_package_dir() {
        return String::new();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dirs = [
        "src",
        "crates/equikern-core/src",
        "crates/equikern-plan/src",
        "crates/equikern-emit/src",
        "crates/equikern-wgpu/src",
        "crates/equikern-wasm/src",
    ];
    let newest = dirs.iter().filter_map(|d| newest_rs(&root.join(d))).max();
    match (mtime(wasm), newest) {
        (Some(w), Some(s)) if s > w => {
            "; WARNING: the package is older than the Rust sources (rebuild: web/build.sh)".into()
        }
        _ => String::new(),
    }
}

fn unavailable(why: impl Into<String>) -> Error {
    Error::Unavailable {
        backend: NAME.into(),
        why: why.into(),
    }
}

/// The driver side of one harness request: waits for the harness module, then runs
/// `harness.call(request)`; answers `{ok: …}` or `{err: message}`.
const CALL_SCRIPT: &str = r#"
const req = arguments[0], done = arguments[arguments.length - 1], t0 = Date.now();
(function wait() {
  if (window.__equikernLoadError) return done({ err: "harness failed to load: " + window.__equikernLoadError });
  if (!window.__equikern) {
    if (Date.now() - t0 > 60000) return done({ err: "harness page did not load within 60 s" });
    return setTimeout(wait, 20);
  }
  window.__equikern.call(req).then(
    (ok) => done({ ok }),
    (e) => done({ err: String(e && e.message ? e.message : e) }));
})();
"#;

struct Live {
    chrome: Chrome,
    /// Handles of dropped bound products, released with the next request.
    free: Vec<u64>,
}

/// Headless Chromium's WebGPU, through the wasm package.
pub struct BrowserBackend {
    // Field order: the browser goes before the server that feeds it.
    live: Mutex<Live>,
    _server: HarnessServer,
    describe: String,
    adapter: String,
}

impl BrowserBackend {
    /// Open with [`BrowserOptions::from_env`].
    pub fn open() -> Result<BrowserBackend> {
        Self::open_with(&BrowserOptions::from_env())
    }

    pub fn open_with(o: &BrowserOptions) -> Result<BrowserBackend> {
        let pkg = o.package.clone().unwrap_or_else(default_package_dir);
        let (js, wasm) = (
            pkg.join("equikern_wasm.js"),
            pkg.join("equikern_wasm_bg.wasm"),
        );
        if !js.is_file() || !wasm.is_file() {
            return Err(unavailable(format!(
                "no wasm package at {} (build it with web/build.sh, or set EQUIKERN_WASM_PKG)",
                pkg.display()
            )));
        }
        let chromedriver = match &o.chromedriver {
            Some(p) => p.clone(),
            None => which(&["chromedriver"]).ok_or_else(|| {
                unavailable("chromedriver not found on PATH (Debian: apt-get install chromium-driver; or set EQUIKERN_CHROMEDRIVER)")
            })?,
        };
        if o.chromium.is_none()
            && which(&[
                "chromium",
                "chromium-browser",
                "google-chrome",
                "google-chrome-stable",
            ])
            .is_none()
        {
            return Err(unavailable(
                "Chromium not found on PATH (Debian: apt-get install chromium; or set EQUIKERN_CHROMIUM)",
            ));
        }
        let server = HarnessServer::start(pkg.clone()).map_err(unavailable)?;
        let mut args = Vec::new();
        if o.webgpu {
            args.push("--enable-unsafe-webgpu".to_string());
        }
        let chrome = Chrome::launch(&chromedriver, o.chromium.as_deref(), &args, o.call_timeout)
            .map_err(|e| unavailable(format!("starting headless Chromium: {e}")))?;
        chrome
            .navigate(&server.url)
            .map_err(|e| unavailable(format!("loading the harness page: {e}")))?;
        let b = BrowserBackend {
            live: Mutex::new(Live {
                chrome,
                free: Vec::new(),
            }),
            _server: server,
            describe: String::new(),
            adapter: String::new(),
        };
        let info = b
            .call(json!({ "op": "open" }))
            .map_err(|e| unavailable(format!("WebGPU in the browser: {e}")))?;
        let i = &info["info"];
        let adapter = i["adapter"].as_str().unwrap_or("?").to_string();
        let caps = &i["capabilities"];
        let browser = b.lock().chrome.browser.clone();
        let driver = i["driver"].as_str().unwrap_or("").trim();
        let driver = if driver.is_empty() {
            String::new()
        } else {
            format!("; driver {driver}")
        };
        let shown = pkg.canonicalize().unwrap_or_else(|_| pkg.clone());
        let describe = format!(
            "{adapter} — {browser}, headless via chromedriver (WGSL compiled by the browser: \
             Tint in Dawn){driver}; capabilities {}; wasm package {}{}",
            if caps.is_null() {
                "?".into()
            } else {
                caps.to_string()
            },
            shown.display(),
            staleness(&pkg, &wasm)
        );
        Ok(BrowserBackend {
            describe,
            adapter,
            ..b
        })
    }

    /// The browser's WebGPU adapter as it describes itself (vendor, architecture, device,
    /// description), e.g. `google swiftshader (BrowserWebGpu, Cpu)`.
    pub fn adapter(&self) -> &str {
        &self.adapter
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One harness request (pending releases go with it); the page's answer.
    fn call(&self, mut req: Value) -> std::result::Result<Value, String> {
        let mut live = self.lock();
        if !live.free.is_empty() {
            req["free"] = json!(std::mem::take(&mut live.free));
        }
        let v = live.chrome.execute_async(CALL_SCRIPT, vec![req])?;
        if let Some(e) = v.get("err") {
            return Err(e.as_str().map_or_else(|| e.to_string(), str::to_string));
        }
        v.get("ok")
            .cloned()
            .ok_or_else(|| format!("harness answered neither ok nor err: {v}"))
    }
}

impl ConformanceBackend for BrowserBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn precisions(&self) -> Vec<Prec> {
        vec![Prec::F32]
    }

    fn deterministic(&self) -> bool {
        true
    }

    fn splits(&self, _prec: Prec) -> bool {
        true
    }

    fn bind(
        &self,
        tp: &Arc<TensorProduct>,
        prec: Prec,
        max_samples_per_dispatch: Option<u32>,
    ) -> Result<Box<dyn BoundOp + '_>> {
        if prec != Prec::F32 {
            return Err(backend_err(NAME, "WebGPU in the browser runs f32 only"));
        }
        let v = self
            .call(json!({
                "op": "bind",
                "spec": tp.spec.to_json(),
                "split": max_samples_per_dispatch,
            }))
            .map_err(|e| backend_err(NAME, e))?;
        let id = v["id"]
            .as_u64()
            .ok_or_else(|| backend_err(NAME, format!("bind: no handle in {v}")))?;
        Ok(Box::new(BrowserOp { b: self, id }))
    }
}

struct BrowserOp<'a> {
    b: &'a BrowserBackend,
    id: u64,
}

impl Drop for BrowserOp<'_> {
    fn drop(&mut self) {
        self.b.lock().free.push(self.id);
    }
}

impl BrowserOp<'_> {
    /// One pass in the browser: `args` in, `n_out` tensors out.
    fn run(&self, op: &str, batch: usize, args: &[&[f64]], n_out: usize) -> Result<Vec<Vec<f64>>> {
        let enc: Vec<String> = args.iter().map(|a| encode_f32(a)).collect();
        let v = self
            .b
            .call(json!({ "op": op, "id": self.id, "batch": batch, "args": enc }))
            .map_err(|e| backend_err(NAME, e))?;
        let out = v["out"]
            .as_array()
            .filter(|o| o.len() == n_out)
            .ok_or_else(|| backend_err(NAME, format!("{op}: expected {n_out} outputs")))?;
        out.iter()
            .map(|o| {
                o.as_str()
                    .ok_or_else(|| "output is not a string".to_string())
                    .and_then(decode_f32)
                    .map_err(|e| backend_err(NAME, format!("{op}: {e}")))
            })
            .collect()
    }
}

impl BoundOp for BrowserOp<'_> {
    fn forward(&self, batch: usize, x: &[f64], y: &[f64], w: &[f64]) -> Result<Vec<f64>> {
        let mut o = self.run("forward", batch, &[x, y, w], 1)?;
        Ok(o.remove(0))
    }

    fn backward(
        &self,
        batch: usize,
        x: &[f64],
        y: &[f64],
        w: &[f64],
        gz: &[f64],
    ) -> Result<Grads<f64>> {
        let mut o = self.run("backward", batch, &[x, y, w, gz], 3)?.into_iter();
        let mut next = || o.next().unwrap_or_default();
        Ok(Grads {
            gx: next(),
            gy: next(),
            gw: next(),
        })
    }

    fn double_backward(&self, batch: usize, a: [&[f64]; 7]) -> Result<DoubleGrads<f64>> {
        let mut o = self.run("double_backward", batch, &a, 4)?.into_iter();
        let mut next = || o.next().unwrap_or_default();
        Ok(DoubleGrads {
            dx: next(),
            dy: next(),
            dw: next(),
            dgz: next(),
        })
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (with padding) of the little-endian f32 bytes of `v` (rounded to f32: the
/// suite's inputs are f32-representable, so nothing changes).
fn encode_f32(v: &[f64]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect();
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                s.push(B64[(n >> (18 - 6 * k)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Inverse of [`encode_f32`], widened to f64 exactly.
fn decode_f32(s: &str) -> std::result::Result<Vec<f64>, String> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return Err(format!(
            "base64 of length {} (not a multiple of 4)",
            s.len()
        ));
    }
    let val = |c: u8| -> std::result::Result<u32, String> {
        B64.iter()
            .position(|&b| b == c)
            .map(|p| p as u32)
            .ok_or_else(|| format!("invalid base64 byte {c:#x}"))
    };
    let mut bytes = Vec::with_capacity(s.len() / 4 * 3);
    for (i, q) in s.chunks(4).enumerate() {
        let last = i + 1 == s.len() / 4;
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return Err("misplaced base64 padding".into());
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = n << 6 | val(c)?;
        }
        n <<= 6 * pad as u32;
        bytes.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8][..3 - pad]);
    }
    if !bytes.len().is_multiple_of(4) {
        return Err(format!("{} bytes are not whole f32s", bytes.len()));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_f32_round_trip_is_exact() {
        for n in 0..7 {
            let v: Vec<f64> = (0..n)
                .map(|i| ((i as f32 * 0.37 - 1.1).sin() * 3.0) as f64)
                .chain([f32::MIN_POSITIVE as f64, -0.0, f32::MAX as f64])
                .collect();
            let d = decode_f32(&encode_f32(&v)).unwrap();
            assert_eq!(d.len(), v.len());
            assert!(d.iter().zip(&v).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
        // NaN survives (a poisoned output must not turn into a number).
        assert!(decode_f32(&encode_f32(&[f64::NAN])).unwrap()[0].is_nan());
        // Known vector: 1.0f32 = 00 00 80 3f.
        assert_eq!(encode_f32(&[1.0]), "AACAPw==");
        assert_eq!(decode_f32("AACAPw==").unwrap(), vec![1.0]);
        for bad in ["AAC", "AA=A", "AACA\u{0}w==", "AAA=", "AA==AACA"] {
            assert!(decode_f32(bad).is_err(), "{bad:?} must be rejected");
        }
    }
}
