// The web terminal (/terminal?owner=&workspace=&agent=). Plain JavaScript over
// the vendored xterm.js (global `Terminal`). It asks the coordinator for a
// stream token and opens a WebSocket through the region picked on the
// dashboard to the agent's reconnecting PTY, naming a session id kept for this
// tab: a reload or a lost connection attaches to the same shell, whose
// scrollback comes first. When a region dies (or goes silent: the agent
// acknowledges every 500 ms, so a partition shows) it goes through the next one;
// keystrokes typed meanwhile, and those a dying connection may have lost,
// are sent again from where the agent says it is.
'use strict';

const PICK_KEY = 'meridian.region';
// Close codes the agent uses: the shell exited; another connection took over.
const EXITED = 4000;
const TAKEN_OVER = 4001;
// The agent acknowledges every 500 ms: a connection silent this long is
// dead (a partitioned region closes nothing), and one not open this long
// never will be; either way the next region is tried.
const DEAD_AFTER_MS = 2000;
const OPEN_WITHIN_MS = 5000;

const params = new URLSearchParams(location.search);
const target = { owner: params.get('owner'), workspace: params.get('workspace'), agent: params.get('agent') };
const sessionKey = `meridian.terminal.${target.owner}/${target.workspace}.${target.agent}`;

function randomHex(bytes) {
  return [...crypto.getRandomValues(new Uint8Array(bytes))].map((b) => b.toString(16).padStart(2, '0')).join('');
}

let session = sessionStorage.getItem(sessionKey) || randomHex(16);
sessionStorage.setItem(sessionKey, session);

const term = new Terminal({ cursorBlink: true, scrollback: 5000, cols: 100, rows: 30 });
window.meridianTerminal = term; // the browser checks read the screen through it
term.open(document.getElementById('terminal'));
term.focus();

const status = (text) => { document.getElementById('term-status').textContent = text; };
document.getElementById('term-target').textContent = `${target.workspace}.${target.agent}`;

let ws = null;
let regions = [];
let attempt = 0;
const encoder = new TextEncoder();

// Keystrokes are numbered as the agent counts them: those it has not
// acknowledged are kept and sent again on the next connection, from where
// the agent says it is (a connection that died may have lost them).
let typed = 0; // bytes typed, in the agent's numbering once synced
let acked = 0;
let unacked = []; // [{ end, bytes }], oldest first
let synced = false; // the current connection said what it received
let numbered = false; // this page's numbering joined the agent's

function send(bytes) {
  typed += bytes.length;
  unacked.push({ end: typed, bytes });
  if (ws && synced) ws.send(bytes);
}

function ack(n) {
  acked = Math.max(acked, n);
  while (unacked.length && unacked[0].end <= acked) unacked.shift();
}

// The agent said it took `n` bytes so far: send what it lacks.
function resync(socket, n) {
  if (!numbered) {
    // This page's first connection: its keystrokes so far follow the agent's count.
    unacked = unacked.map((u) => ({ end: u.end + n, bytes: u.bytes }));
    typed += n;
    acked = n;
    numbered = true;
  }
  ack(n);
  for (const u of unacked) {
    const start = u.end - u.bytes.length;
    socket.send(start < acked ? u.bytes.slice(acked - start) : u.bytes);
  }
  synced = true;
}

term.onData((data) => send(encoder.encode(data)));
term.onResize(({ cols, rows }) => {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ cols, rows }));
});

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: 'same-origin' };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const data = await resp.json().catch(() => null);
  if (!resp.ok) throw new Error((data && data.message) || `HTTP ${resp.status}`);
  return data;
}

// Healthy regions, the dashboard's pick first; the last list when the coordinator is down.
async function regionOrder() {
  try {
    const list = (await api('GET', '/api/v2/regions')).regions.filter((r) => r.healthy && r.access_url);
    const pick = localStorage.getItem(PICK_KEY);
    list.sort((a, b) => (b.name === pick) - (a.name === pick));
    if (list.length) regions = list;
  } catch (e) {
    // The coordinator is unreachable: go on with the regions known.
  }
  return regions;
}

let token = null;
async function streamToken() {
  if (token && Date.parse(token.expires_at) - Date.now() > 30000) return token;
  try {
    const path = `/api/v2/workspaces/${encodeURIComponent(target.owner)}/${encodeURIComponent(target.workspace)}/stream-token`;
    token = await api('POST', path, { agent: target.agent, target: 'terminal' });
  } catch (e) {
    if (!token) throw e; // an expired token still opens a region while the coordinator is down (grace)
  }
  return token;
}

async function connect() {
  let t;
  let list;
  try {
    [t, list] = [await streamToken(), await regionOrder()];
  } catch (e) {
    status(`Cannot open the terminal: ${e.message}`);
    setTimeout(connect, 2000);
    return;
  }
  if (!list.length) {
    status('No healthy region; retrying…');
    setTimeout(connect, 1000);
    return;
  }
  const region = list[attempt % list.length];
  const base = region.access_url.replace(/^http/, 'ws').replace(/\/$/, '');
  const url = `${base}${t.path}?session=${session}&cols=${term.cols}&rows=${term.rows}`;
  const socket = new WebSocket(url, ['meridian.terminal', `meridian.token.${t.token}`]);
  socket.binaryType = 'arraybuffer';
  let first = true;
  let heard = Date.now();
  const watch = setInterval(() => {
    const limit = socket.readyState === WebSocket.OPEN ? DEAD_AFTER_MS : OPEN_WITHIN_MS;
    if (Date.now() - heard <= limit) return;
    // Not waiting for a close handshake the dead path cannot carry.
    socket.onclose = null;
    socket.onmessage = null;
    socket.close();
    lost(socket, 'Connection silent; reconnecting through another region…');
  }, 500);
  socket.onopen = () => {
    heard = Date.now();
    ws = socket;
    synced = false;
    document.body.dataset.region = region.name;
    status(`Connected through ${region.name}.`);
  };
  socket.onmessage = (e) => {
    heard = Date.now();
    if (typeof e.data === 'string') {
      let msg = null;
      try { msg = JSON.parse(e.data); } catch { msg = null; }
      if (msg && typeof msg.received === 'number') resync(socket, msg.received);
      else if (msg && typeof msg.ack === 'number') ack(msg.ack);
      else term.write(`\r\n${e.data}\r\n`);
      return;
    }
    // The first message is the scrollback: what the screen should show now.
    if (first) {
      term.reset();
      first = false;
    }
    term.write(new Uint8Array(e.data));
  };
  socket.onclose = (e) => {
    clearInterval(watch);
    if (e.code === EXITED) {
      lost(socket, null);
      status('The shell exited. Reload the page for a new one.');
      sessionStorage.removeItem(sessionKey);
      return;
    }
    if (e.code === TAKEN_OVER) {
      lost(socket, null);
      status('This terminal was opened elsewhere (another tab). Reload to take it back.');
      return;
    }
    lost(socket, 'Connection lost; reconnecting through another region…');
  };
  const lost = (gone, why) => {
    clearInterval(watch);
    if (ws === gone) {
      ws = null;
      synced = false;
    }
    if (why === null) return;
    attempt += 1; // through the next region
    status(why);
    setTimeout(connect, 250);
  };
}

connect();
