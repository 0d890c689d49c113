'use strict'
// The plugin's own checks of `uWebSocketPlugin(options)`, at config time: what only the plugin
// reads (`readAccess`, `shouldEmit`, `transformEvent`, `admin`) and the shapes of the rule maps
// it completes. The server options are checked again by the manager when the server starts.

const { isPlainObject } = require('../util.js')

/** @param {unknown} options */
function checkPluginOptions(options) {
  if (!isPlainObject(options)) throw new TypeError('payload-realtime: uWebSocketPlugin(options) takes an object')
  const { includeCollections, readAccess, authorize, rooms, shouldEmit, transformEvent, verifyUser } = options
  if (
    includeCollections !== undefined &&
    (!Array.isArray(includeCollections) || includeCollections.some((s) => typeof s !== 'string'))
  ) {
    throw new TypeError('payload-realtime: `includeCollections` must be an array of collection slugs')
  }
  if (
    readAccess !== undefined &&
    typeof readAccess !== 'boolean' &&
    !(isPlainObject(readAccess) && Object.values(readAccess).every((v) => typeof v === 'boolean'))
  ) {
    throw new TypeError('payload-realtime: `readAccess` must be true, false, or { [slug]: boolean }')
  }
  if (
    authorize !== undefined &&
    (!isPlainObject(authorize) || Object.values(authorize).some((f) => typeof f !== 'function'))
  ) {
    throw new TypeError('payload-realtime: `authorize` must map collection slugs to functions (user, event) => boolean')
  }
  if (rooms !== undefined && (!isPlainObject(rooms) || Object.values(rooms).some((f) => typeof f !== 'function'))) {
    throw new TypeError(
      'payload-realtime: `rooms` must map collection slugs or room patterns to functions (user, room) => boolean',
    )
  }
  for (const [name, fn] of Object.entries({ shouldEmit, transformEvent })) {
    if (fn !== undefined && typeof fn !== 'function') {
      throw new TypeError(`payload-realtime: \`${name}\` must be a function`)
    }
  }
  if (options.admin !== undefined && typeof options.admin !== 'boolean' && !isPlainObject(options.admin)) {
    throw new TypeError('payload-realtime: `admin` must be true, false, or { url?, port?, path? }')
  }
  if (verifyUser !== undefined && verifyUser !== false && typeof verifyUser !== 'function') {
    throw new TypeError('payload-realtime: `verifyUser` must be a function (token, claims) => user | null, or false')
  }
}

module.exports = { checkPluginOptions }
