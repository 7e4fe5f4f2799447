"""Drives the operator console (`/console`) in headless Chromium for creditgraph's tests.

Uses the `playwright` package from PyPI (sync API) with Debian's Chromium at /usr/bin/chromium;
it never downloads a browser. One JSON argument on argv[1]:

  {"base": "http://127.0.0.1:PORT", "admin_token": "...", "service_token": "...",
   "account_id": "...", "evil_account_id": "...", "evil_reference": "...",
   "screenshots": "/dir" | null}

The account `account_id` must have ledger entries and at least one pending hold; the account
`evil_account_id` must have a grant whose reference is `evil_reference`. Each step asserts
(AssertionError with a message, non-zero exit); at the end it prints
{"ok": true, "released_hold": "<hold_id>"} on stdout.
"""

import json
import os
import re
import sys
import time
import urllib.parse
import urllib.request

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000
# Pages of accounts the search step reads at most before giving up on finding the account.
SEARCH_PAGES_MAX = 20


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def quote(value):
    """What JavaScript's encodeURIComponent gives."""
    return urllib.parse.quote(value, safe="-_.!~*'()")


def api_get(cfg, path):
    request = urllib.request.Request(
        cfg["base"] + path,
        headers={"Authorization": "Bearer " + cfg["admin_token"], "Accept": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait_until(page, script, what, arg=None):
    """Polls `script` (a JS function of `arg`) until it returns something truthy.

    Not page.wait_for_function: that one polls with eval() inside the page, which the
    console's CSP (script-src 'self', no 'unsafe-eval') blocks. page.evaluate goes through
    the DevTools protocol, which CSP does not govern.
    """
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        value = page.evaluate(script, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        page.wait_for_timeout(50)


def text_of(page, selector):
    return page.locator(selector).inner_text().strip()


def main():
    cfg = json.loads(sys.argv[1])
    base = cfg["base"].rstrip("/")
    cfg["base"] = base
    shots = cfg.get("screenshots")
    if shots:
        os.makedirs(shots, exist_ok=True)

    dialogs = []
    page_errors = []
    csp_violations = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)

            # 1. Any dialog means injected script ran; dismiss it so the page does not hang.
            def on_dialog(dialog):
                dialogs.append(f"{dialog.type}: {dialog.message}")
                dialog.dismiss()

            page.on("dialog", on_dialog)
            page.on("pageerror", lambda err: page_errors.append(str(err)))
            page.on(
                "console",
                lambda msg: csp_violations.append(msg.text)
                if msg.type == "error" and "Content Security Policy" in msg.text
                else None,
            )

            def no_trouble(step):
                check(not dialogs, f"{step}: a dialog fired (injected script ran): {dialogs}")
                check(not page_errors, f"{step}: JavaScript errors on the page: {page_errors}")
                check(not csp_violations, f"{step}: CSP violations: {csp_violations}")

            # 2. A service token is refused with a message about admin tokens, and no navigation.
            page.goto(base + "/console")
            page.wait_for_selector("#login-token")
            page.fill("#login-token", cfg["service_token"])
            page.click("#login-submit")
            wait_until(
                page,
                "() => document.querySelector('#login-error')?.textContent.trim()",
                "the login error after a service-token login",
            )
            error = text_of(page, "#login-error")
            check("admin" in error, f"service-token login: the error should mention admin, got {error!r}")
            hash_now = page.evaluate("location.hash")
            check(hash_now == "#/login", f"service-token login: the page moved to {hash_now!r}")
            check(
                page.evaluate("sessionStorage.getItem('creditgraph.token')") is None,
                "service-token login: the refused token was kept in sessionStorage",
            )
            no_trouble("service-token login")

            # 3. The admin token lands on the overview, with the pending-hold count and the chart.
            page.fill("#login-token", cfg["admin_token"])
            page.click("#login-submit")
            wait_until(page, "() => location.hash === '#/overview'", "the overview after the admin login")
            page.wait_for_selector("#overview-pending-holds")
            pending = text_of(page, "#overview-pending-holds")
            check(re.fullmatch(r"\d+", pending), f"overview: pending holds should be a number, got {pending!r}")
            page.wait_for_selector("#overview-chart", state="attached")
            check(page.locator("#overview-chart rect").count() > 0, "overview: the chart has no bars")
            if shots:
                page.screenshot(path=os.path.join(shots, "overview.png"), full_page=True)
            no_trouble("overview")

            # 4. Search by a prefix of the account id and follow its link, paging when needed.
            account_id = cfg["account_id"]
            prefix = account_id[:-1] if len(account_id) > 1 else account_id
            page.click("nav a[href='#/accounts']")
            page.wait_for_selector("#account-search")
            page.fill("#account-search", prefix)
            page.click("#account-search-submit")
            # Rows of this search are in once every listed id has the prefix (or none matched).
            search_done = """p => {
                const links = Array.from(document.querySelectorAll('#accounts-table .account-link'));
                const status = document.querySelector('#accounts-table + p');
                return location.hash === '#/accounts?' + new URLSearchParams({prefix: p})
                    && ((links.length > 0 && links.every((a) => a.textContent.startsWith(p)))
                        || (status !== null && status.textContent !== ''));
            }"""
            wait_until(page, search_done, f"accounts listed under prefix {prefix!r}", prefix)
            link = page.locator(".account-link").filter(
                has_text=re.compile("^" + re.escape(account_id) + "$")
            )
            for _ in range(SEARCH_PAGES_MAX):
                if link.count() > 0:
                    break
                next_button = page.locator("#accounts-next")
                check(next_button.is_visible(), f"accounts: {account_id!r} is not listed under prefix {prefix!r}")
                first_link = page.locator("#accounts-table .account-link").first.inner_text()
                next_button.click()
                wait_until(
                    page,
                    "t => document.querySelector('#accounts-table .account-link')?.textContent !== t",
                    "the next page of accounts",
                    first_link,
                )
            check(link.count() == 1, f"accounts: no single link for {account_id!r}")
            link.click()
            wait_until(
                page, "h => location.hash === h", "the account page", "#/accounts/" + quote(account_id)
            )
            page.wait_for_selector("#balance")
            shown_id = text_of(page, "#account-id")
            check(shown_id == account_id, f"account page: heading {shown_id!r}, expected {account_id!r}")
            account = api_get(cfg, "/v1/accounts/" + quote(account_id))
            balance = text_of(page, "#balance")
            check(balance == account["balance"], f"account page: #balance {balance!r}, API says {account['balance']!r}")
            page.wait_for_selector("#balance-chart polyline, #balance-chart path", state="attached")
            points = page.evaluate(
                """() => Math.max(0, ...Array.from(
                    document.querySelectorAll('#balance-chart polyline, #balance-chart path'),
                    (e) => e.tagName === 'polyline' ? e.points.length
                         : (e.getAttribute('d') || '').split(/[MLHVCSQTAZmlhvcsqtaz]/).filter((s) => s.trim()).length))"""
            )
            check(points >= 2, f"account page: the balance chart line has {points} points")
            no_trouble("account page")

            # 5. Release the first pending hold (screenshot first, so it shows a pending hold).
            release = page.locator("#holds-table button[data-hold-id]").first
            release.wait_for()
            check(release.inner_text().strip() == "Release", "holds: the button is not labelled Release")
            hold_id = release.get_attribute("data-hold-id")
            check(hold_id, "holds: the Release button has no data-hold-id")
            if shots:
                page.screenshot(path=os.path.join(shots, "account.png"), full_page=True)
            release.click()
            wait_until(
                page,
                """id => !Array.from(document.querySelectorAll('#holds-table [data-hold-id]'))
                        .some((e) => e.getAttribute('data-hold-id') === id)""",
                f"hold {hold_id} to leave the pending-holds table",
                hold_id,
            )
            hold = api_get(cfg, "/v1/holds/" + quote(hold_id))
            check(hold["state"] == "released", f"holds: {hold_id} is {hold['state']!r} after Release")
            # The figures are read again after a release.
            held = api_get(cfg, "/v1/accounts/" + quote(account_id))["held"]
            wait_until(
                page,
                "h => document.querySelector('#held')?.textContent === h",
                f"#held to show {held!r} after the release",
                held,
            )
            no_trouble("release")

            # 6. Hostile strings render as text: no markup, no script, no dialog.
            evil_id = cfg["evil_account_id"]
            evil_ref = cfg["evil_reference"]
            page.evaluate("id => { location.hash = '#/accounts/' + encodeURIComponent(id); }", evil_id)
            wait_until(
                page,
                "id => document.querySelector('#account-id')?.textContent === id",
                "the hostile account's page",
                evil_id,
            )
            page.wait_for_selector("#grants-table")
            page.wait_for_timeout(300)  # give a would-be injected handler a moment to fire
            no_trouble("evil account")
            body = page.evaluate("document.body.innerText")
            check(evil_id in body, f"evil account: its id {evil_id!r} is not shown as text")
            check(evil_ref in body, f"evil account: the reference {evil_ref!r} is not shown as text")
            scripts_in_app = page.evaluate("document.querySelectorAll('#app script').length")
            check(scripts_in_app == 0, f"evil account: {scripts_in_app} <script> elements inside #app")
            script_srcs = page.evaluate(
                "Array.from(document.scripts, (s) => s.getAttribute('src') || '(inline)')"
            )
            check(script_srcs == ["/console/app.js"], f"evil account: unexpected scripts {script_srcs}")
        finally:
            browser.close()

    print(json.dumps({"ok": True, "released_hold": hold_id}))


if __name__ == "__main__":
    main()
