//! The web dashboard, driven end to end in a real headless Chromium through chromedriver
//! (WebDriver, via `fantoccini`): the real server in process, a real local receiver, and a
//! person's path through the page, from sign-in to deleting a webhook.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`,
//! `/usr/bin/chromedriver`); without them the test prints a notice and passes without
//! running. Screenshots of the main views go to `target/screenshots/`.

#[path = "common/backend.rs"]
#[allow(dead_code)]
mod backend;
#[path = "it/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::panic::AssertUnwindSafe;

use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use helpers::{
    assert_secret_format, full_exploit, json_body, spawn_app_with, webhook, TestApp, TestReceiver,
    WEBHOOKS,
};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long any one thing may take to show up on the page.
const WAIT: Duration = Duration::from_secs(20);

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let status = format!("{}/status", driver.url);
        let start = Instant::now();
        loop {
            if let Ok(resp) = reqwest::get(&status).await {
                if resp.status().is_success() {
                    break;
                }
            }
            assert!(start.elapsed() < WAIT, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn open_browser(driver: &Driver, profile: &Path) -> Client {
    let args = [
        "--headless=new".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--no-first-run".to_owned(),
        "--window-size=1360,1000".to_owned(),
        format!("--user-data-dir={}", profile.display()),
    ];
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
    });
    let caps = match caps {
        Value::Object(map) => map,
        _ => unreachable!(),
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("open a Chromium session through chromedriver")
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("create target/screenshots");
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("take a screenshot");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).expect("save a screenshot");
}

/// The element matching `css` once it is displayed.
async fn shown(c: &Client, css: &str) -> fantoccini::elements::Element {
    let start = Instant::now();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if e.is_displayed().await.unwrap_or(false) {
                return e;
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {css} to show"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of `css` once it contains `needle`.
async fn text_containing(c: &Client, css: &str, needle: &str) -> String {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            last = e.text().await.unwrap_or_default();
            if last.contains(needle) {
                return last;
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {css} to contain {needle:?}; it shows {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(c: &Client, css: &str) {
    shown(c, css)
        .await
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn fill(c: &Client, css: &str, value: &str) {
    let input = shown(c, css).await;
    input.clear().await.expect("clear an input");
    if !value.is_empty() {
        input.send_keys(value).await.expect("type into an input");
    }
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.expect("run a script")
}

async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.map_or(0, |v| v.len())
}

/// Polls `check` (clicking `refresh`, if any, between tries) until it holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A receiver that answers every request with 410 Gone; returns its URL.
async fn start_gone_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(|| async { axum::http::StatusCode::GONE }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://127.0.0.1:{port}/hook")
}

async fn api_webhook(app: &TestApp, key: &str, id: i64) -> Value {
    app.get_webhook_ok(key, id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_owner_manages_alerts_from_the_dashboard_in_a_real_browser() {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        if !Path::new(tool).exists() {
            eprintln!(
                "notice: skipping the browser test: {tool} is missing \
                 (apt-get install chromium chromium-driver)"
            );
            return;
        }
    }
    let receiver = TestReceiver::start().await;
    let app = spawn_app_with(|cfg| {
        cfg.allow_private_networks = vec!["127.0.0.0/8".to_owned()];
    })
    .await;
    let (_, key) = app.create_user("team").await;

    let driver = Driver::start().await;
    let profile = tempfile::tempdir().expect("a browser profile directory");
    let c = open_browser(&driver, profile.path()).await;
    let outcome = AssertUnwindSafe(drive(&c, &app, &key, &receiver))
        .catch_unwind()
        .await;
    // Close the browser whatever happened, then report the failure, if any.
    let _ = c.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn drive(c: &Client, app: &TestApp, key: &str, receiver: &TestReceiver) {
    // Sign in: a wrong key is refused in words; the right one opens the (empty) list.
    c.goto(&app.url("/")).await.expect("open the dashboard");
    fill(c, "#api-key", "not-a-key").await;
    click(c, "#signin-submit").await;
    text_containing(c, "#signin-error", "not accepted").await;
    screenshot(c, "00-sign-in-refused").await;
    fill(c, "#api-key", key).await;
    click(c, "#signin-submit").await;
    shown(c, "#webhook-empty").await;
    let stored = js(
        c,
        "return [sessionStorage.getItem('kamiyo.apiKey'), localStorage.length, location.href]",
    )
    .await;
    // Every Content-Security-Policy violation from here on is recorded (none expected).
    js(
        c,
        "window.cspViolations = []; document.addEventListener('securitypolicyviolation', \
         (e) => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI))",
    )
    .await;
    assert_eq!(stored[0], key, "the key is kept in session storage");
    assert_eq!(stored[1], 0, "nothing goes to local storage");
    assert!(
        !stored[2].as_str().unwrap().contains(key),
        "the key never appears in the URL"
    );

    // Create: a bad URL is explained next to the URL field; then the secret is shown once.
    click(c, "#new-webhook").await;
    fill(c, "#f-name", "Production alerts").await;
    fill(c, "#f-url", "ftp://example.com/hook").await;
    fill(c, "#f-min", "1000").await;
    fill(c, "#f-chains", "ethereum, arbitrum").await;
    fill(c, "#f-categories", "flash_loan").await;
    click(c, "#form-submit").await;
    let url_error = text_containing(c, "[data-error-for=url]", "url").await;
    assert!(url_error.starts_with("url"), "{url_error}");
    fill(c, "#f-url", &receiver.url).await;
    click(c, "#form-submit").await;
    let secret = shown(c, "#secret-value").await.text().await.unwrap();
    assert_secret_format(&secret);
    text_containing(c, "#view-secret .warning", "will not be shown again").await;
    click(c, "#secret-copy").await;
    text_containing(c, "#secret-copy-status", "op").await;
    screenshot(c, "01-secret-shown-once").await;
    click(c, "#secret-done").await;

    // The webhook's page.
    text_containing(c, "#d-name", "Production alerts").await;
    let hook_id: i64 = shown(c, "#d-id")
        .await
        .text()
        .await
        .unwrap()
        .parse()
        .unwrap();
    let hook = api_webhook(app, key, hook_id).await;
    assert_eq!(hook["chains"], json!(["ethereum", "arbitrum"]));
    assert_eq!(hook["min_amount_usd"], 1000.0);

    // A test event reaches the receiver and the result is shown.
    click(c, "#d-test").await;
    let result = text_containing(c, "#test-result", "HTTP 200").await;
    assert!(result.contains("Test delivered"), "{result}");
    assert_eq!(receiver.count(), 1, "the receiver got the test event");

    // An exploit arrives; its delivery shows up in the log and succeeds.
    app.ingest_new(&full_exploit()).await;
    eventually(
        "the exploit's delivery to succeed in the log",
        || async move {
            click(c, "#log-refresh").await;
            let rows = c
                .find_all(Locator::Css("#delivery-rows tr[data-delivery-id]"))
                .await
                .unwrap_or_default();
            for row in rows {
                let text = row.text().await.unwrap_or_default();
                if text.contains("exploit.detected") && text.contains("succeeded") {
                    return true;
                }
            }
            false
        },
    )
    .await;
    assert_eq!(receiver.count(), 2);
    let delivered = receiver.requests()[1].clone();
    let delivery_id = delivered.headers["x-kamiyo-delivery"]
        .to_str()
        .unwrap()
        .to_owned();

    // Its attempts, the headers sent and the exact payload.
    click(c, &format!("tr[data-delivery-id='{delivery_id}']")).await;
    let detail = &format!("#delivery-detail-{delivery_id}");
    shown(c, &format!("{detail} .attempts tr.attempt")).await;
    let payload = shown(c, &format!("{detail} pre.payload"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        payload.as_bytes(),
        delivered.body.as_slice(),
        "the page shows the exact body the receiver got"
    );
    let headers = text_containing(c, &format!("{detail} .headers"), "X-Kamiyo-Delivery").await;
    assert!(headers.contains(&delivery_id), "{headers}");
    assert!(headers.contains("exploit.detected"), "{headers}");
    assert!(headers.contains("computed at send time"), "{headers}");
    js(
        c,
        &format!("document.querySelector('{detail}').scrollIntoView({{block: 'center'}})"),
    )
    .await;
    screenshot(c, "02-delivery-attempts").await;

    // Resend it: the receiver gets it again, under the same delivery id.
    click(c, &format!("{detail} .resend")).await;
    text_containing(c, &format!("{detail} .resend-status"), "queued").await;
    helpers::wait_until(WAIT, "the resent delivery", || receiver.count() >= 3).await;
    assert_eq!(
        receiver.requests()[2].headers["x-kamiyo-delivery"],
        delivery_id.as_str()
    );
    eventually("the second attempt in the attempt log", || async move {
        click(c, "#log-refresh").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        count(c, &format!("{detail} .attempts tr.attempt")).await >= 2
    })
    .await;

    // The chart counts the attempts of the last 24 hours.
    eventually("the chart to count three attempts", || async move {
        click(c, "#log-refresh").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        js(
            c,
            "return document.getElementById('chart').dataset.attempts",
        )
        .await
        .as_str()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(0)
            >= 3
    })
    .await;
    assert!(
        count(c, "#chart svg rect.ok").await >= 1,
        "a succeeded bar is drawn"
    );
    // The delivery log filters by status.
    c.find(Locator::Css("#status-filter"))
        .await
        .unwrap()
        .select_by_value("failed")
        .await
        .unwrap();
    shown(c, "#delivery-empty").await;
    c.find(Locator::Css("#status-filter"))
        .await
        .unwrap()
        .select_by_value("")
        .await
        .unwrap();
    eventually("the log to list both deliveries again", || async move {
        count(c, "#delivery-rows tr[data-delivery-id]").await == 2
    })
    .await;
    c.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
    screenshot(c, "03-webhook-detail").await;

    // Edit: clear the amount and chain filters (PATCH with null).
    click(c, "#d-edit").await;
    let chains = shown(c, "#f-chains").await.prop("value").await.unwrap();
    assert_eq!(chains.as_deref(), Some("ethereum, arbitrum"));
    fill(c, "#f-chains", "").await;
    fill(c, "#f-min", "").await;
    click(c, "#form-submit").await;
    eventually(
        "the filters shown without amount and chains",
        || async move {
            let text = shown(c, "#d-filters")
                .await
                .text()
                .await
                .unwrap_or_default();
            text.contains("categories: flash_loan")
                && !text.contains("chains")
                && !text.contains('$')
        },
    )
    .await;
    let hook = api_webhook(app, key, hook_id).await;
    assert_eq!(hook["chains"], Value::Null, "{hook}");
    assert_eq!(hook["min_amount_usd"], Value::Null, "{hook}");
    assert_eq!(hook["categories"], json!(["flash_loan"]), "{hook}");

    // The log pages by 20: twenty more exploits make a second page.
    let batch: Vec<Value> = (0..20).map(|_| full_exploit()).collect();
    app.ingest(&Value::Array(batch)).await;
    text_containing(c, "#d-filters", "flash_loan").await;
    eventually("a second page of deliveries", || async move {
        click(c, "#log-refresh").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let info = shown(c, "#page-info")
            .await
            .text()
            .await
            .unwrap_or_default();
        info.contains("Page 1 of 2 · 22 deliveries")
    })
    .await;
    assert_eq!(count(c, "#delivery-rows tr[data-delivery-id]").await, 20);
    click(c, "#page-next").await;
    text_containing(c, "#page-info", "Page 2 of 2").await;
    eventually("the two oldest deliveries on page 2", || async move {
        count(c, "#delivery-rows tr[data-delivery-id]").await == 2
    })
    .await;
    text_containing(c, "#delivery-rows", "webhook.test").await;
    click(c, "#page-prev").await;
    text_containing(c, "#page-info", "Page 1 of 2").await;

    // Deactivate and activate again.
    click(c, "#d-toggle").await;
    text_containing(c, "#d-disabled", "inactive").await;
    assert_eq!(api_webhook(app, key, hook_id).await["is_active"], false);
    text_containing(c, "#d-toggle", "Activate").await;
    click(c, "#d-toggle").await;
    text_containing(c, "#d-toggle", "Deactivate").await;
    assert_eq!(api_webhook(app, key, hook_id).await["is_active"], true);

    // Regenerate the secret: confirmed first, shown once.
    click(c, "#d-regenerate").await;
    click(c, "#confirm-ok").await;
    let new_secret = shown(c, "#secret-value").await.text().await.unwrap();
    assert_secret_format(&new_secret);
    assert_ne!(new_secret, secret, "a new secret");
    click(c, "#secret-done").await;
    text_containing(c, "#d-name", "Production alerts").await;

    // The tier limit: a team user with 5 webhooks is told which tier allows more.
    for i in 2..=4 {
        app.create_webhook_ok(key, &webhook(&format!("hook {i}")))
            .await;
    }
    // The fifth endpoint answers 410 Gone to its test: the service deactivates it.
    let gone = start_gone_endpoint().await;
    let gone_id = app
        .create_webhook_id(key, &json!({ "name": "retired endpoint", "url": gone }))
        .await;
    let resp = app
        .user(key, Method::POST, &format!("{WEBHOOKS}/{gone_id}/test"))
        .send()
        .await
        .unwrap();
    assert_eq!(json_body(resp, StatusCode::OK).await["status_code"], 410);
    click(c, "#back-to-list").await;
    eventually("five webhooks in the list", || async move {
        count(c, "#webhook-rows tr[data-webhook-id]").await == 5
    })
    .await;
    let row = text_containing(
        c,
        &format!("#webhook-rows tr[data-webhook-id='{hook_id}']"),
        "Production alerts",
    )
    .await;
    assert!(row.contains("healthy"), "health at a glance: {row}");
    assert!(row.contains("100 %"), "success rate at a glance: {row}");
    screenshot(c, "04-webhook-list").await;
    text_containing(
        c,
        &format!("#webhook-rows tr[data-webhook-id='{gone_id}']"),
        "disabled",
    )
    .await;
    click(
        c,
        &format!("#webhook-rows tr[data-webhook-id='{gone_id}'] a"),
    )
    .await;
    let banner = text_containing(c, "#d-disabled", "410 Gone").await;
    assert!(
        banner.contains("The service deactivated this webhook"),
        "{banner}"
    );
    text_containing(c, "#d-toggle", "Activate").await;
    screenshot(c, "05-disabled-by-the-service").await;
    click(c, "#back-to-list").await;
    click(c, "#new-webhook").await;
    fill(c, "#f-name", "one too many").await;
    fill(c, "#f-url", &receiver.url).await;
    click(c, "#form-submit").await;
    let limit = text_containing(c, "#form-error", "enterprise tier").await;
    assert!(limit.contains("Tier limit"), "{limit}");
    screenshot(c, "06-tier-limit").await;
    click(c, "#form-cancel").await;
    shown(c, "#webhook-table").await;
    c.set_window_size(420, 900).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    screenshot(c, "07-list-on-a-phone").await;
    c.set_window_size(1360, 1000).await.unwrap();

    // Delete, after a confirmation.
    click(
        c,
        &format!("#webhook-rows tr[data-webhook-id='{hook_id}'] a"),
    )
    .await;
    text_containing(c, "#d-name", "Production alerts").await;
    click(c, "#d-delete").await;
    text_containing(c, "#confirm-text", "cannot be undone").await;
    click(c, "#confirm-ok").await;
    eventually("four webhooks in the list", || async move {
        count(c, "#webhook-rows tr[data-webhook-id]").await == 4
    })
    .await;
    let gone = app.get_webhook(key, hook_id).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);

    let violations = js(c, "return window.cspViolations").await;
    assert_eq!(violations, json!([]), "the page breaks none of its own CSP");
    // And the policy holds: an injected inline script does not run.
    let ran = js(
        c,
        "const s = document.createElement('script'); s.textContent = 'window.inlineRan = true'; \
         document.body.append(s); return window.inlineRan === true",
    )
    .await;
    assert_eq!(ran, false, "an inline script ran despite the CSP");
    eventually("the blocked inline script to be reported", || async move {
        js(c, "return window.cspViolations.join(' ')")
            .await
            .as_str()
            .is_some_and(|v| v.contains("script-src"))
    })
    .await;

    // Signing out forgets the key.
    click(c, "#sign-out").await;
    shown(c, "#api-key").await;
    let left = js(c, "return sessionStorage.getItem('kamiyo.apiKey')").await;
    assert_eq!(left, Value::Null);
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary_with_a_strict_content_security_policy() {
    let app = spawn_app_with(|_| {}).await;
    for (path, content_type) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/style.css", "text/css"),
    ] {
        let resp = app.request(Method::GET, path).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let h = resp.headers();
        assert!(
            h["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}: {:?}",
            h["content-type"]
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
    }
    let html = app
        .request(Method::GET, "/")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(r#"<script type="module" src="/assets/app.js"></script>"#));
    for external in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(!html.contains(external), "no external asset: {external}");
    }
    assert_eq!(html.matches("<script").count(), 1, "no inline script");

    // The stats call is part of the API description.
    let doc = json_body(
        app.request(Method::GET, &format!("{WEBHOOKS}/openapi.json"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert!(doc["paths"]["/api/v1/user-webhooks/{id}/stats"]["get"].is_object());
}
