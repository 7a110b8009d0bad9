// `meridian login` through the browser, its browser side: waits for the
// address the CLI asked to open (written to a file by the test's $BROWSER),
// signs in there through the OpenID provider, approves the CLI, and either
// lands on the CLI's loopback listener or prints the code the page shows
// (for `meridian login --no-browser`).
//
// Usage: node oidc-cli.js '<json: {url_file, login}>'
'use strict';
const fs = require('fs');
const launch = require('./launch');

const info = JSON.parse(process.argv[2]);

async function waitForUrl() {
  const until = Date.now() + 60000;
  while (Date.now() < until) {
    const text = fs.existsSync(info.url_file) ? fs.readFileSync(info.url_file, 'utf8').trim() : '';
    if (text) return text;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no address in ${info.url_file} within 60 s`);
}

(async () => {
  const url = await waitForUrl();
  const browser = await launch();
  try {
    const page = await (await browser.newContext()).newPage();
    await page.goto(url);
    // Not signed in: the sign-in page, then the provider's pages, then back here.
    await page.click('#oidc-sign-in');
    const here = () => new URL(page.url()).pathname === '/cli-auth';
    for (let i = 0; i < 4 && !here(); i++) {
      await page.waitForLoadState();
      if (await page.$('input[name=login]')) {
        await page.fill('input[name=login]', info.login);
        await page.fill('input[name=password]', 'any password');
      }
      await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    }
    if (!here()) throw new Error(`did not come back to the CLI page: ${page.url()}`);
    const callback = await page.getAttribute('#cli-auth', 'data-callback');
    if (callback) {
      await Promise.all([page.waitForURL((u) => u.href.startsWith(callback)), page.click('#approve')]);
      const text = await page.textContent('body');
      if (!text.includes('signed in')) throw new Error(`the CLI's listener answered: ${text}`);
      process.stdout.write('{"handed":"loopback"}\n');
    } else {
      await page.click('#approve');
      await page.waitForSelector('#code-box:not([hidden])');
      process.stdout.write(`${JSON.stringify({ code: (await page.textContent('#code')).trim() })}\n`);
    }
  } finally {
    await browser.close();
  }
})().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
