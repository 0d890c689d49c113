'use strict'
// Matches a Payload `Where` query against one document in memory, for documents that are no
// longer in the database (delete events). Supported: equals, not_equals, in, not_in, exists,
// and/or, dotted paths. Anything else cannot be evaluated here and denies (returns false).

const { isPlainObject } = require('../util.js')

class Unsupported extends Error {}

const SUPPORTED = new Set(['equals', 'not_equals', 'in', 'not_in', 'exists'])

/** A relationship value as its id: `{ id }` (populated), `{ relationTo, value }` (polymorphic). */
function scalarOf(v) {
  if (v instanceof Date) return v.toISOString()
  if (isPlainObject(v)) {
    if ('relationTo' in v && 'value' in v) return scalarOf(v.value)
    if ('id' in v) return v.id
    throw new Unsupported('cannot compare an object')
  }
  return v
}

function same(a, b) {
  a = scalarOf(a)
  b = scalarOf(b)
  if (a === null || a === undefined || b === null || b === undefined) {
    return (a === null || a === undefined) && (b === null || b === undefined)
  }
  if (typeof a === 'object' || typeof b === 'object') throw new Unsupported('cannot compare an object')
  // A number field is queried by number: Payload reads '4.0' as 4.
  if (typeof a === 'number' && typeof b === 'string' && b.trim() !== '' && Number.isFinite(Number(b))) {
    return a === Number(b)
  }
  return a === b || String(a) === String(b)
}

/** Every value at `path` (arrays along the way are flattened; missing gives `[undefined]`). */
function valuesAt(doc, path) {
  let current = [doc]
  for (const part of path.split('.')) {
    const next = []
    for (const v of current) {
      if (Array.isArray(v)) {
        for (const item of v) if (isPlainObject(item)) next.push(item[part])
      } else if (isPlainObject(v)) {
        // A populated relationship queried by its id (`author.id`) or a polymorphic one.
        if ('relationTo' in v && 'value' in v && part !== 'relationTo' && part !== 'value') {
          const inner = v.value
          next.push(isPlainObject(inner) ? inner[part] : part === 'id' ? inner : undefined)
        } else next.push(v[part])
      } else if (part === 'id' && v !== null && v !== undefined && typeof v !== 'object') {
        next.push(v) // `author.id` on an unpopulated relationship
      } else {
        next.push(undefined)
      }
    }
    current = next
  }
  // hasMany fields hold arrays: each element is a candidate.
  return current.flatMap((v) => (Array.isArray(v) ? (v.length ? v : [undefined]) : [v]))
}

function listOf(value) {
  if (Array.isArray(value)) return value
  if (typeof value === 'string') return value.split(',')
  if (value === null || value === undefined) throw new Unsupported('in / not_in need a list')
  return [value]
}

function truthy(v) {
  return v === true || v === 'true'
}

function matchCondition(doc, path, condition) {
  if (!isPlainObject(condition)) throw new Unsupported(`condition on ${path} is not an object`)
  const ops = Object.keys(condition)
  if (ops.length === 0) return true
  const values = valuesAt(doc, path)
  for (const op of ops) {
    if (!SUPPORTED.has(op)) throw new Unsupported(`operator ${op}`)
    const want = condition[op]
    let ok
    switch (op) {
      case 'equals':
        ok = values.some((v) => same(v, want))
        break
      case 'not_equals':
        ok = !values.some((v) => same(v, want))
        break
      case 'in': {
        const list = listOf(want)
        ok = values.some((v) => list.some((w) => same(v, w)))
        break
      }
      case 'not_in': {
        const list = listOf(want)
        ok = !values.some((v) => list.some((w) => same(v, w)))
        break
      }
      case 'exists': {
        const present = values.some((v) => v !== undefined && v !== null)
        ok = truthy(want) ? present : !present
        break
      }
    }
    if (!ok) return false
  }
  return true
}

function matchNode(doc, where) {
  if (!isPlainObject(where)) throw new Unsupported('a where query must be an object')
  for (const [key, value] of Object.entries(where)) {
    if (key === 'and' || key === 'or') {
      if (!Array.isArray(value)) throw new Unsupported(`${key} must be an array`)
      // Evaluate every branch: anything unsupported anywhere denies, whatever the other branches say.
      const results = value.map((w) => matchNode(doc, w))
      const ok = key === 'and' ? results.every(Boolean) : results.length === 0 || results.some(Boolean)
      if (!ok) return false
    } else if (!matchCondition(doc, key, value)) {
      return false
    }
  }
  return true
}

/**
 * Whether `doc` matches `where`: true, false, or undefined for what it cannot evaluate (unknown
 * operators, objects compared to objects, malformed queries). The client's live queries answer
 * the same way (lib/client/live-query.mjs `matchWhere`); __test__/contract.test.mjs runs both over
 * one table of cases and fails where both answer and differ.
 * @param {unknown} where
 * @param {unknown} doc
 * @returns {boolean | undefined}
 */
function whereAnswer(where, doc) {
  try {
    return matchNode(doc, where)
  } catch (err) {
    if (err instanceof Unsupported) return undefined
    throw err
  }
}

/**
 * Whether `doc` matches `where`. Returns false for anything it cannot evaluate: deny by default.
 * @param {unknown} where
 * @param {unknown} doc
 */
function matchesWhere(where, doc) {
  return whereAnswer(where, doc) === true
}

module.exports = { matchesWhere, whereAnswer }
