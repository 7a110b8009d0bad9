// Debian's Chromium as the tests run it: headless, no sandbox (CI runs as
// root), and nothing that reaches for the network beyond loopback.
const { chromium } = require('playwright-core');

module.exports = () => chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});

// Signs `page` in at the coordinator's sign-in form (as a person would) and
// checks that the session cookie was set.
module.exports.signIn = async (page, coordinator, username, password) => {
  await page.goto(`${coordinator}/login`, { timeout: 20000 });
  await page.fill('input[name=username]', username);
  await page.fill('input[name=password]', password);
  await Promise.all([page.waitForURL((u) => !u.pathname.startsWith('/login'), { timeout: 20000 }), page.click('button')]);
  const cookies = await page.context().cookies(coordinator);
  if (!cookies.some((c) => c.name.endsWith('meridian_session'))) throw new Error('sign-in set no session cookie');
};
