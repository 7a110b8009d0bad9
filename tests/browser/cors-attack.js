// A signed-in user opens their own apps (so the browser holds their app
// cookies), then visits pages of apps (another user's, or their own) whose
// script tries to read apps with a credentialed cross-origin fetch. Prints one
// JSON line: for each page, what its script read of each target ("read:<body>"
// or "blocked").
// Usage: node cors-attack.js COORDINATOR_URL USERNAME PASSWORD JSON
//   JSON: {"open": [URL, ...], "pages": [{"page": URL, "targets": [URL, ...]}, ...]}
const launch = require('./launch');

(async () => {
  const [coordinator, username, password, plan] = process.argv.slice(2);
  const { open, pages } = JSON.parse(plan);
  const browser = await launch();
  try {
    const page = await browser.newPage();
    await launch.signIn(page, coordinator, username, password);

    const opened = {};
    for (const url of open) {
      const resp = await page.goto(url, { timeout: 20000 });
      opened[url] = resp.status();
    }
    const read = [];
    for (const { page: at, targets } of pages) {
      const resp = await page.goto(at, { timeout: 20000 });
      if (resp.status() !== 200) throw new Error(`${at} answered ${resp.status()}`);
      const seen = await page.evaluate(async (urls) => {
        const out = {};
        for (const url of urls) {
          try {
            const r = await fetch(url, { credentials: 'include' });
            out[url] = `read:${await r.text()}`;
          } catch (e) {
            out[url] = 'blocked';
          }
        }
        return out;
      }, targets);
      read.push({ page: at, seen });
    }
    console.log(JSON.stringify({ opened, read }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e.message || e);
  process.exit(1);
});
