'use strict'
// payload-realtime: real-time events for Payload CMS, served by a Rust WebSocket server that
// runs inside this Node process. Drop-in for payload-uwebsocket-plugin (same export names).

const { UWebSocketManager, initUWebSocket, getUWebSocketManager } = require('./lib/manager.js')
const { uWebSocketPlugin } = require('./lib/plugin.js')
const { RealtimeError } = require('./lib/errors.js')

module.exports = {
  uWebSocketPlugin,
  initUWebSocket,
  getUWebSocketManager,
  UWebSocketManager,
  RealtimeError,
}
