// The web terminal in Chromium: signed in, the dashboard's Terminal link and
// region picked, a command typed and its output read; the region partitioned
// (its proxy SIGSTOPped: connections stay open and carry nothing), typing on
// (the page notices the silence and moves to another region, nothing typed is
// lost or run twice); the region back, picked again, then SIGKILLed, typing
// on; a reload brings the whole scrollback back. No CSP violation, and the
// page passes axe-core. Prints one JSON line: how long each move took.
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
    const onRegion = (name) => waitFor(`a connection through ${name}`, async () => (await page.getAttribute('body', 'data-region')) === name, 20000);
    await onRegion(region);
    await launch.accessible(page, 'the terminal page');
    await page.click('#terminal');
    await page.keyboard.type('echo first-$((40+2))\n');
    await waitFor('the first command\'s output', async () => (await screen()).includes('first-42'), 20000);

    // Typed while the connection is stalled, lost or moving: kept and sent
    // once another is open; its output (not the command line, which shows
    // `$((…))`) must appear exactly once, through another region.
    const moves = {};
    const typeThrough = async (fault, command, output) => {
      const start = Date.now();
      fault();
      await page.keyboard.type(`${command}\n`);
      await waitFor(`${output} through another region`, async () =>
        (await screen()).includes(output) && (await page.getAttribute('body', 'data-region')) !== region, 30000);
      const count = (await screen()).split(output).length - 1;
      if (count !== 1) throw new Error(`${output} appears ${count} times:\n${await screen()}`);
      return Date.now() - start;
    };
    try {
      moves.partitioned_ms = await typeThrough(() => process.kill(Number(pid), 'SIGSTOP'), 'echo second-$((50+5))', 'second-55');
    } finally {
      process.kill(Number(pid), 'SIGCONT');
    }

    // The region back and healthy, picked again by a reload: the same shell.
    await waitFor(`${region} healthy again`, () => page.evaluate(async (name) => {
      const resp = await fetch('/api/v2/regions', { credentials: 'same-origin' });
      return resp.ok && (await resp.json()).regions.some((r) => r.name === name && r.healthy);
    }, region), 30000);
    await page.reload({ timeout: 20000 });
    await onRegion(region);
    moves.killed_ms = await typeThrough(() => process.kill(Number(pid), 'SIGKILL'), 'echo third-$((60+6))', 'third-66');

    await page.reload({ timeout: 20000 });
    await waitFor('the scrollback after a reload', async () => {
      const s = await screen();
      return ['first-42', 'second-55', 'third-66'].every((t) => s.includes(t));
    }, 20000);
    if (violations.length) throw new Error(`CSP violations: ${violations.join('; ')}`);
    console.log(JSON.stringify(moves));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e.message || e);
  process.exit(1);
});
