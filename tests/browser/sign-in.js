// Opens an app URL as a new user would: sent to the sign-in page, signs in,
// and must land on the app itself (no ticket left in the URL).
// Usage: node sign-in.js APP_URL USERNAME PASSWORD SCREENSHOT
const launch = require('./launch');

(async () => {
  const [appUrl, username, password, screenshot] = process.argv.slice(2);
  const browser = await launch();
  try {
    const page = await browser.newPage();
    await page.goto(appUrl, { timeout: 20000 });
    if (!page.url().includes('/login?redirect=')) throw new Error(`expected the sign-in page, got ${page.url()}`);
    await page.fill('input[name=username]', username);
    await page.fill('input[name=password]', password);
    const appHost = new URL(appUrl).host;
    await Promise.all([page.waitForURL((u) => u.host === appHost, { timeout: 20000 }), page.click('button')]);
    await page.waitForLoadState('load');
    const text = await page.textContent('body');
    await page.screenshot({ path: screenshot });
    if (page.url().includes('meridian_app_ticket')) throw new Error(`ticket left in ${page.url()}`);
    const seen = JSON.parse(text);
    if (seen.method !== 'GET') throw new Error(`unexpected app answer: ${text.slice(0, 200)}`);
    if (JSON.stringify(seen.headers).includes('meridian_')) throw new Error('the app received a Meridian credential');
    console.log(`signed in and served: ${page.url()}`);
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e.message || e);
  process.exit(1);
});
