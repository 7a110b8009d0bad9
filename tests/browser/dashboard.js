// The dashboard as a person uses it, in Chromium, against `meridian demo`
// (regions at simulated distances, a fault controller):
// sign in → workspaces with the agent's region → an app opened through the
// chosen region → regions by measured latency in the order of the geography →
// a killed region shown unreachable, the picker falling back to the primary →
// CSRF refusals → a member refused the admin page. Every page is screenshot
// and checked with axe-core (no serious or critical violation), under the
// pages' real Content-Security-Policy (a violation fails the run).
//
// Usage: node dashboard.js DEMO_INFO_JSON ADMIN_PASSWORD HEALTH_INTERVAL_MS SHOT_DIR
// Prints one JSON line of figures on success.
const fs = require('fs');
const path = require('path');
const launch = require('./launch');

const [infoFile, password, intervalMs, shots] = process.argv.slice(2);
const info = JSON.parse(fs.readFileSync(infoFile, 'utf8'));
const base = info.coordinator_url.replace(/\/$/, '');
const figures = {};
const problems = [];

function check(ok, what) {
  if (!ok) throw new Error(what);
}

async function shoot(page, name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

async function visit(page, name) {
  await shoot(page, name);
  await launch.accessible(page, name);
}

async function signIn(page, username, pass) {
  await page.fill('#username', username);
  await page.fill('#password', pass);
  await Promise.all([page.waitForURL((u) => !u.pathname.startsWith('/login'), { timeout: 15000 }), page.click('button[type=submit]')]);
}

async function fault(action, scenario, region) {
  const resp = await fetch(`${info.control_url}/fault`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${info.control_token}` },
    body: JSON.stringify({ action, scenario, region }),
  });
  check(resp.ok, `fault controller: ${action} ${scenario} ${region}: HTTP ${resp.status} ${await resp.text()}`);
}

async function latencies(page) {
  return page.$$eval('#regions tr', (rows) => Object.fromEntries(rows.map((r) => [r.dataset.region, parseInt(r.querySelector('.latency').textContent, 10)])));
}

(async () => {
  const browser = await launch();
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on('console', (m) => { if (/Content Security Policy|Refused to/.test(m.text())) problems.push(m.text()); });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('dialog', (d) => d.accept());

    // --- sign in: the page, an inline error, then the dashboard (not JSON).
    const first = await page.goto(`${base}/`);
    check(page.url().startsWith(`${base}/login?redirect=`), `not sent to sign in: ${page.url()}`);
    const csp = first.request().redirectedFrom() ? (await page.reload()).headers()['content-security-policy'] : first.headers()['content-security-policy'];
    check(/script-src 'self'/.test(csp) && /frame-ancestors 'none'/.test(csp) && !/unsafe-inline/.test(csp), `CSP: ${csp}`);
    await page.fill('#username', info.username);
    await page.fill('#password', 'not-the-password');
    await page.click('button[type=submit]');
    await page.waitForFunction(() => document.getElementById('error').textContent.length > 0);
    figures.wrong_password_says = await page.textContent('#error');
    await visit(page, 'sign-in');
    await signIn(page, info.username, password);
    check(new URL(page.url()).pathname === '/', `landed on ${page.url()}`);
    const cookie = (await context.cookies()).find((c) => c.name === 'meridian_session');
    check(cookie && cookie.httpOnly && cookie.sameSite === 'Lax', `session cookie: ${JSON.stringify(cookie && { ...cookie, value: '…' })}`);

    // --- workspaces: the demo's workspace, its agent's region, app links.
    await page.waitForSelector('[data-workspace=dev] .agent-state');
    const agentState = await page.textContent('[data-workspace=dev] [data-agent=main] .agent-state');
    check(agentState.includes('connected to frankfurt'), `agent state: ${agentState}`);
    // The first load picks the lowest-latency healthy region once (the primary is where the browser is).
    await page.waitForFunction(() => localStorage.getItem('meridian.region') !== null, null, { timeout: 20000 });
    figures.first_pick = await page.evaluate(() => localStorage.getItem('meridian.region'));
    // The browser runs beside the primary; every other region is tens of
    // milliseconds away through the simulated links.
    check(figures.first_pick === 'primary', `the first load picked ${figures.first_pick}, not the nearest region (primary)`);
    // The expected round trip through each region: browser → region, plus the
    // relays' measured link to the agent's region (frankfurt); the best marked.
    const paths = '[data-workspace=dev] [data-app=code] li[data-ms]';
    await page.waitForFunction((sel) => document.querySelectorAll(sel).length >= 4, paths, { timeout: 30000 });
    const rows = await page.$$eval(paths, (li) => li.map((l) => [l.dataset.region, Number(l.dataset.ms), l.classList.contains('best')]));
    figures.expected_ms = Object.fromEntries(rows.map(([r, ms]) => [r, ms]));
    const marked = rows.filter((r) => r[2]);
    check(marked.length === 1 && marked[0][1] === Math.min(...rows.map((r) => r[1])), `best path: ${JSON.stringify(rows)}`);
    check(figures.expected_ms.sydney > figures.expected_ms.frankfurt && figures.expected_ms.virginia > figures.expected_ms.frankfurt,
      `expected round trips ignore the distance to the agent: ${JSON.stringify(rows)}`);
    await visit(page, 'workspaces');

    // Choose virginia: app links follow, and one opens the app through it.
    await page.selectOption('#region-picker', 'virginia');
    const link = await page.getAttribute('[data-workspace=dev] [data-app=code] a.app-link', 'href');
    check(new URL(link).host.includes('.virginia.localhost:'), `app link not through virginia: ${link}`);
    const [app] = await Promise.all([context.waitForEvent('page'), page.click('[data-workspace=dev] [data-app=code] a.app-link')]);
    await app.waitForURL((u) => u.host === new URL(link).host && !u.search.includes('meridian_app_ticket'), { timeout: 20000 });
    const served = JSON.parse(await app.textContent('body'));
    check(served.method === 'GET', `the app answered ${JSON.stringify(served).slice(0, 200)}`);
    figures.app_opened = app.url();
    await app.close();
    figures.best_path = await page.textContent('[data-workspace=dev] [data-app=code] li.best');

    // --- regions: latencies in the order of the simulated geography.
    await page.goto(`${base}/regions`);
    await page.waitForFunction(() => [...document.querySelectorAll('#regions .latency')].filter((c) => /ms/.test(c.textContent)).length >= 4, null, { timeout: 40000 });
    const ms = await latencies(page);
    figures.latency_ms = ms;
    check(ms.primary < ms.virginia && ms.virginia < ms.frankfurt && ms.frankfurt < ms.sydney, `latencies out of geographic order: ${JSON.stringify(ms)}`);
    await visit(page, 'regions');

    // --- a region killed through the fault controller: unreachable on the
    // page, and a picker set to it falls back to the primary, visibly.
    await page.selectOption('#region-picker', 'sydney');
    const killed = Date.now();
    await fault('inject', 'kill-region', 'sydney');
    await page.waitForFunction(() => document.querySelector('#regions [data-region=sydney] .status').textContent === 'unreachable', null, { timeout: 30000 });
    figures.death_to_page_ms = Date.now() - killed;
    check(figures.death_to_page_ms <= 2 * Number(intervalMs) + 3000, `unreachable shown ${figures.death_to_page_ms} ms after the kill (health interval ${intervalMs} ms)`);
    await page.waitForFunction(() => localStorage.getItem('meridian.region') === 'primary' && !document.getElementById('notice').hidden);
    figures.fallback_notice = await page.textContent('#notice');
    check(await page.inputValue('#region-picker') === 'primary', 'the picker did not fall back to the primary');
    await visit(page, 'regions-fallback');
    await fault('heal', 'kill-region', 'sydney');

    // --- admin: create a member through the page.
    await page.goto(`${base}/admin`);
    await page.fill('#user-name', 'member');
    await page.fill('#user-password', 'member-password');
    await page.click('#create-user button[type=submit]');
    await page.waitForFunction(() => document.getElementById('user-result').textContent.includes('member'));
    await page.waitForSelector('#admin-regions [data-region=frankfurt] table');
    // The audit log shows the member's creation, and filters by kind of action.
    await page.waitForSelector('#audit-rows tr[data-action="user.create"][data-target=member]');
    await page.fill('#audit-action', 'region');
    await page.click('#audit-filter button[type=submit]');
    await page.waitForFunction(() => {
      const rows = [...document.querySelectorAll('#audit-rows tr')];
      return rows.length > 0 && rows.every((r) => r.dataset.action.startsWith('region.'));
    });
    await visit(page, 'admin');

    // --- connections: the app session opened through virginia, with its user and region.
    await page.goto(`${base}/connections`);
    // The record arrives once the session has been idle 2 s: filter again until it shows.
    const until = Date.now() + 30000;
    while (!(await page.$('#conn-rows tr[data-kind=app][data-region=virginia]')) && Date.now() < until) {
      await page.click('#conn-filter button[type=submit]');
      await page.waitForSelector('#conn-rows tr[data-region=virginia]', { timeout: 1000 }).catch(() => {});
    }
    await page.waitForFunction((user) => {
      const rows = [...document.querySelectorAll('#conn-rows tr[data-kind=app][data-region=virginia]')];
      return rows.length === 1 && rows[0].children[2].textContent === user && rows[0].dataset.ending === 'idle';
    }, info.username, { timeout: 30000 }).catch(async (e) => {
      throw new Error(`${e.message}; the page shows: ${await page.textContent('#conn-rows')} ${await page.textContent('#conn-error')}`);
    });
    check(!(await page.isHidden('#conn-user')), 'an admin cannot filter by user');
    await page.selectOption('#conn-kind', 'refused');
    await page.click('#conn-filter button[type=submit]');
    await page.waitForFunction(() => document.querySelectorAll('#conn-rows tr[data-kind=app]').length === 0);
    await page.selectOption('#conn-kind', 'app');
    await page.fill('#conn-region', 'virginia');
    await page.click('#conn-filter button[type=submit]');
    await page.waitForSelector('#conn-rows tr[data-region=virginia]');
    figures.connection_row = await page.textContent('#conn-rows tr[data-region=virginia]');
    await visit(page, 'connections');

    // --- workspaces: create one (tokens shown once), then delete it (confirmed).
    await page.goto(`${base}/`);
    await page.fill('#ws-name', 'scratch');
    await page.fill('#ws-apps', 'notes=8888 public\ndb/adminer=8081 authenticated');
    await page.click('#create-workspace button[type=submit]');
    // The tokens, or the page's own account of why not.
    await page.waitForFunction(() => document.getElementById('token-db') || document.getElementById('ws-error').textContent);
    check(await page.$('#token-db') !== null, `creating the workspace failed: ${await page.textContent('#ws-error')}`);
    check((await page.textContent('#token-main')).length > 20, 'no agent token shown');
    await page.waitForSelector('[data-workspace=scratch] [data-agent=db] [data-app=adminer]');
    const shared = await page.textContent('[data-workspace=scratch] [data-agent=db] [data-app=adminer] td:nth-child(2)');
    check(shared === 'authenticated', `adminer shared with ${shared}`);
    await visit(page, 'workspace-created');
    await page.click('[data-workspace=scratch] h3 button.danger');
    await page.waitForSelector('[data-workspace=scratch]', { state: 'detached' });

    // --- CSRF: a cookie-signed state change without Origin, or from another origin, is refused.
    const noOrigin = await page.request.post(`${base}/api/v2/regions`, { data: { name: 'csrf-a' } });
    check(noOrigin.status() === 403, `no Origin: HTTP ${noOrigin.status()}`);
    const foreign = await page.request.post(`${base}/api/v2/regions`, { data: { name: 'csrf-b' }, headers: { origin: 'http://evil.localhost:9' } });
    check(foreign.status() === 403, `foreign Origin: HTTP ${foreign.status()}`);
    figures.csrf_refusal = (await foreign.json()).message;

    // --- a member: no admin link, and the admin page is 403.
    const member = await browser.newContext();
    const mpage = await member.newPage();
    mpage.on('console', (m) => { if (/Content Security Policy|Refused to/.test(m.text())) problems.push(m.text()); });
    await mpage.goto(`${base}/`);
    await signIn(mpage, 'member', 'member-password');
    check(await mpage.$('nav a[href="/admin"]') === null, 'a member sees the admin link');
    const refused = await mpage.goto(`${base}/admin`);
    check(refused.status() === 403, `member on /admin: HTTP ${refused.status()}`);
    await visit(mpage, 'member-admin-403');
    // Their connections page: their own sessions only (none), no user filter,
    // and the API refuses them another user's.
    await mpage.goto(`${base}/connections`);
    await mpage.waitForFunction(() => document.getElementById('conn-older').hidden && document.getElementById('conn-rows').children.length === 0);
    check(await mpage.isHidden('#conn-user'), 'a member is offered a user filter');
    const others = await mpage.evaluate(async () => (await fetch('/api/v2/connection-log?user=admin')).status);
    check(others === 403, `a member reading the admin's connections: HTTP ${others}`);
    await visit(mpage, 'member-connections');

    // --- users: the admin suspends the member from the users table; the
    // member's session ends at once; reactivated, they may sign in again.
    await page.goto(`${base}/admin`);
    await page.waitForSelector('#user-rows tr[data-user=member][data-status=active]');
    check((await page.textContent('#user-rows tr[data-user=member] td:nth-child(3)')) === 'password', 'sign-in type');
    await page.click('#user-rows tr[data-user=member] button.suspend');
    await page.waitForSelector('#user-rows tr[data-user=member][data-status=suspended]');
    check((await page.textContent('#user-rows tr[data-user=member] td:nth-child(6)')) === '0', 'a suspended member keeps sessions');
    const cut = await mpage.evaluate(async () => (await fetch('/api/v2/users/me')).status);
    check(cut === 401, `the suspended member's session: HTTP ${cut}`);
    await page.waitForSelector('#audit-rows tr[data-action="user.suspend"][data-target=member]');
    await visit(page, 'admin-user-suspended');
    await page.click('#user-rows tr[data-user=member] button.activate');
    await page.waitForSelector('#user-rows tr[data-user=member][data-status=active]');
    await mpage.goto(`${base}/`);
    await signIn(mpage, 'member', 'member-password');
    const back = await mpage.evaluate(async () => (await fetch('/api/v2/users/me')).status);
    check(back === 200, `the reactivated member signed in: HTTP ${back}`);
    await member.close();

    // --- sign out ends the session on the server, not only in the browser.
    await page.goto(`${base}/`);
    await Promise.all([page.waitForURL(/\/login/), page.click('#sign-out')]);
    const after = await fetch(`${base}/api/v2/users/me`, { headers: { cookie: `meridian_session=${cookie.value}` } });
    check(after.status === 401, `the old session still works after sign-out: HTTP ${after.status}`);

    check(problems.length === 0, `the pages reported: ${problems.join(' | ')}`);
    console.log(JSON.stringify(figures));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e.stack || e.message || e);
  process.exit(1);
});
