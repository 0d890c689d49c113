'use strict'
// Access-aware delivery (`readAccess`): what one user may read of the document behind an event.
//
// - create / update: the document as that user reads it through Payload's Local API
//   (`findByID` with `overrideAccess: false, depth: 0`): collection `read` access, field-level
//   `read` access, hidden fields and afterRead hooks all apply, exactly as Payload applies them.
// - delete: the document is gone, so the collection's `access.read` is evaluated here against the
//   deleted document (a Where answer is matched in memory, see where.js; anything it cannot
//   evaluate denies), then fields whose `access.read` denies, hidden fields and auth internals
//   are removed, and relationships are reduced to ids (depth 0). The same applies to a create or
//   update whose document was deleted before its event was delivered.
//
// Runs from the manager's authorize rule: once per distinct user per event, after the commit,
// never on the write path.

const { matchesWhere } = require('./where.js')
const { isPlainObject, jsonCopy } = require('../util.js')

/** Fields of auth collections that never leave the server, whatever the access rules say. */
const AUTH_INTERNALS = [
  'sessions',
  'hash',
  'salt',
  'password',
  'resetPasswordToken',
  'resetPasswordExpiration',
  '_verificationToken',
  'loginAttempts',
  'lockUntil',
  'apiKey',
  'apiKeyIndex',
]

/** A copy of `doc` without the auth internals (for documents of auth collections). */
function withoutAuthInternals(doc) {
  if (!isPlainObject(doc)) return doc
  const copy = { ...doc }
  for (const key of AUTH_INTERNALS) delete copy[key]
  return copy
}

let payloadModule
/** Payload's own exports (ESM), loaded once, lazily: only delete events need them. */
function loadPayloadModule() {
  if (!payloadModule) payloadModule = import('payload').catch(() => null)
  return payloadModule
}

/** A Local API request acting as `user` (null: anonymous). */
async function requestFor(payload, user) {
  const mod = await loadPayloadModule()
  if (mod && typeof mod.createLocalReq === 'function') {
    return mod.createLocalReq({ user: user ?? undefined, context: {} }, payload)
  }
  // Minimal fallback: what access functions read.
  return { payload, user: user ?? null, context: {}, payloadAPI: 'local', headers: new Headers(), t: (k) => k }
}

function depopulate(value) {
  if (Array.isArray(value)) return value.map(depopulate)
  if (!isPlainObject(value)) return value
  if ('relationTo' in value && 'value' in value) {
    return { relationTo: value.relationTo, value: isPlainObject(value.value) ? value.value.id : value.value }
  }
  return 'id' in value ? value.id : value
}

/**
 * Removes from `data` (in place) the fields `user` may not read: hidden fields, fields whose
 * `access.read` answers falsy (or throws), joins; relationships become ids.
 */
async function stripFields(fields, data, ctx) {
  if (!isPlainObject(data) || !Array.isArray(fields)) return
  for (const field of fields) {
    if (!field || typeof field !== 'object') continue
    if (field.type === 'tabs' && Array.isArray(field.tabs)) {
      for (const tab of field.tabs) {
        if (tab.name) {
          if (!(tab.name in data)) continue
          if (!(await canRead(tab, data, ctx))) delete data[tab.name]
          else await stripFields(tab.fields, data[tab.name], ctx)
        } else {
          await stripFields(tab.fields, data, ctx)
        }
      }
      continue
    }
    if (!field.name) {
      // row, collapsible, unnamed group: their fields live at this level
      if (Array.isArray(field.fields)) await stripFields(field.fields, data, ctx)
      continue
    }
    if (!(field.name in data)) continue
    if (field.hidden === true || field.type === 'join' || !(await canRead(field, data, ctx))) {
      delete data[field.name]
      continue
    }
    const value = data[field.name]
    switch (field.type) {
      case 'group':
        await stripFields(field.fields, value, ctx)
        break
      case 'array':
        if (Array.isArray(value)) for (const row of value) await stripFields(field.fields, row, ctx)
        break
      case 'blocks':
        if (Array.isArray(value)) {
          for (const row of value) {
            if (!isPlainObject(row)) continue
            const block =
              (ctx.payload.blocks && ctx.payload.blocks[row.blockType]) ??
              (field.blockReferences ?? field.blocks ?? []).find(
                (b) => typeof b !== 'string' && b.slug === row.blockType,
              )
            if (block) await stripFields(block.fields, row, ctx)
          }
        }
        break
      case 'relationship':
      case 'upload':
        data[field.name] = depopulate(value)
        break
    }
  }
}

async function canRead(field, siblingData, ctx) {
  const read = field.access && field.access.read
  if (typeof read !== 'function') return true
  try {
    return Boolean(
      await read({ id: ctx.doc.id, blockData: undefined, data: ctx.doc, doc: ctx.doc, req: ctx.req, siblingData }),
    )
  } catch {
    return false
  }
}

/**
 * The event's own copy of the document as `user` may see it, or null when `user` may not read
 * it: for documents no longer in the database (deleted, also by a later write before this event
 * was delivered).
 */
async function readableSnapshot(payload, slug, event, user) {
  const collection = payload.collections[slug]
  if (!collection) return null
  const config = collection.config
  const req = await requestFor(payload, user)
  const doc = isPlainObject(event.doc) ? jsonCopy(event.doc) : { id: event.id }
  const access = await collectionReadAccess(config, req, event.id)
  if (!access) return null
  if (access !== true) {
    if (!isPlainObject(access) || !matchesWhere(access, { ...doc, id: doc.id ?? event.id })) return null
  }
  await stripFields(config.fields, doc, { payload, req, doc })
  return config.auth ? withoutAuthInternals(doc) : doc
}

/** Whether the event's document is still in the database (asked once per event). */
const stillThere = new WeakMap()
function documentExists(payload, slug, event) {
  let answer = stillThere.get(event)
  if (!answer) {
    answer = payload
      .count({ collection: slug, where: { id: { equals: event.id } }, overrideAccess: true })
      .then((r) => r.totalDocs > 0)
      .catch(() => true) // unknown: treat as present, i.e. deny
    stillThere.set(event, answer)
  }
  return answer
}

/**
 * The document as `user` reads it now through the Local API, or null when it may not. If it is
 * gone already (deleted before this event was delivered), the event's own copy is judged instead.
 */
async function readableCurrentDoc(payload, slug, event, user) {
  let doc = null
  try {
    doc = await payload.findByID({
      collection: slug,
      id: event.id,
      user: user ?? undefined,
      overrideAccess: false,
      depth: 0,
      disableErrors: true,
    })
  } catch {
    doc = null // Forbidden, a throwing access function
  }
  if (doc) return payload.collections[slug]?.config?.auth ? withoutAuthInternals(doc) : doc
  if (await documentExists(payload, slug, event)) return null
  return readableSnapshot(payload, slug, event, user)
}

/**
 * The collection's `read` access for `req` (of document `id`, if one): `true`, a Where query,
 * or falsy. Payload's default is any logged-in user; a throw is `false`.
 */
async function collectionReadAccess(config, req, id) {
  try {
    return config.access && typeof config.access.read === 'function'
      ? await config.access.read({ id, collectionConfig: config, data: undefined, req })
      : Boolean(req.user)
  } catch {
    return false
  }
}

/**
 * Whether `user` may read anything of collection `slug`: its `read` access answers `true` or a
 * Where query (which events then match one by one). A throw, or no Payload yet, refuses.
 */
async function mayReadCollection(payload, slug, user) {
  const config = payload?.collections?.[slug]?.config
  if (!config) return false
  let req
  try {
    req = await requestFor(payload, user)
  } catch {
    return false
  }
  const access = await collectionReadAccess(config, req)
  return access === true || isPlainObject(access)
}

/**
 * The authorize answer for `user`: false (may not read it), true (may read it; the event carries
 * no doc), or `{ doc }` with the document as that user reads it.
 */
async function readAccessDecision(payload, slug, event, user) {
  if (!payload) return false
  const doc =
    event.type === 'delete'
      ? await readableSnapshot(payload, slug, event, user)
      : await readableCurrentDoc(payload, slug, event, user)
  if (doc === null) return false
  if (event.doc === undefined) return true // transformEvent removed the doc: keep it out
  return { doc }
}

module.exports = { readAccessDecision, mayReadCollection, withoutAuthInternals, stripFields, AUTH_INTERNALS }
