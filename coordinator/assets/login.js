// The sign-in page: posts the credentials to the API (which sets the
// session cookie) and goes where the page was asked to return to.
'use strict';
document.addEventListener('DOMContentLoaded', () => {
  const form = document.getElementById('sign-in');
  const error = document.getElementById('error');
  if (!form) return; // password sign-in is disabled: only the provider's link
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    const data = new FormData(form);
    const resp = await fetch('/api/v2/users/login', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: data.get('username'), password: data.get('password') }),
    });
    if (resp.ok) {
      location.assign(form.dataset.redirect || '/');
      return;
    }
    const body = await resp.json().catch(() => ({}));
    error.textContent = body.message || `Sign-in failed (HTTP ${resp.status}).`;
    document.getElementById('password').select();
  });
});
