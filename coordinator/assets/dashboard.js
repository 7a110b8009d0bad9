// Meridian's dashboard. Plain JavaScript, no build step: the coordinator serves
// this file as it is. Every page is filled from the JSON API; untrusted text is
// only ever set as textContent. The page's id is <body data-page>.
'use strict';

const PICK_KEY = 'meridian.region';
const STATUS_EVERY_MS = 2000; // region statuses: at most this far behind
const LATENCY_EVERY_MS = 30000; // browser → region round trips
const WORKSPACES_EVERY_MS = 5000;

const state = { regions: [], latency: {}, measured: false, workspaces: [], me: null };

// --- helpers ----------------------------------------------------------------

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: 'same-origin' };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (resp.status === 401) {
    location.assign(`/login?redirect=${encodeURIComponent(location.pathname)}`);
    throw new Error('Your session ended; sign in again.');
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) throw new Error((data && data.message) || `HTTP ${resp.status}`);
  return data;
}

// el('a', {href: x, class: 'y'}, 'text', child...) — attributes and text, never HTML.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c !== undefined && c !== null) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function ago(iso) {
  if (!iso) return 'never';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function notice(text) {
  const n = document.getElementById('notice');
  if (!n) return;
  n.textContent = text || '';
  n.hidden = !text;
}

function showError(id, e) {
  const n = document.getElementById(id);
  if (n) n.textContent = e ? (e.message || String(e)) : '';
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = 'Copied';
  } catch {
    button.textContent = 'Select and copy';
  }
}

// --- regions, latency and the picker -----------------------------------------

function region(name) {
  return state.regions.find((r) => r.name === name);
}

// The region app links go through: the chosen one, or the primary.
function selected() {
  const r = region(localStorage.getItem(PICK_KEY));
  return r && r.healthy ? r : region('primary');
}

async function refreshRegions() {
  try {
    state.regions = (await api('GET', '/api/v2/regions')).regions;
  } catch (e) {
    notice(`Cannot load regions: ${e.message}`);
    return;
  }
  applyChoice();
  render();
}

// One round trip to `base`/latency-check, read from the Resource Timing API
// (the region answers Timing-Allow-Origin for this origin): request start to
// first response byte, so connection set-up is not counted.
async function roundTrip(base) {
  const url = `${base}/latency-check?m=${Date.now()}-${Math.random().toString(36).slice(2)}`;
  const resp = await fetch(url, { mode: 'cors', cache: 'no-store', credentials: 'omit' });
  await resp.arrayBuffer();
  const entry = performance.getEntriesByName(url).pop();
  if (!entry) return null;
  return entry.requestStart > 0 && entry.responseStart > 0 ? entry.responseStart - entry.requestStart : entry.duration;
}

async function measure() {
  await Promise.all(state.regions.filter((r) => r.healthy && r.access_url).map(async (r) => {
    const base = r.access_url.replace(/\/$/, '');
    let best = null;
    for (let i = 0; i < 3; i++) {
      try {
        const ms = await roundTrip(base);
        if (ms !== null && (best === null || ms < best)) best = ms;
      } catch { /* unreachable now: no figure */ }
    }
    if (best !== null) state.latency[r.name] = Math.round(best);
    else delete state.latency[r.name];
  }));
  performance.clearResourceTimings();
  state.measured = true;
  applyChoice();
  render();
}

// First load: the lowest-latency healthy region, once (then it stays, no
// flapping). A chosen region that is no longer healthy: back to the primary,
// said in the notice; the user may choose it again.
function applyChoice() {
  const choice = localStorage.getItem(PICK_KEY);
  if (!choice && state.measured) {
    const healthy = state.regions.filter((r) => r.healthy && state.latency[r.name] !== undefined);
    healthy.sort((a, b) => state.latency[a.name] - state.latency[b.name]);
    if (healthy.length) {
      localStorage.setItem(PICK_KEY, healthy[0].name);
      notice(`Picked ${healthy[0].display_name}: the lowest latency from this browser (${state.latency[healthy[0].name]} ms).`);
    }
    return;
  }
  const r = region(choice);
  if (choice && choice !== 'primary' && state.regions.length && (!r || !r.healthy)) {
    localStorage.setItem(PICK_KEY, 'primary');
    const why = r ? `is ${r.status}` : 'no longer exists';
    notice(`Region ${choice} ${why}: app links now go through primary. Choose ${choice} again once it is healthy.`);
  }
}

function renderPicker() {
  const picker = document.getElementById('region-picker');
  if (!picker) return;
  const current = selected();
  picker.replaceChildren(...state.regions.map((r) => {
    const ms = state.latency[r.name];
    const label = `${r.display_name}${ms !== undefined ? ` (${ms} ms)` : ''}${r.healthy ? '' : ` — ${r.status}`}`;
    return el('option', { value: r.name, disabled: !r.healthy, selected: current && current.name === r.name }, label);
  }));
}

// --- apps ----------------------------------------------------------------------

// The app's URL through `r`: subdomain or path form, as the app declares.
function appUrl(r, ws, agent, app) {
  const base = new URL(r.access_url);
  if (app.subdomain && r.wildcard_hostname) {
    const name = `${app.slug}--${agent.name}--${ws.name}--${ws.owner}`;
    return `${base.protocol}//${r.wildcard_hostname.replace('*', name)}/`;
  }
  const root = (r.path_app_url || r.access_url).replace(/\/$/, '');
  const target = ws.agents.length > 1 ? `${ws.name}.${agent.name}` : ws.name;
  return `${root}/@${ws.owner}/${target}/apps/${app.slug}/`;
}

// The port form (owner only): the agent's port straight through `r`.
function portUrl(r, ws, agent, app) {
  if (!app.port || !r.wildcard_hostname) return null;
  const base = new URL(r.access_url);
  return `${base.protocol}//${r.wildcard_hostname.replace('*', `${app.port}--${agent.name}--${ws.name}--${ws.owner}`)}/`;
}

// Expected round trip through region `r` to an agent attached to `home`:
// browser → r, plus r → home over the relays' measured link when they differ.
function expected(r, home) {
  const toRegion = state.latency[r.name];
  if (toRegion === undefined) return { missing: 'not measured from this browser' };
  if (!home || home === r.name) return { ms: toRegion, link: 0 };
  const link = (r.links || []).find((l) => l.region === home);
  return link ? { ms: toRegion + link.rtt_ms, link: link.rtt_ms } : { missing: `${toRegion} ms + the link to ${home} (not measured yet)` };
}

function paths(agent) {
  const rows = state.regions.filter((r) => r.healthy).map((r) => ({ r, e: expected(r, agent.region) }));
  const known = rows.filter((x) => x.e.ms !== undefined);
  const best = known.length ? known.reduce((a, b) => (b.e.ms < a.e.ms ? b : a)) : null;
  return el('ul', { class: 'paths' }, rows.map(({ r, e }) => el('li', { class: best && best.r === r ? 'best' : null, 'data-region': r.name, 'data-ms': e.ms },
    `${r.display_name}: `,
    e.ms !== undefined ? `${e.ms} ms` + (e.link ? ` (${state.latency[r.name]} + ${e.link} to ${agent.region})` : '') : e.missing,
    best && best.r === r ? ' — best path' : '')));
}

// The signed-in user's name (the page's header says it).
function whoami() {
  const me = document.getElementById('whoami');
  return me ? me.textContent : null;
}

// The web terminal of an agent (its owner's only: shells are owner-only).
function terminalUrl(ws, agent) {
  const q = new URLSearchParams({ owner: ws.owner, workspace: ws.name, agent: agent.name });
  return `/terminal?${q}`;
}

function renderWorkspaces() {
  const box = document.getElementById('workspaces');
  if (!box) return;
  const r = selected();
  if (!state.workspaces.length) {
    box.replaceChildren(el('p', {}, 'No workspaces yet. Create one below.'));
    return;
  }
  box.replaceChildren(...state.workspaces.map((ws) => el('article', { class: 'workspace', 'data-workspace': ws.name },
    el('h3', {}, ws.name, ' ', el('button', { type: 'button', class: 'danger', onclick: () => removeWorkspace(ws) }, `Delete ${ws.name}`)),
    ws.agents.map((agent) => el('div', { class: 'agent', 'data-agent': agent.name },
      el('p', {}, el('strong', {}, `Agent ${agent.name}: `),
        el('span', { class: 'agent-state' }, agent.connected
          ? `connected to ${agent.region} since ${ago(agent.last_connected_at)}`
          : `not connected (last seen ${ago(agent.last_connected_at)})`),
        ws.owner === whoami()
          ? [' · ', el('a', { href: terminalUrl(ws, agent), class: 'terminal-link', target: '_blank', rel: 'noopener' }, `Terminal (${agent.name})`)]
          : null),
      el('table', {}, el('caption', {}, `Apps of ${ws.name}/${agent.name} through ${r ? r.display_name : '…'}`),
        el('thead', {}, el('tr', {}, ['App', 'Shared with', 'Open', 'Expected round trip by region'].map((h) => el('th', { scope: 'col' }, h)))),
        el('tbody', {}, agent.apps.map((app) => el('tr', { 'data-app': app.slug },
          el('td', {}, app.slug),
          el('td', {}, app.share),
          el('td', {}, r ? [el('a', { href: appUrl(r, ws, agent, app), class: 'app-link', target: '_blank', rel: 'noopener' }, `${app.slug} via ${r.name}`),
            portUrl(r, ws, agent, app) ? [' · ', el('a', { href: portUrl(r, ws, agent, app), target: '_blank', rel: 'noopener' }, `port ${app.port}`)] : null] : '…'),
          el('td', {}, paths(agent)))))))))));
}

async function loadWorkspaces() {
  try {
    state.workspaces = (await api('GET', '/api/v2/workspaces')).workspaces;
    renderWorkspaces();
  } catch (e) {
    showError('ws-error', e);
  }
}

async function removeWorkspace(ws) {
  if (!confirm(`Delete workspace ${ws.name}? Its agents' tokens stop working.`)) return;
  try {
    await api('DELETE', `/api/v2/workspaces/${encodeURIComponent(ws.owner)}/${encodeURIComponent(ws.name)}`);
    await loadWorkspaces();
  } catch (e) {
    showError('ws-error', e);
  }
}

// "[agent/]slug=port [share]" per line, grouped by agent (`fallback` when none is named).
function parseAgents(text, fallback) {
  const agents = new Map();
  for (const line of text.split('\n').map((l) => l.trim()).filter(Boolean)) {
    const [spec, share] = line.split(/\s+/);
    const [agent, app] = spec.includes('/') ? spec.split('/', 2) : [fallback, spec];
    const [slug, port] = app.split('=');
    if (!agent || !slug || !/^\d+$/.test(port || '')) throw new Error(`"${line}": write [agent/]slug=port [share], e.g. code=8080`);
    if (!agents.has(agent)) agents.set(agent, []);
    agents.get(agent).push({ slug, port: Number(port), share: share || 'owner' });
  }
  if (!agents.size) agents.set(fallback, []);
  return [...agents].map(([name, apps]) => ({ name, apps }));
}

function setupCreateWorkspace() {
  const form = document.getElementById('create-workspace');
  if (!form) return;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    showError('ws-error', null);
    const data = new FormData(form);
    try {
      const body = { name: data.get('name'), agents: parseAgents(data.get('apps'), data.get('agent')) };
      const created = await api('POST', '/api/v2/workspaces', body);
      const list = document.getElementById('tokens');
      list.replaceChildren(...Object.entries(created.agent_tokens).map(([agent, token]) => {
        const code = el('code', { id: `token-${agent}` }, token);
        return el('li', {}, `${agent}: `, code, ' ', el('button', { type: 'button', class: 'secondary', onclick: (e) => copy(token, e.target) }, 'Copy'));
      }));
      document.getElementById('created').hidden = false;
      form.reset();
      await loadWorkspaces();
    } catch (e) {
      showError('ws-error', e);
    }
  });
}

// --- regions page ----------------------------------------------------------------

function renderRegions() {
  const body = document.getElementById('regions');
  if (!body) return;
  const current = selected();
  body.replaceChildren(...state.regions.map((r) => el('tr', { 'data-region': r.name },
    el('th', { scope: 'row' }, r.display_name, current && current.name === r.name ? ' (selected)' : ''),
    el('td', { class: `status status-${r.status}` }, r.status),
    el('td', {}, r.healthy ? 'yes' : 'no'),
    el('td', {}, String((r.replicas || []).length)),
    el('td', {}, r.version || '—'),
    el('td', {}, ago(r.last_heartbeat_at)),
    el('td', {}, r.access_url || '—'),
    el('td', { class: 'latency' }, state.latency[r.name] !== undefined && r.healthy ? `${state.latency[r.name]} ms` : '—'))));
}

// --- admin page --------------------------------------------------------------------

function showToken(name, token) {
  document.getElementById('region-token-name').textContent = name;
  document.getElementById('region-token-value').textContent = token;
  document.getElementById('region-token').hidden = false;
}

function renderAdmin() {
  const box = document.getElementById('admin-regions');
  if (!box) return;
  box.replaceChildren(...state.regions.map((r) => el('article', { class: 'workspace', 'data-region': r.name },
    el('h3', {}, `${r.display_name} (${r.name}) — `, el('span', { class: `status-${r.status}` }, r.status)),
    r.name === 'primary' ? null : el('p', {},
      el('button', { type: 'button', class: 'secondary', onclick: () => regenerate(r) }, `Regenerate token of ${r.name}`), ' ',
      el('button', { type: 'button', class: 'danger', onclick: () => removeRegion(r) }, `Delete ${r.name}`)),
    (r.replicas || []).length
      ? el('table', {}, el('caption', {}, `Replicas of ${r.name}`),
        el('thead', {}, el('tr', {}, ['Replica', 'Status', 'Version', 'Access URL', 'Relay', 'Last heartbeat', 'Last health report errors'].map((h) => el('th', { scope: 'col' }, h)))),
        el('tbody', {}, r.replicas.map((p) => el('tr', {},
          el('td', {}, el('code', {}, p.id)), el('td', { class: `status-${p.status}` }, p.status), el('td', {}, p.version),
          el('td', {}, p.access_url), el('td', {}, p.relay_address || '—'), el('td', {}, ago(p.last_heartbeat_at)),
          el('td', { class: p.error ? 'error' : null }, p.error || 'none')))))
      : el('p', {}, 'No replica registered.'))));
}

async function regenerate(r) {
  if (!confirm(`Regenerate the proxy token of ${r.name}? Its running proxies are refused until they get the new one.`)) return;
  try {
    showToken(r.name, (await api('POST', `/api/v2/regions/${encodeURIComponent(r.name)}/regenerate-token`)).proxy_token);
  } catch (e) {
    showError('region-error', e);
  }
}

async function removeRegion(r) {
  if (!confirm(`Delete region ${r.name}? Its proxies are refused from now on.`)) return;
  try {
    await api('DELETE', `/api/v2/regions/${encodeURIComponent(r.name)}`);
    await refreshRegions();
  } catch (e) {
    showError('region-error', e);
  }
}

async function loadUsers() {
  const rows = document.getElementById('user-rows');
  if (!rows) return;
  try {
    const { users } = await api('GET', '/api/v2/users');
    const me = document.getElementById('whoami')?.textContent;
    rows.replaceChildren(...users.map((u) => el('tr', { 'data-user': u.username, 'data-status': u.status },
      el('td', {}, u.username), el('td', {}, u.admin ? 'admin' : 'member'), el('td', {}, u.login_type),
      el('td', { class: `status-${u.status}` }, u.status), el('td', {}, ago(u.last_sign_in_at)), el('td', {}, String(u.sessions)),
      el('td', {}, u.username === me ? 'you' : [
        u.status === 'suspended'
          ? el('button', { type: 'button', class: 'secondary activate', onclick: () => userAction(u, 'activate') }, `Reactivate ${u.username}`)
          : el('button', { type: 'button', class: 'danger suspend', onclick: () => userAction(u, 'suspend') }, `Suspend ${u.username}`),
        ' ',
        el('button', { type: 'button', class: 'secondary sign-out', onclick: () => userAction(u, 'sign-out') }, `Sign ${u.username} out everywhere`)]))));
  } catch (e) {
    showError('users-error', e);
  }
}

async function userAction(u, what) {
  const questions = {
    suspend: `Suspend ${u.username}? Their sessions end, and every region cuts what they have open.`,
    'sign-out': `Sign ${u.username} out everywhere? Every region cuts what their sessions opened.`,
  };
  if (questions[what] && !confirm(questions[what])) return;
  showError('users-error', null);
  const name = encodeURIComponent(u.username);
  try {
    if (what === 'sign-out') await api('DELETE', `/api/v2/users/${name}/sessions`);
    else await api('PUT', `/api/v2/users/${name}/status/${what}`);
    await loadUsers();
    loadAudit(false);
  } catch (e) {
    showError('users-error', e);
  }
}

function setupAdmin() {
  loadUsers();
  const regionForm = document.getElementById('create-region');
  if (regionForm) {
    regionForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      showError('region-error', null);
      const data = new FormData(regionForm);
      try {
        const created = await api('POST', '/api/v2/regions', { name: data.get('name'), display_name: data.get('display_name') || undefined });
        showToken(created.region.name, created.proxy_token);
        regionForm.reset();
        await refreshRegions();
      } catch (e) {
        showError('region-error', e);
      }
    });
  }
  const userForm = document.getElementById('create-user');
  if (userForm) {
    userForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      showError('user-error', null);
      const data = new FormData(userForm);
      try {
        const user = await api('POST', '/api/v2/users', { username: data.get('username'), password: data.get('password'), admin: data.get('admin') === 'on' });
        document.getElementById('user-result').textContent = `Created ${user.username}${user.admin ? ' (admin)' : ''}.`;
        userForm.reset();
        loadUsers();
        loadAudit(false);
      } catch (e) {
        showError('user-error', e);
      }
    });
  }
  for (const b of document.querySelectorAll('button.copy')) {
    b.addEventListener('click', () => copy(document.getElementById(b.dataset.copy).textContent, b));
  }
}

// --- logs: the audit log (admin page) and the connection log (connections page) ----------

const LOG_PAGE = 50;

// A log read page by page, newest first: `form` filters it (text fields
// `fields`, datetime fields `times`), `row(entry)` draws an entry, "Older
// records" follows `next`.
function pagedLog({ prefix, path, fields, times, row }) {
  const form = document.getElementById(`${prefix}-filter`);
  if (!form) return;
  let before = null; // the `next` of the last page shown
  const load = async (more) => {
    const q = new URLSearchParams({ limit: String(LOG_PAGE) });
    const data = new FormData(form);
    for (const k of fields) {
      const v = String(data.get(k) || '').trim();
      if (v) q.set(k, v);
    }
    for (const k of times) {
      const v = data.get(k);
      if (v) q.set(k, new Date(v).toISOString());
    }
    if (more && before !== null) q.set('before', String(before));
    showError(`${prefix}-error`, null);
    try {
      const page = await api('GET', `${path}?${q}`);
      const rows = document.getElementById(`${prefix}-rows`);
      if (!more) rows.replaceChildren();
      for (const e of page.entries) rows.append(row(e));
      before = page.next ?? null;
      document.getElementById(`${prefix}-older`).hidden = before === null;
    } catch (e) {
      showError(`${prefix}-error`, e);
    }
  };
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    load(false);
  });
  document.getElementById(`${prefix}-older`).addEventListener('click', () => load(true));
  load(false);
  return load;
}

let loadAudit = () => {};

function setupAudit() {
  loadAudit = pagedLog({
    prefix: 'audit', path: '/api/v2/audit-log', fields: ['user', 'action', 'target'], times: ['since'],
    row: (e) => {
      const changes = Object.keys(e.changes || {}).length ? JSON.stringify(e.changes) : '';
      return el('tr', { 'data-action': e.action, 'data-target': e.target },
        el('td', {}, new Date(e.at).toLocaleString()), el('td', {}, e.actor || '–'), el('td', {}, e.action),
        el('td', {}, e.target), el('td', {}, e.source || '–'), el('td', {}, changes));
    },
  }) || loadAudit;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function setupConnections() {
  // Members see their own sessions: the API answers with nothing else.
  const admin = document.getElementById('whoami')?.dataset.admin === 'true';
  const userFilter = document.getElementById('conn-user-field');
  if (userFilter) userFilter.hidden = !admin;
  pagedLog({
    prefix: 'conn', path: '/api/v2/connection-log', fields: ['user', 'workspace', 'region', 'kind'], times: ['since', 'until'],
    row: (e) => {
      const seconds = ((new Date(e.ended_at) - new Date(e.started_at)) / 1000).toFixed(1);
      const place = `${e.owner}/${e.workspace}${e.agent ? `.${e.agent}` : ''}`;
      const what = e.kind === 'app' ? e.target : `${e.kind} ${e.kind === 'ssh' || e.kind === 'terminal' ? '' : e.target}`.trim();
      const ended = e.reason ? `${e.ending} (${e.reason})` : e.ending;
      return el('tr', { 'data-kind': e.kind, 'data-region': e.region, 'data-ending': e.ending },
        el('td', {}, new Date(e.started_at).toLocaleString()), el('td', {}, `${seconds} s`), el('td', {}, e.user || '–'),
        el('td', {}, e.region), el('td', {}, place), el('td', {}, what), el('td', {}, e.client_addr || '–'),
        el('td', {}, `${bytes(e.bytes_up)} / ${bytes(e.bytes_down)}`), el('td', {}, String(e.requests)), el('td', {}, ended));
    },
  });
}

// --- the page ------------------------------------------------------------------------

function render() {
  renderPicker();
  renderWorkspaces();
  renderRegions();
  renderAdmin();
}

document.addEventListener('DOMContentLoaded', async () => {
  const page = document.body.dataset.page;
  const picker = document.getElementById('region-picker');
  if (picker) {
    picker.addEventListener('change', () => {
      localStorage.setItem(PICK_KEY, picker.value);
      notice(null);
      render();
    });
  }
  const signOut = document.getElementById('sign-out');
  if (signOut) {
    signOut.addEventListener('click', async () => {
      await fetch('/api/v2/users/logout', { method: 'POST', credentials: 'same-origin' });
      location.assign('/login');
    });
  }
  setupCreateWorkspace();
  setupAdmin();
  setupAudit();
  setupConnections();
  await refreshRegions();
  setInterval(refreshRegions, STATUS_EVERY_MS);
  measure();
  setInterval(measure, LATENCY_EVERY_MS);
  if (page === 'workspaces') {
    await loadWorkspaces();
    setInterval(loadWorkspaces, WORKSPACES_EVERY_MS);
  }
});
