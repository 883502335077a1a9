// A real OpenID Connect provider for the gateway's tests (tests/test_oidc.py): the
// certified `oidc-provider` package, configured from one JSON file given as the only
// argument. Nothing here imitates the protocol; it only chooses the provider's settings:
//
//   { "port": 0, "issuer": "http://127.0.0.1:PORT", "jwks": {"keys": [private JWKs]},
//     "clients": [...client metadata...], "users": {"alice": {"email": ..., "groups": [...]}},
//     "resources": {"https://gateway.test/api": 60}, "access_ttl_by_client": {"cli": 2},
//     "ttl": {"IdToken": 60} }
//
// Users sign in through the provider's own development login form (any password);
// each grant is given at once (a first-party client: no consent screen). Access tokens
// for a listed resource (RFC 8707 resource indicators) are JWTs (RFC 9068) that also
// carry the user's email and groups, as Entra ID's access tokens carry groups.
// The provider prints "listening <port>" once it accepts connections. Key rotation is a
// restart with another "jwks" (the provider's key store is fixed at construction).
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const users = config.users;
const resources = config.resources;

function account(id) {
  const user = users[id];
  if (!user) return undefined;
  return {
    accountId: id,
    async claims() {
      return {
        sub: id,
        email: user.email,
        email_verified: user.email_verified ?? true,
        name: user.name ?? id,
        groups: user.groups ?? [],
      };
    },
  };
}

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: config.jwks,
  pkce: { required: () => true },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  // The ID token carries the scopes' claims, as Entra ID's and Google's do.
  conformIdTokenClaims: false,
  findAccount: async (_ctx, sub) => account(sub),
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resource, client) => {
        if (!(resource in resources)) throw new Provider.errors.InvalidTarget();
        return {
          scope: 'api',
          audience: resource,
          accessTokenFormat: 'jwt',
          // A client may be given shorter-lived tokens (the tests of expiry).
          accessTokenTTL: config.access_ttl_by_client?.[client.clientId] ?? resources[resource],
        };
      },
    },
  },
  extraTokenClaims: async (_ctx, token) => {
    const user = users[token.accountId];
    if (!user) return undefined;
    return { email: user.email, email_verified: user.email_verified ?? true, groups: user.groups ?? [] };
  },
  // Every grant is given as asked: the gateway is a first-party client.
  loadExistingGrant: async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      const found = await ctx.oidc.provider.Grant.find(grantId);
      if (found) return found;
    }
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile groups');
    for (const resource of Object.keys(resources)) grant.addResourceScope(resource, 'api');
    await grant.save();
    return grant;
  },
  ttl: {
    AuthorizationCode: 60,
    IdToken: 60,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
    ...config.ttl,
  },
});

const server = provider.listen(config.port, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
