'use strict'
// Payload decides who a socket is (verifyUser) and logout ends live sessions (revocation).
//
// verifyUser: the Rust core has already checked the token's signature and expiry; Payload then
// checks what only it knows (the session `sid` is still in `user.sessions`, the user exists, is
// verified, ...) through `payload.auth()`. The socket's user becomes the user document without
// auth internals (hash, salt, sessions, tokens).
//
// Logout: an `afterLogout` hook closes that session's sockets (4003) at once, on every instance,
// and holds the sid here until the logout is committed, so that a client reconnecting before the
// logout is written is still refused. Once committed, the server remembers the revocation (in
// Redis too, on every instance: see `revokeSession`); a rolled-back logout is forgotten.
// Payload's logout writes the remaining sessions with `db.updateOne` after the hooks: a wrapper
// on it closes, once that write is committed, every other session of the user that is gone too
// (this is how "log out of all sessions" is seen, also from the Local API).

const { afterCommit } = require('./transactions.js')
const { makeFailureLog } = require('../log.js')
const { withoutAuthInternals } = require('./access.js')
const { jsonCopy, userKey } = require('../util.js')

const LOGOUT = Symbol('payload-realtime.logout')
const SWEEP = Symbol.for('payload-realtime.logout-sweep')
const DEFAULT_SESSION_SECONDS = 7200
/**
 * Logouts waiting for their commit, and users whose sessions were seen connecting, held at most:
 * past it the oldest is forgotten (the server's own revocations are bounded by
 * `maxRevokedSessions`; these only bridge a commit, or find the sessions a logout-all ends).
 */
const MAX_TRACKED = 100_000

/** Sets `key` in a Map kept to `max` entries (the oldest inserted goes first). */
function setBounded(map, key, value, max = MAX_TRACKED) {
  map.delete(key)
  map.set(key, value)
  while (map.size > max) map.delete(map.keys().next().value)
}

/** The claims of a JWT, unverified (for tokens Payload has already accepted). */
function decodeClaims(token) {
  try {
    const part = String(token).split('.')[1]
    return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'))
  } catch {
    return undefined
  }
}

/** The token a request authenticated with, from the Authorization header or the cookie. */
function tokenOf(req) {
  const headers = req && req.headers
  if (!headers || typeof headers.get !== 'function') return undefined
  const auth = headers.get('Authorization')
  if (auth && /^(JWT|Bearer) /.test(auth)) return auth.replace(/^(JWT|Bearer) /, '')
  const prefix = (req.payload && req.payload.config && req.payload.config.cookiePrefix) || 'payload'
  const cookie = headers.get('Cookie') || ''
  for (const pair of cookie.split(';')) {
    const i = pair.indexOf('=')
    if (i > 0 && pair.slice(0, i).trim() === `${prefix}-token`) return decodeURIComponent(pair.slice(i + 1).trim())
  }
  return undefined
}

class Sessions {
  /**
   * @param {{ getPayload: () => any, getManager: () => any, logFailure?: (what: string, err: unknown) => void }} deps
   * `logFailure` writes one line per kind of failure per episode (the manager's `makeFailureLog`).
   */
  constructor({ getPayload, getManager, logFailure = makeFailureLog() }) {
    this.getPayload = getPayload
    this.getManager = getManager
    this.logFailure = logFailure
    /** sid -> exp of logouts not committed yet (the server remembers committed ones); bounded */
    this.revoked = new Map()
    /** `<collection>:<id>` -> Map(sid -> exp): sessions seen connecting, to close on logout-all; bounded */
    this.known = new Map()
  }

  _prune(map, now = Date.now() / 1000) {
    for (const [k, exp] of map) if (exp < now) map.delete(k)
  }

  markRevoked(sid, exp) {
    if (!sid) return
    this._prune(this.revoked)
    setBounded(this.revoked, sid, exp ?? Date.now() / 1000 + DEFAULT_SESSION_SECONDS)
  }

  isRevoked(sid) {
    if (!sid) return false
    const exp = this.revoked.get(sid)
    if (exp === undefined) return false
    if (exp < Date.now() / 1000) {
      this.revoked.delete(sid)
      return false
    }
    return true
  }

  _remember(collection, id, sid, exp) {
    if (!sid) return
    const key = userKey(collection, id)
    let sids = this.known.get(key)
    if (!sids) sids = new Map()
    setBounded(this.known, key, sids)
    this._prune(sids)
    setBounded(sids, sid, typeof exp === 'number' ? exp : Date.now() / 1000 + DEFAULT_SESSION_SECONDS, 1000)
  }

  /** The server's `verifyUser`: the user document Payload accepts for this token, or null. */
  verifyUser = async (token, claims) => {
    const payload = this.getPayload()
    if (!payload) {
      this.logFailure('verifyUser', new Error('a socket was refused: Payload is not initialised yet'))
      return null
    }
    const sid = claims && typeof claims.sid === 'string' ? claims.sid : undefined
    if (this.isRevoked(sid)) return null
    const order = (payload.config.auth && payload.config.auth.jwtOrder) || ['JWT', 'Bearer', 'cookie']
    const headers = new Headers({ DisableAutologin: 'true' })
    if (order.includes('JWT')) headers.set('Authorization', `JWT ${token}`)
    else if (order.includes('Bearer')) headers.set('Authorization', `Bearer ${token}`)
    else headers.set('Cookie', `${payload.config.cookiePrefix || 'payload'}-token=${token}`)
    const { user } = await payload.auth({ headers })
    if (!user || !claims) return null
    // The token names the user: Payload must have accepted that very user.
    if (String(user.id) !== String(claims.id) || user.collection !== claims.collection) return null
    // A logout may have been written while Payload was checking.
    if (this.isRevoked(sid)) return null
    this._remember(user.collection, user.id, sid, claims.exp)
    const clean = withoutAuthInternals(user)
    delete clean._sid
    return jsonCopy(clean)
  }

  /**
   * Closes the sessions' sockets on every instance; `remember`: and refuses them from now on.
   * @param {string} collection
   * @param {string | number} id
   * @param {string} [sid]
   * @param {{ exp?: number, remember?: boolean }} [options]
   */
  _revoke(collection, id, sid, { exp, remember = true } = {}) {
    const manager = this.getManager()
    if (!manager) return 0
    if (typeof manager.revokeSession !== 'function') {
      this.logFailure('revoking a session', new Error('this server cannot (manager.revokeSession is missing)'))
      return 0
    }
    try {
      return manager.revokeSession({ collection, id, ...(sid ? { sid } : {}), ...(exp ? { exp } : {}), remember })
    } catch (err) {
      this.logFailure('revoking a session', err)
      return 0
    }
  }

  /** A user was deleted: its sockets are closed and its sessions revoked, on every instance. */
  revokeUser(collection, id) {
    this.known.delete(userKey(collection, id))
    const manager = this.getManager()
    if (manager && typeof manager.updateUser === 'function') {
      try {
        manager.updateUser({ collection, id, doc: null })
        return
      } catch (err) {
        this.logFailure("closing a deleted user's sockets", err)
      }
    }
    this._revoke(collection, id)
  }

  /** The `afterLogout` hook of every auth collection. Returns nothing (the result stays Payload's). */
  afterLogout = ({ req, collection }) => {
    try {
      const user = req && req.user
      if (!user || user.id === undefined) return
      const slug = (collection && collection.slug) || user.collection
      const claims = decodeClaims(tokenOf(req)) || {}
      const sid = user._sid ?? claims.sid
      const exp = typeof claims.exp === 'number' ? claims.exp : undefined
      const useSessions = !(collection && collection.auth && collection.auth.useSessions === false)
      if (!useSessions || !sid) return // no sessions: Payload itself keeps accepting the token
      // Seen by the db.updateOne wrapper that writes the remaining sessions.
      req[LOGOUT] = { collection: slug, id: user.id }
      const allSessions =
        req.searchParams && typeof req.searchParams.get === 'function' && req.searchParams.get('allSessions') === 'true'
      // Closed now everywhere; remembered (refused at every instance's handshake) once the
      // logout is committed: a rolled-back logout does not lock the session out.
      if (allSessions) {
        this._revoke(slug, user.id, undefined, { remember: false })
      } else {
        this.markRevoked(sid, exp)
        this._revoke(slug, user.id, sid, { exp, remember: false })
        afterCommit(
          req,
          () => {
            this.revoked.delete(sid)
            this._revoke(slug, user.id, sid, { exp })
          },
          { onRollback: () => this.revoked.delete(sid), what: 'logout', logFailure: this.logFailure },
        )
      }
    } catch (err) {
      this.logFailure('afterLogout', err)
    }
  }

  /** After the logout's session write is committed: close the sessions that are gone. */
  _sweep(collection, id, remaining) {
    const key = userKey(collection, id)
    const sids = this.known.get(key)
    if (remaining.size === 0) {
      // Every session is gone: the user is revoked as a whole (tokens issued before now).
      this._revoke(collection, id)
      this.known.delete(key)
      return
    }
    if (!sids) return
    for (const [sid, exp] of [...sids]) {
      if (remaining.has(sid)) continue
      sids.delete(sid)
      this._revoke(collection, id, sid, { exp })
    }
  }

  /** Wraps `db.updateOne` (behaviour unchanged) to see the session list a logout writes. */
  installLogoutSweep(db) {
    if (!db || typeof db.updateOne !== 'function' || db[SWEEP]) return
    const sessions = this
    const original = db.updateOne
    Object.defineProperty(db, SWEEP, { value: true, enumerable: false })
    db.updateOne = async function updateOne(args, ...rest) {
      const result = await original.call(this, args, ...rest)
      try {
        const mark = args && args.req && args.req[LOGOUT]
        if (
          mark &&
          args.collection === mark.collection &&
          String(args.id) === String(mark.id) &&
          args.data &&
          Array.isArray(args.data.sessions)
        ) {
          delete args.req[LOGOUT]
          const remaining = new Set(args.data.sessions.map((s) => s && s.id))
          afterCommit(args.req, () => sessions._sweep(mark.collection, mark.id, remaining), {
            what: 'logout',
            logFailure: sessions.logFailure,
          })
        }
      } catch (err) {
        sessions.logFailure('logout bookkeeping', err)
      }
      return result
    }
  }
}

module.exports = { Sessions, decodeClaims }
