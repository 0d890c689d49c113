// ESM entry: the same objects as the CommonJS entry (one module instance, one server registry).
import cjs from './index.js'

export const { uWebSocketPlugin, initUWebSocket, getUWebSocketManager, UWebSocketManager, RealtimeError } = cjs
export default cjs
