//! A headless Chromium driven through chromedriver (Debian's `chromium` and `chromium-driver`,
//! installed by `make browser`) with the `fantoccini` WebDriver client, for the portal's tests:
//! the browser's own network log (chromedriver's performance log), axe-core injected into the
//! page, keyboard input, and screenshots when `PORTAL_SCREENSHOTS` names a folder.
//!
//! `PORTAL_BROWSER=firefox` runs the same tests in Debian's `firefox-esr` through a
//! `geckodriver` on the PATH (not installed by make: a manual check). Firefox has no
//! performance log: the network log is then the page's Resource Timing entries, and console
//! errors are not read.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::util::{free_port, http_client, workspace_root};

/// Browsers running at once in one test binary: each is a few processes, and the timing a test
/// measures (first screen under a second) should not be the machine's contention.
static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(3);

/// How long a wait for the page gives up after.
pub const WAIT: Duration = Duration::from_secs(15);

/// One Chromium with its own profile and chromedriver. Stops both when dropped.
pub struct Browser {
    pub client: Client,
    firefox: bool,
    driver: Child,
    driver_url: String,
    session: String,
    _profile: tempfile::TempDir,
    _slot: tokio::sync::SemaphorePermit<'static>,
}

fn find_binary(names: &[&str]) -> Result<PathBuf> {
    for name in names {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
            let path = PathBuf::from(dir).join(name);
            if path.exists() {
                return Ok(path);
            }
        }
    }
    bail!("{names:?} not found: run `make browser` (Debian's chromium and chromium-driver)")
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium (1280×900) through it.
    pub async fn start() -> Result<Browser> {
        let slot = SLOTS.acquire().await?;
        let firefox = std::env::var("PORTAL_BROWSER").is_ok_and(|b| b == "firefox");
        let (binary, driver_bin) = match firefox {
            true => (
                find_binary(&["firefox-esr", "firefox"])?,
                which("geckodriver")?,
            ),
            false => (find_binary(&["chromium"])?, find_binary(&["chromedriver"])?),
        };
        let port = free_port()?;
        let mut command = Command::new(driver_bin);
        command
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            // Its own process group, so that Chromium goes with it (see Drop).
            .process_group(0);
        let driver = command.spawn().context("starting chromedriver")?;
        let driver_url = format!("http://127.0.0.1:{port}");
        wait_ready(&driver_url).await?;
        let profile = tempfile::tempdir()?;
        let chrome = json!({
            "browserName": "chrome",
            "goog:loggingPrefs": {"performance": "ALL", "browser": "ALL"},
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--disable-extensions",
                         "--lang=en-US", format!("--user-data-dir={}", profile.path().display())],
                "perfLoggingPrefs": {"enableNetwork": true, "enablePage": false}
            }
        });
        let gecko = json!({
            "browserName": "firefox",
            "moz:firefoxOptions": {"binary": binary, "args": ["-headless", "--width=1280", "--height=900"]}
        });
        let caps = if firefox { gecko } else { chrome };
        let Value::Object(caps) = caps else {
            bail!("capabilities are an object");
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver_url)
            .await
            .context("starting Chromium through chromedriver")?;
        let session = client
            .session_id()
            .await?
            .context("chromedriver gave no session id")?;
        let browser = Browser {
            client,
            firefox,
            driver,
            driver_url,
            session,
            _profile: profile,
            _slot: slot,
        };
        // Chromium opens its new-tab page first: leave it, and forget what it loaded.
        browser.goto("about:blank").await?;
        browser.requests().await?;
        browser.console_errors().await?;
        Ok(browser)
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("opening {url}"))
    }

    pub async fn url(&self) -> Result<String> {
        Ok(self.client.current_url().await?.to_string())
    }

    /// Waits for an element matching `css`.
    pub async fn find(&self, css: &str) -> Result<Element> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(found) = self.client.find(Locator::Css(css)).await {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no {css:?} within {WAIT:?}; the page says: {}",
                    self.main_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text of the page's main area and alert banner (for failure messages).
    pub async fn main_text(&self) -> String {
        let script = "return document.body ? document.body.innerText : ''";
        match self.client.execute(script, vec![]).await {
            Ok(Value::String(text)) => text,
            other => format!("{other:?}"),
        }
    }

    /// Waits until the text of an element matching `css` contains `wanted`; returns the text.
    pub async fn wait_text(&self, css: &str, wanted: &str) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                last = element.text().await.unwrap_or_default();
                if last.contains(wanted) {
                    return Ok(last);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{css:?} never said {wanted:?} within {WAIT:?}; last: {last:?}; page: {}",
                    self.main_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the first button or link whose text is `label` (trimmed) inside the first
    /// element matching `scope` (CSS), waiting for both.
    pub async fn click_text(&self, scope: &str, label: &str) -> Result<()> {
        let xpath = format!(".//*[self::button or self::a][normalize-space(.)='{label}']");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(within) = self.client.find(Locator::Css(scope)).await {
                if let Ok(element) = within.find(Locator::XPath(&xpath)).await {
                    if element.click().await.is_ok() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "no {label:?} to click in {scope}; page: {}",
                    self.main_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types into the focused element (WebDriver key codes: [`TAB`], [`ENTER`]).
    pub async fn keys(&self, text: &str) -> Result<()> {
        self.client.active_element().await?.send_keys(text).await?;
        Ok(())
    }

    /// A description of the focused element: tag, id, name, value and text.
    pub async fn focused(&self) -> Result<String> {
        let script = "const e = document.activeElement; return e ? [e.tagName.toLowerCase(), e.id, \
                      e.getAttribute('name') || '', e.value || '', (e.innerText || '').trim()].join('|') : ''";
        Ok(self
            .client
            .execute(script, vec![])
            .await?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Every URL the page requested since the last call, from chromedriver's performance log.
    pub async fn requests(&self) -> Result<Vec<String>> {
        if self.firefox {
            let script = "return performance.getEntriesByType('resource').map(e => e.name)";
            let names = self.client.execute(script, vec![]).await?;
            let names = names.as_array().cloned().unwrap_or_default();
            return Ok(names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect());
        }
        let url = format!("{}/session/{}/se/log", self.driver_url, self.session);
        let answer: Value = http_client()
            .post(url)
            .json(&json!({"type": "performance"}))
            .send()
            .await?
            .json()
            .await?;
        let entries = answer["value"].as_array().cloned().unwrap_or_default();
        let mut urls = Vec::new();
        for entry in entries {
            let Some(message) = entry["message"].as_str() else {
                continue;
            };
            let message: Value = serde_json::from_str(message).unwrap_or_default();
            if message["message"]["method"] == "Network.requestWillBeSent" {
                if let Some(url) = message["message"]["params"]["request"]["url"].as_str() {
                    urls.push(url.to_string());
                }
            }
        }
        Ok(urls)
    }

    /// The browser console's errors since the last call (CSP violations show up there).
    pub async fn console_errors(&self) -> Result<Vec<String>> {
        if self.firefox {
            return Ok(Vec::new());
        }
        let url = format!("{}/session/{}/se/log", self.driver_url, self.session);
        let answer: Value = http_client()
            .post(url)
            .json(&json!({"type": "browser"}))
            .send()
            .await?
            .json()
            .await?;
        let entries = answer["value"].as_array().cloned().unwrap_or_default();
        Ok(entries
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .filter_map(|e| e["message"].as_str().map(str::to_string))
            .collect())
    }

    /// axe-core's violations on the page as it is now (`make browser` installs axe-core).
    pub async fn axe(&self) -> Result<Vec<Value>> {
        let path = workspace_root().join("devtools/browser/node_modules/axe-core/axe.min.js");
        let source = std::fs::read_to_string(&path)
            .with_context(|| format!("{} missing: run `make browser`", path.display()))?;
        self.client.execute(&source, vec![]).await?;
        let run = "const done = arguments[arguments.length - 1]; \
                   axe.run(document, {resultTypes: ['violations']}) \
                   .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help, \
                   nodes: v.nodes.map(n => n.html).slice(0, 3)})))) \
                   .catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e)}]));";
        let violations = self.client.execute_async(run, vec![]).await?;
        Ok(violations.as_array().cloned().unwrap_or_default())
    }

    /// Saves a PNG of the window as `<PORTAL_SCREENSHOTS>/portal-<name>.png`, when set.
    pub async fn screenshot(&self, name: &str) -> Result<()> {
        let Ok(dir) = std::env::var("PORTAL_SCREENSHOTS") else {
            return Ok(());
        };
        let dir = workspace_root().join(dir);
        std::fs::create_dir_all(&dir)?;
        let png = self.client.screenshot().await?;
        std::fs::write(dir.join(format!("portal-{name}.png")), png)?;
        Ok(())
    }

    /// Ends the WebDriver session (Chromium exits) and chromedriver.
    pub async fn close(mut self) -> Result<()> {
        let closed = self.client.clone().close().await;
        let _ = self.driver.kill().await;
        closed.context("closing the browser")
    }
}

impl Drop for Browser {
    /// A test that failed half-way leaves no Chromium behind: its whole process group goes.
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// WebDriver key code for Tab.
pub const TAB: &str = "\u{e004}";
/// WebDriver key code for Enter.
pub const ENTER: &str = "\u{e007}";
/// WebDriver key code for Space.
pub const SPACE: &str = " ";

/// A program on the PATH.
fn which(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
        .with_context(|| format!("{name} is not on the PATH"))
}

async fn wait_ready(driver_url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = http_client();
    loop {
        let status = client.get(format!("{driver_url}/status")).send().await;
        if let Ok(response) = status {
            let body: Value = response.json().await.unwrap_or_default();
            if body["value"]["ready"] == true {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("chromedriver did not get ready on {driver_url}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
