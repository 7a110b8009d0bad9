// Signing in through a real OpenID provider (oidc-provider.mjs) in Chromium:
// the sign-in page's provider link, the provider's own sign-in and consent
// pages, back to the dashboard signed in, then an app through a region; the
// role following the provider's groups; each broken ID token, a replayed
// state and each user the policy keeps out getting its page.
//
// Usage: node oidc.js '<json: {coordinator, app_url, control_url, accounts}>'
// Exits non-zero with the reason on the first failure; prints what it saw.
'use strict';
const fs = require('fs');
const launch = require('./launch');

const info = JSON.parse(process.argv[2]);
const seen = {};

function check(ok, what) {
  if (!ok) throw new Error(what);
}

async function control(body) {
  const resp = await fetch(`${info.control_url}/__control`, { method: 'POST', body: JSON.stringify(body) });
  check(resp.ok, `provider control: HTTP ${resp.status}`);
}

function setAccounts(accounts) {
  fs.writeFileSync(info.accounts, JSON.stringify(accounts));
}

// Signs `login` in through the provider from the coordinator's sign-in page,
// in a fresh browser context; the page and the status of the page it ends
// on (the coordinator's callback's answer, or where that led).
async function signIn(browser, login, capture) {
  const context = await browser.newContext();
  const page = await context.newPage();
  let callback = null;
  page.on('request', (r) => { if (r.url().includes('/api/v2/users/oidc/callback')) callback = r.url(); });
  await page.goto(`${info.coordinator}/login`);
  await page.click('#oidc-sign-in');
  // The provider's pages: its sign-in form, then its consent, until it sends the browser back.
  for (let i = 0; i < 4 && !page.url().startsWith(info.coordinator); i++) {
    await page.waitForLoadState();
    if (await page.$('input[name=login]')) {
      await page.fill('input[name=login]', login);
      await page.fill('input[name=password]', 'any password');
      await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    } else if (await page.$('button[type=submit]')) {
      await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    }
  }
  check(page.url().startsWith(info.coordinator), `${login}: still at ${page.url()}`);
  const status = await page.evaluate(() => document.body.dataset.page);
  if (capture) capture.callback = callback;
  return { context, page, status };
}

async function reason(page) {
  const r = await page.$('#reason');
  return r ? r.textContent() : `(no reason on ${page.url()}: ${(await page.content()).slice(0, 300)})`;
}

async function refused(browser, login, expected) {
  const { context, page, status } = await signIn(browser, login);
  check(status === 'error', `${login} was signed in (page ${status}) though ${expected} was expected`);
  const why = await reason(page);
  check(why.includes(expected), `${login}: the page says ${JSON.stringify(why)}, not ${JSON.stringify(expected)}`);
  await context.close();
  return why;
}

(async () => {
  setAccounts({
    alice: { email: 'alice@example.com', groups: ['engineering', 'meridian-admins'] },
    mallory: { email: 'mallory@example.com', groups: ['sales'] },
    carol: { email: 'carol@elsewhere.org', groups: ['engineering'] },
  });
  const browser = await launch();
  try {
    // --- a sign-in verified with the provider's first key (mallory's group
    // is not allowed, but only a verified ID token tells), then the provider
    // rotates its key, the old one withdrawn: alice's sign-in next is verified
    // with the new one, discovered at its start. (The provider forgets its
    // grants as it rotates, so this comes before anyone holds a refresh token.)
    await refused(browser, 'mallory', 'not in a group allowed');
    await control({ rotate: true });

    // --- alice signs in through the provider: the dashboard, as an admin, and an app through a region.
    const capture = {};
    const first = await signIn(browser, 'alice', capture);
    check(first.status === 'workspaces', `alice landed on ${first.page.url()} (${first.status}): ${await reason(first.page)}`);
    check((await first.page.textContent('#whoami')).trim() === 'alice', 'not signed in as alice');
    const me = await first.page.evaluate(async () => (await fetch('/api/v2/users/me')).json());
    check(me.admin === true, `alice is not an admin though in meridian-admins: ${JSON.stringify(me)}`);
    check(await first.page.$('nav a[href="/admin"]') !== null, 'no admin link for an admin');
    const app = await first.page.goto(info.app_url);
    check(app.status() === 200, `the app through the region: HTTP ${app.status()}`);
    seen.app = (await first.page.content()).slice(0, 80);
    // The same callback again: a state is good once.
    const replay = await first.page.goto(capture.callback);
    check(replay.status() === 400, `a replayed callback: HTTP ${replay.status()}`);
    seen.replayed_state = await reason(first.page);
    check(seen.replayed_state.includes('already completed'), seen.replayed_state);
    await first.context.close();

    // --- out of meridian-admins: a member at the next sign-in.
    setAccounts({
      alice: { email: 'alice@example.com', groups: ['engineering'] },
      mallory: { email: 'mallory@example.com', groups: ['sales'] },
      carol: { email: 'carol@elsewhere.org', groups: ['engineering'] },
    });
    const second = await signIn(browser, 'alice');
    check(second.status === 'workspaces', `alice's second sign-in: ${await reason(second.page)}`);
    const member = await second.page.evaluate(async () => (await fetch('/api/v2/users/me')).json());
    check(member.admin === false, `alice is still an admin after leaving the group: ${JSON.stringify(member)}`);
    await second.context.close();

    // --- each broken ID token is refused with its reason.
    for (const [mutate, expected] of [
      ['aud', 'wrong audience'], ['iss', 'wrong issuer'], ['exp', 'expired'], ['sig', 'signature does not verify'],
    ]) {
      await control({ mutate });
      seen[`token_${mutate}`] = await refused(browser, 'alice', expected);
    }
    await control({ mutate: null });

    // --- the policy: a group not allowed, an e-mail domain not allowed.
    seen.not_in_group = await refused(browser, 'mallory', 'not in a group allowed');
    seen.wrong_domain = await refused(browser, 'carol', 'not a verified one in a domain allowed');

    // --- alice leaves the allowed group: refused, and suspended.
    setAccounts({ alice: { email: 'alice@example.com', groups: ['sales'] } });
    seen.left_group = await refused(browser, 'alice', 'not in a group allowed');
    setAccounts({ alice: { email: 'alice@example.com', groups: ['engineering'] } });
    seen.suspended = await refused(browser, 'alice', 'suspended');
  } finally {
    await browser.close();
  }
  process.stdout.write(`${JSON.stringify(seen)}\n`);
})().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
