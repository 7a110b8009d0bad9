// The CLI sign-in page: asks the API for a one-time code (made for the CLI's
// PKCE challenge), then hands it to the CLI's loopback listener, or shows it
// to paste into the CLI.
'use strict';
document.addEventListener('DOMContentLoaded', () => {
  const box = document.getElementById('cli-auth');
  const error = document.getElementById('error');
  document.getElementById('approve').addEventListener('click', async () => {
    error.textContent = '';
    const resp = await fetch('/api/v2/users/cli-auth', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ challenge: box.dataset.challenge }),
    });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      error.textContent = body.message || `HTTP ${resp.status}`;
      return;
    }
    if (box.dataset.callback) {
      const to = new URL(box.dataset.callback);
      to.searchParams.set('code', body.code);
      to.searchParams.set('state', box.dataset.state);
      location.assign(to.toString());
      return;
    }
    document.getElementById('code').textContent = body.code;
    document.getElementById('code-box').hidden = false;
    box.hidden = true;
  });
});
