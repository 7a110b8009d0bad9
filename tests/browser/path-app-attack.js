// An admin, signed in to the dashboard's origin, opens a member's shared path
// app whose page tries to create an admin through the API. Prints one JSON
// line: what the page's script saw, and the policy its answer carried.
// Usage: node path-app-attack.js COORDINATOR_URL USERNAME PASSWORD APP_URL
const launch = require('./launch');

(async () => {
  const [coordinator, username, password, appUrl] = process.argv.slice(2);
  const browser = await launch();
  try {
    const page = await browser.newPage();
    await launch.signIn(page, coordinator, username, password);

    const resp = await page.goto(appUrl, { timeout: 20000 });
    const status = resp.status();
    let attempts = null;
    if (status === 200) {
      // The page writes what it saw into its title when its script is done.
      await page.waitForFunction(() => document.title.startsWith('done'), null, { timeout: 20000 });
      attempts = (await page.title()).slice('done '.length);
    }
    const policy = (await resp.allHeaders())['content-security-policy'] || '';
    console.log(JSON.stringify({ status, attempts, policy }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e.message || e);
  process.exit(1);
});
