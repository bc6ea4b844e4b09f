// A real OpenID provider for Sluice's single sign-on tests: panva's oidc-provider with one
// static confidential client and the accounts of a JSON file the test rewrites as it goes.
//
//   node provider.js   with PORT, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI,
//                      POST_LOGOUT_REDIRECT_URI and USERS_FILE in the environment.
//
// USERS_FILE maps a login to its claims: {"ann": {"email": ..., "groups": [...]}}. It is
// read again at every userinfo call, so removing someone from a group there takes effect
// at their next sign-in, as at a real identity provider. The sign-in form is oidc-provider's
// devInteractions form (any password); use only logins the file holds.
import fs from 'node:fs';

import Provider from 'oidc-provider';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} must be set`);
  return value;
};

const port = Number(env('PORT'));
const usersFile = env('USERS_FILE');
const users = () => JSON.parse(fs.readFileSync(usersFile, 'utf8'));

const page = (title, body) => `<!DOCTYPE html><html><head><meta charset="utf-8">
<title>${title}</title></head><body><h1>${title}</h1>${body}</body></html>`;

const configuration = {
  clients: [
    {
      client_id: env('CLIENT_ID'),
      client_secret: env('CLIENT_SECRET'),
      redirect_uris: [env('REDIRECT_URI')],
      post_logout_redirect_uris: [env('POST_LOGOUT_REDIRECT_URI')],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_post',
    },
  ],
  // Every authorization request must carry a PKCE challenge (S256 is the only method).
  pkce: { methods: ['S256'], required: () => true },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  // Sluice is a first-party client: consent is implied (no consent page), as a company's
  // identity provider configures its own applications.
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(ctx.oidc.params.scope);
    await grant.save();
    return grant;
  },
  async findAccount(ctx, id) {
    if (!(id in users())) return undefined;
    return {
      accountId: id,
      async claims() {
        const account = users()[id] ?? {};
        return { sub: id, preferred_username: id, email_verified: true, ...account };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      // The default page loads a web font from the internet; this one loads nothing.
      async logoutSource(ctx, form) {
        ctx.body = page(
          'Sign out',
          `${form}<button type="submit" form="op.logoutForm" value="yes" name="logout">` +
            'Yes, sign me out</button>',
        );
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = page('Signed out', '');
      },
    },
  },
  cookies: { keys: ['sluice-test-provider-cookie-key'] },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Provider error', `<pre>${JSON.stringify(out)}</pre>`);
  },
};

const provider = new Provider(`http://127.0.0.1:${port}`, configuration);
provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on http://127.0.0.1:${port}`);
});
