// Drives Debian's chromium (headless, via puppeteer-core; no browser is ever downloaded) through
// the scenarios crates/gateway/tests/browser.rs sets up, and prints one `RESULT {json}` line per
// scenario. The Rust test owns the servers (gateway, emulators, static pages) and asserts on
// both what this script saw in the page and what the servers saw.
//
// Input: the path of a JSON file
//   { "chromium": "/usr/bin/chromium", "screenshots": "<dir>", "profile": "<empty dir>",
//     "scenarios": [ { "name", "url", "confirm": "accept" | "decline",
//                      "until": "completed" | "error" } ] }

import fs from "node:fs";
import path from "node:path";
import puppeteer from "puppeteer-core";

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const FINAL = new Set(["completed", "busy", "no-answer", "failed", "canceled", "error"]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const browser = await puppeteer.launch({
  executablePath: config.chromium,
  headless: true,
  userDataDir: config.profile,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
  ],
});

async function shot(page, scenario, n, label) {
  const file = path.join(config.screenshots, `${scenario.name}-${String(n).padStart(2, "0")}-${label}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

async function run(scenario) {
  const out = { name: scenario.name, console: [], requests_failed: [], screenshots: [], states: [] };
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  await page.setViewport({ width: 900, height: 700 });
  page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => out.console.push(`pageerror: ${e.message}`));
  page.on("requestfailed", (r) => out.requests_failed.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
  try {
    await page.goto(scenario.url, { waitUntil: "load", timeout: 30000 });
    out.screenshots.push(await shot(page, scenario, 0, "loaded"));
    await page.click("#talk");
    // The agent connects, speaks, then calls initiatePhoneCall: the widget's confirm dialog opens.
    const dialog = await page.waitForSelector("dialog.trunkline-confirm[open]", { timeout: 30000 });
    out.dialog = await dialog.evaluate((d) => ({
      role: d.getAttribute("role") || "dialog",
      labelledby: document.getElementById(d.getAttribute("aria-labelledby"))?.textContent ?? null,
      describedby: document.getElementById(d.getAttribute("aria-describedby"))?.textContent ?? null,
      focused: document.activeElement?.className ?? null,
    }));
    out.conversation_id = await page.$eval("#agent-state", (e) => e.dataset.conversationId ?? null);
    out.screenshots.push(await shot(page, scenario, 1, "confirm"));
    await page.click(scenario.confirm === "accept" ? "button.trunkline-call" : "button.trunkline-cancel");
    // Follow the visible status until the expected end (a screenshot per state).
    const deadline = Date.now() + 60000;
    let last = null;
    let n = 2;
    for (;;) {
      const now = await page.evaluate(() => {
        const el = document.getElementById("call-status");
        return {
          status: el.dataset.status ?? null,
          text: el.textContent,
          log: window.trunklineLog ?? [],
        };
      });
      if (now.status !== last) {
        last = now.status;
        out.states.push({ status: now.status, text: now.text });
        out.screenshots.push(await shot(page, scenario, n++, now.status ?? "none"));
      }
      out.log = now.log;
      out.status_text = now.text;
      const done =
        scenario.confirm === "decline"
          ? now.log.includes("declined")
          : now.status === scenario.until || (FINAL.has(now.status) && now.status !== null);
      if (done) break;
      if (Date.now() > deadline) {
        out.timeout = true;
        break;
      }
      await sleep(50);
    }
    // Let the tool result reach the agent before the page goes.
    await sleep(500);
    out.screenshots.push(await shot(page, scenario, n, "end"));
    out.agent_error = await page.$eval("#agent-state", (e) => e.dataset.error ?? null);
    out.placed = await page.evaluate(() => {
      const li = document.querySelector('#call-log li[data-status="placed"]');
      return li ? { call_sid: li.dataset.callSid ?? null, conversation_id: li.dataset.conversationId ?? null } : null;
    });
  } catch (e) {
    out.error = String(e && e.stack ? e.stack : e);
    try {
      out.screenshots.push(await shot(page, scenario, 99, "failure"));
    } catch {}
  } finally {
    await context.close();
  }
  return out;
}

try {
  for (const s of config.scenarios) {
    const r = await run(s);
    console.log(`RESULT ${JSON.stringify(r)}`);
  }
} finally {
  await browser.close();
}
