// A real OpenID provider for the end-to-end tests: the `oidc-provider`
// package (a certified implementation) on loopback, with its development
// sign-in pages. Prints one JSON line {issuer} once it listens.
//
// Environment: OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OIDC_ACCOUNTS (a JSON
// file: login name → {email, groups}, read at every sign-in, so a test changes
// someone's groups between two sign-ins).
//
// `POST /__control` with JSON:
// - `{"redirect_uri": URL}` registers the client with that redirect URI (the
//   coordinator's callback, known only once the coordinator runs, which needs
//   this issuer first); until then the provider answers 503.
// - `{"rotate": true}` signs with a new key from now on, the old one withdrawn
//   (between sign-ins: one under way at the provider is lost).
// - `{"refuse_refresh": true}` answers every refresh token with `invalid_grant`,
//   as a provider does once someone was disabled there.
// - `{"mutate": "aud" | "iss" | "exp" | "sig" | null}` makes the ID tokens the
//   token endpoint hands out from then on wrong in that one way (re-signed
//   with the provider's own key, or with a flipped signature byte), so a test
//   shows the relying party refuses each.
import http from 'node:http';
import fs from 'node:fs';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

// The signing key; `{"rotate": true}` replaces it (the old one is gone from the JWKS at once).
let privateKey;
let jwk;
let keys = 0;
async function newKey() {
  ({ privateKey } = await jose.generateKeyPair('RS256', { extractable: true }));
  keys += 1;
  jwk = { ...(await jose.exportJWK(privateKey)), kid: `test-key-${keys}`, alg: 'RS256', use: 'sig' };
}
await newKey();

function account(login) {
  const accounts = JSON.parse(fs.readFileSync(env('OIDC_ACCOUNTS'), 'utf8'));
  return accounts[login] || { email: `${login}@example.com`, groups: [] };
}

function configure(redirectUri) {
  const provider = new Provider(issuer, {
    clients: [{
      client_id: env('OIDC_CLIENT_ID'),
      client_secret: env('OIDC_CLIENT_SECRET'),
      redirect_uris: [redirectUri],
      response_types: ['code'],
      grant_types: ['authorization_code', 'refresh_token'],
    }],
    jwks: { keys: [jwk] },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    claims: {
      openid: ['sub'],
      profile: ['preferred_username', 'name'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    // The requested claims go into the ID token itself (as most providers' do).
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: true } },
    cookies: { keys: ['meridian-test-provider'] },
    async findAccount(ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          const a = account(sub);
          return { sub, preferred_username: sub, name: sub, email: a.email, email_verified: true, groups: a.groups };
        },
      };
    },
  });
  provider.use(async (ctx, next) => {
    await next();
    // As a provider does for someone disabled there: their refresh token is refused.
    if (refuseRefresh && ctx.path === '/token' && ctx.oidc && ctx.oidc.params && ctx.oidc.params.grant_type === 'refresh_token') {
      ctx.status = 400;
      ctx.body = { error: 'invalid_grant', error_description: 'the grant was revoked' };
      return;
    }
    if (mutate && ctx.path === '/token' && ctx.body && ctx.body.id_token) {
      ctx.body = { ...ctx.body, id_token: await mutated(ctx.body.id_token) };
    }
  });
  return provider.callback();
}

let mutate = null;
let refuseRefresh = false;

async function mutated(idToken) {
  if (mutate === 'sig') {
    const [head, body, sig] = idToken.split('.');
    const flipped = (sig[0] === 'A' ? 'B' : 'A') + sig.slice(1);
    return [head, body, flipped].join('.');
  }
  const claims = jose.decodeJwt(idToken);
  const now = Math.floor(Date.now() / 1000);
  if (mutate === 'aud') claims.aud = 'another-client';
  if (mutate === 'iss') claims.iss = 'http://127.0.0.1:9/not-the-issuer';
  if (mutate === 'exp') Object.assign(claims, { iat: now - 7200, exp: now - 3600 });
  return new jose.SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: jwk.kid, typ: 'JWT' }).sign(privateKey);
}

let oidc = null;
let redirect = null;
server.on('request', (req, res) => {
  if (req.url === '/__control' && req.method === 'POST') {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', async () => {
      const asked = JSON.parse(body);
      if (asked.redirect_uri) redirect = asked.redirect_uri;
      if (asked.rotate) await newKey();
      if (asked.redirect_uri || asked.rotate) oidc = configure(redirect);
      if ('mutate' in asked) mutate = asked.mutate || null;
      if ('refuse_refresh' in asked) refuseRefresh = Boolean(asked.refuse_refresh);
      res.writeHead(204).end();
    });
    return;
  }
  if (!oidc) {
    res.writeHead(503).end('not configured yet: POST /__control {"redirect_uri": ...}');
    return;
  }
  oidc(req, res);
});

// Whoever started it may stop reading once it knows the issuer.
process.stdout.on('error', () => {});
process.stdout.write(`${JSON.stringify({ issuer })}\n`);
