//! The operator console in a real browser: Debian's headless Chromium driven by Playwright
//! (`support/console_browser.py`) against a real `creditgraph serve` process. It logs in (a
//! service token is refused), reads the overview, finds an account by search, checks its balance
//! and chart, releases a pending hold with the button (the API then shows it released), and
//! opens an account whose reference and metadata carry markup and quotes: shown as text, nothing
//! runs. With `CREDITGRAPH_CONSOLE_SCREENSHOTS=<dir>` it leaves `overview.png` and `account.png`
//! there (how the README's pictures are made).

use serde_json::{json, Value};

use crate::helpers::ServerProcess;

const ADMIN: &str = "console-admin-token";
const SERVICE: &str = "console-service-token";
const EVIL_REFERENCE: &str = r#"<script>alert("ref")</script> 'single' "double" &amp;"#;

async fn post(client: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    let reply = client.post(format!("{base}{path}")).bearer_auth(ADMIN).json(&body).send().await.expect("request");
    assert!(reply.status().is_success(), "{path}: {}", reply.status());
    reply.json().await.expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_an_account_and_releases_a_hold_in_a_real_browser() {
    let directory = tempfile::tempdir().expect("temp dir");
    let database = format!("sqlite:{}", directory.path().join("console.db").display());
    let tokens = format!("admin:{ADMIN},service:{SERVICE}");
    let server = ServerProcess::start_with(&database, &["--tokens", &tokens, "--test-clock"], &[]);
    let (base, client) = (server.base.clone(), reqwest::Client::new());
    let next_day = || post(&client, &base, "/v1/test-clock/advance", json!({"seconds": 86_400}));

    // A team's account with a week of history: grants, settled holds, a debit, a refund, and two
    // holds pending now (the test clock moves a day at a time).
    post(&client, &base, "/v1/accounts/acme-team/grants", json!({"amount": "250", "reference": "starter plan"})).await;
    for (spent, reserved) in [("32.5", "40"), ("18", "25"), ("41.75", "60")] {
        next_day().await;
        let settled = post(&client, &base, "/v1/holds", json!({"account_id": "acme-team", "amount": reserved})).await;
        let settled = settled["hold_id"].as_str().expect("hold id").to_owned();
        post(&client, &base, &format!("/v1/holds/{settled}/capture"), json!({"amount": spent, "final": true})).await;
    }
    next_day().await;
    post(&client, &base, "/v1/accounts/acme-team/debits", json!({"amount": "7.25", "reference": "pdf export"})).await;
    post(&client, &base, "/v1/accounts/acme-team/refunds", json!({"amount": "5", "reference": "failed video"})).await;
    next_day().await;
    post(&client, &base, "/v1/accounts/acme-team/grants", json!({"amount": "100", "reference": "top-up"})).await;
    for amount in ["12", "30"] {
        post(
            &client,
            &base,
            "/v1/holds",
            json!({"account_id": "acme-team", "amount": amount, "reference": "agent run"}),
        )
        .await;
    }
    for other in ["acme-labs", "beta-co"] {
        post(&client, &base, &format!("/v1/accounts/{other}/grants"), json!({"amount": "10"})).await;
    }
    // User data with markup and quotes in a reference and in metadata.
    let evil_grant = json!({
        "amount": "5",
        "reference": EVIL_REFERENCE,
        "metadata": {"note": "<img src=x onerror=alert('meta')>", "quote": "\"'"},
    });
    post(&client, &base, "/v1/accounts/evil.account_1/grants", evil_grant).await;

    let python = std::env::var("CREDITGRAPH_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/support/console_browser.py");
    let plan = json!({
        "base": base,
        "admin_token": ADMIN,
        "service_token": SERVICE,
        "account_id": "acme-team",
        "evil_account_id": "evil.account_1",
        "evil_reference": EVIL_REFERENCE,
        "screenshots": std::env::var("CREDITGRAPH_CONSOLE_SCREENSHOTS").ok(),
    });
    let output = tokio::process::Command::new(&python).arg(script).arg(plan.to_string()).output().await.expect("runs");
    assert!(
        output.status.success(),
        "the browser run failed (are playwright and /usr/bin/chromium installed?):\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().expect("the driver's verdict");
    let verdict: Value = serde_json::from_str(last).expect("JSON verdict");
    assert_eq!(verdict["ok"], true, "{verdict}");

    // The button went through the public API: the hold is released there, the other still held.
    let released = verdict["released_hold"].as_str().expect("the released hold's id");
    let hold: Value = client
        .get(format!("{base}/v1/holds/{released}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(hold["state"], "released", "{hold}");
    assert_eq!(hold["account_id"], "acme-team", "{hold}");
    let account: Value = client
        .get(format!("{base}/v1/accounts/acme-team"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    let held = account["held"].as_str().expect("held");
    assert!(held == "12" || held == "30", "one of the two pending holds is left: {account}");
}
