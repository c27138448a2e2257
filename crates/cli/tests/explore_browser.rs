//! The explorer end to end in a real browser: headless Chromium, driven through chromedriver
//! (WebDriver), loads the page served by the real `gemma-scope explore` binary, analyses a text, opens
//! a latent, labels it, reloads and finds the label kept, steers, and sees a bad input reported.
//! Screenshots land in `CARGO_TARGET_TMPDIR/explorer-screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them), hence ignored by a
//! plain `cargo test`; run it with
//! `cargo test -p gemma-scope --test explore_browser -- --ignored`.

use test_support as common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Fixture;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `{binary}` ({e}): install Debian's chromium and chromium-driver"
                )
            });
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the JavaScript expression `condition` is true.
async fn wait_until(client: &Client, condition: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = client
            .execute(&format!("return Boolean({condition});"), vec![])
            .await
            .unwrap();
        if value.as_bool() == Some(true) {
            return;
        }
        if Instant::now() > deadline {
            let message = client
                .execute(
                    "return document.getElementById('message').textContent;",
                    vec![],
                )
                .await
                .unwrap();
            panic!("timed out waiting for {what} ({condition}); page message: {message}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("explorer-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let png = client.screenshot().await.unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    std::fs::write(&path, png).unwrap();
    path
}

#[test]
#[ignore = "needs chromium and chromium-driver; .ci/run runs it with --ignored"]
fn a_researcher_analyses_labels_reloads_and_steers_in_chromium() {
    let fixture = Fixture::new(env!("CARGO_BIN_EXE_gemma-scope"));
    let server = fixture.serve();
    let driver = Driver::start();
    let latent: usize = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut capabilities = serde_json::Map::new();
            capabilities.insert(
                "goog:chromeOptions".into(),
                serde_json::json!({
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"],
                }),
            );
            let client = ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&driver.url)
                .await
                .expect("a WebDriver session with headless Chromium");
            client.goto(&format!("{}/", server.url)).await.unwrap();
            wait_until(&client, "document.body.dataset.ready === 'true'", "the page to start").await;

            // Your text: tokens appear, highlighted by their strongest latent.
            let input = client.find(Locator::Id("text-input")).await.unwrap();
            input.clear().await.unwrap();
            input.send_keys("the cat sat on the mat").await.unwrap();
            client.find(Locator::Id("analyse-button")).await.unwrap().click().await.unwrap();
            wait_until(&client, "document.querySelectorAll('#tokens .token').length > 0", "token highlights").await;
            let highlighted = client
                .execute("return [...document.querySelectorAll('#tokens .token')].filter(t => t.style.background).length;", vec![])
                .await
                .unwrap();
            assert!(highlighted.as_u64().unwrap() > 0, "no token is highlighted");
            client.find(Locator::Css("#tokens .token[style]")).await.unwrap().click().await.unwrap();
            wait_until(&client, "document.querySelector('#token-detail .latent-link')", "the token's latents").await;
            screenshot(&client, "text-view.png").await;

            // Open a latent: its dashboard.
            let link = client.find(Locator::Css("#token-detail .latent-link")).await.unwrap();
            let latent = link.attr("data-latent").await.unwrap().unwrap();
            link.click().await.unwrap();
            wait_until(&client, "!document.getElementById('dashboard').hidden", "the dashboard").await;
            assert_eq!(text_of(&client, "#latent-title").await, format!("tiny · latent {latent}"));
            wait_until(&client, "document.querySelectorAll('#examples li .focus').length > 0", "top examples").await;
            assert_eq!(text_of(&client, "#label-source").await, "automatic");

            // Label it, reload, find the label kept.
            let label = client.find(Locator::Id("label-input")).await.unwrap();
            label.send_keys("sits on mats").await.unwrap();
            client.find(Locator::Id("label-save")).await.unwrap().click().await.unwrap();
            wait_until(&client, "document.getElementById('label-source').textContent === 'manual'", "the saved label").await;
            screenshot(&client, "dashboard.png").await;
            client.refresh().await.unwrap();
            wait_until(&client, "document.body.dataset.ready === 'true'", "the reloaded page").await;
            wait_until(&client, "!document.getElementById('dashboard').hidden", "the dashboard after reload").await;
            let kept = client.find(Locator::Id("label-input")).await.unwrap().prop("value").await.unwrap();
            assert_eq!(kept.as_deref(), Some("sits on mats"));
            assert_eq!(text_of(&client, "#label-source").await, "manual");
            // Search by label finds it.
            let search = client.find(Locator::Id("search-q")).await.unwrap();
            search.send_keys("sits on").await.unwrap();
            client.find(Locator::Id("search-button")).await.unwrap().click().await.unwrap();
            wait_until(
                &client,
                "document.getElementById('search-total').textContent === '1 latents match'",
                "the label search",
            )
            .await;
            assert!(text_of(&client, "#search-results").await.contains("sits on mats"));

            // Steer: two different continuations side by side.
            let strength = client.find(Locator::Id("steer-strength")).await.unwrap();
            strength.clear().await.unwrap();
            strength.send_keys("200").await.unwrap();
            let prompt = client.find(Locator::Id("steer-prompt")).await.unwrap();
            prompt.clear().await.unwrap();
            prompt.send_keys("the cat").await.unwrap();
            client.find(Locator::Id("steer-button")).await.unwrap().click().await.unwrap();
            wait_until(
                &client,
                "(t => t.length > 1 && t !== '…')(document.getElementById('steer-steered').textContent)",
                "the steered continuation",
            )
            .await;
            let unsteered = text_of(&client, "#steer-unsteered").await;
            let steered = text_of(&client, "#steer-steered").await;
            assert!(unsteered.starts_with("the cat") && steered.starts_with("the cat"));
            assert_ne!(unsteered, steered);
            screenshot(&client, "steering.png").await;

            // Bad input: a visible message, no crash.
            let input = client.find(Locator::Id("text-input")).await.unwrap();
            input.clear().await.unwrap();
            client.find(Locator::Id("analyse-button")).await.unwrap().click().await.unwrap();
            wait_until(&client, "!document.getElementById('message').hidden", "the error message").await;
            assert!(text_of(&client, "#message").await.contains("empty"));

            client.close().await.unwrap();
            latent.parse().unwrap()
        });
    let saved = analysis::ManualLabels::load(&fixture.labels).unwrap();
    assert_eq!(saved.get("tiny", latent), Some("sits on mats"));
}
