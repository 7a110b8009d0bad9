// The web terminal in Chromium: signed in, the dashboard's Terminal link and
// region picked,
// a command typed and its output read; the region's proxy SIGKILLed, typing
// on (nothing typed is lost, the page moves to another region); a reload
// brings the scrollback back. No CSP violation on the way.
// Usage: node terminal.js COORDINATOR USERNAME PASSWORD OWNER WORKSPACE AGENT REGION REGION_PID
const launch = require('./launch');

(async () => {
  const [coordinator, username, password, owner, workspace, agent, region, pid] = process.argv.slice(2);
  const browser = await launch();
  const violations = [];
  try {
    const page = await browser.newPage();
    page.on('console', (m) => { if (/Content Security Policy|Refused to/.test(m.text())) violations.push(m.text()); });
    await launch.signIn(page, coordinator, username, password);
    await page.evaluate((r) => localStorage.setItem('meridian.region', r), region);
    const url = `${coordinator}/terminal?${new URLSearchParams({ owner, workspace, agent })}`;
    // The dashboard links each of the user's agents to its terminal.
    await page.goto(`${coordinator}/`, { timeout: 20000 });
    const link = await page.waitForSelector('a.terminal-link', { timeout: 20000 });
    const href = new URL(await link.getAttribute('href'), coordinator).href;
    if (href !== url) throw new Error(`the Terminal link goes to ${href}, not ${url}`);
    await page.goto(url, { timeout: 20000 });
    const screen = () => page.evaluate(() => {
      const b = window.meridianTerminal.buffer.active;
      const lines = [];
      for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
      return lines.join('\n');
    });
    const waitFor = async (what, test, ms) => {
      const end = Date.now() + ms;
      while (Date.now() < end) {
        if (await test()) return;
        await page.waitForTimeout(100);
      }
      throw new Error(`timed out waiting for ${what}; the screen:\n${await screen()}`);
    };
    await waitFor(`a connection through ${region}`, async () => (await page.getAttribute('body', 'data-region')) === region, 20000);
    await page.click('#terminal');
    await page.keyboard.type('echo first-$((40+2))\n');
    await waitFor('the first command\'s output', async () => (await screen()).includes('first-42'), 20000);

    process.kill(Number(pid), 'SIGKILL');
    // Typed while the connection is lost or moving: kept and sent once one is open.
    await page.keyboard.type('echo second-$((50+5))\n');
    await waitFor('the second command\'s output through another region', async () =>
      (await screen()).includes('second-55') && (await page.getAttribute('body', 'data-region')) !== region, 30000);
    const moved = await page.getAttribute('body', 'data-region');
    const count = (await screen()).split('second-55').length - 1;
    // The command line shows `$((50+5))`; only its output says second-55.
    if (count !== 1) throw new Error(`the second command's output appears ${count} times:\n${await screen()}`);

    await page.reload({ timeout: 20000 });
    await waitFor('the scrollback after a reload', async () => {
      const s = await screen();
      return s.includes('first-42') && s.includes('second-55');
    }, 20000);
    if (violations.length) throw new Error(`CSP violations: ${violations.join('; ')}`);
    console.log(`typed, read, moved from ${region} to ${moved}, reloaded: scrollback back`);
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e.message || e);
  process.exit(1);
});
