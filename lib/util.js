'use strict'
// Small helpers every part of the server side uses: defined here once.

/**
 * An object of keys and values: not null, an array or a Date (a Date in a document or a Where
 * query is a value, never a map of fields).
 * @param {unknown} v
 * @returns {v is Record<string, any>}
 */
function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Date)
}

/**
 * The key the core groups a user's sockets by: `<collection>:<id>`.
 * @param {string} collection
 * @param {string | number} id
 */
function userKey(collection, id) {
  return `${collection}:${id}`
}

/**
 * The room of a collection's events, `collection:<slug>` (`collection:*`: every collection's).
 * @param {string} slug
 */
function collectionRoom(slug) {
  return `collection:${slug}`
}

/**
 * A copy of `value` as JSON carries it (dates as strings, no functions or undefined): what a
 * client will see, taken now so that later changes to the original do not show.
 * @template T
 * @param {T} value
 * @returns {any}
 */
function jsonCopy(value) {
  return JSON.parse(JSON.stringify(value))
}

/**
 * JSON text of a value, or a clear error for what JSON cannot carry.
 * @param {unknown} value
 * @param {string} what names the value in the error
 * @returns {string}
 */
function toJson(value, what) {
  let json
  try {
    json = JSON.stringify(value)
  } catch (/** @type {any} */ err) {
    throw new TypeError(`payload-realtime: ${what} cannot be serialized to JSON: ${err.message}`)
  }
  if (json === undefined) throw new TypeError(`payload-realtime: ${what} cannot be serialized to JSON`)
  return json
}

/**
 * Rejects after `ms` unless `promise` settles first.
 * @template T
 * @param {Promise<T>} promise
 * @param {number} ms
 * @param {string} what
 * @returns {Promise<T>}
 */
function withTimeout(promise, ms, what) {
  /** @type {NodeJS.Timeout | undefined} */
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms)
  })
  return /** @type {Promise<T>} */ (Promise.race([promise, timeout]).finally(() => clearTimeout(timer)))
}

module.exports = { isPlainObject, userKey, collectionRoom, jsonCopy, toJson, withTimeout }
