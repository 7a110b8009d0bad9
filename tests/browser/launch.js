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

// axe-core in the page (evaluated over the DevTools protocol, so the page's
// CSP stays as it is): throws on a serious or critical violation.
const axeSource = require('fs').readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
module.exports.accessible = async (page, name) => {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  if (bad.length) {
    throw new Error(`${name}: accessibility violations: ${JSON.stringify(bad.map((v) => [v.id, v.impact, v.nodes.map((n) => n.target)]))}`);
  }
};
