'use strict'
// What lives as long as the process, not as long as one evaluation of this package's modules.
// Next.js evaluates a package's modules again on every dev reload (and a bundle may hold more
// than one copy of them), while the servers they started keep their ports: the servers that
// run, and the process hooks that close them, are kept on `globalThis` under a registered
// symbol, so every copy finds the same ones.
//
// Shutdown: on SIGTERM and SIGINT every server drains (`close()`: new upgrades and `/readyz` get
// 503, every socket 1001 "reconnect elsewhere" and `drainTimeout` to go, then the port is freed);
// when no one else listens for the signal, the signal is then raised again so the process ends as
// it would have. Whoever exits the process (Next's own signal handler calls `process.exit`), the
// `exit` hook closes what still runs, waiting a bounded time for the close frames to go out.

const STATE = Symbol.for('payload-realtime.process')

/** How long the `exit` hook waits for each server's sockets to be told. */
const EXIT_WAIT_MS = 1000

const SIGNALS = ['SIGTERM', 'SIGINT']

function state() {
  if (!globalThis[STATE]) {
    globalThis[STATE] = {
      /** @type {Set<import('./manager').UWebSocketManager>} open servers, oldest first */
      running: new Set(),
      /** Servers the plugin started on a fixed port, to be found again after a reload. */
      byPort: new Map(),
      hooks: null,
    }
  }
  // Each Payload's defaults for `initUWebSocket(port)` (see manager.js), kept here so that the
  // destroy hook an earlier evaluation of the plugin installed forgets what a later one set.
  globalThis[STATE].pluginDefaults ??= new Map()
  return globalThis[STATE]
}

function installHooks(s) {
  if (s.hooks) return
  const onSignal = (signal) => {
    const alone = process.listenerCount(signal) === 1
    const closing = [...s.running].map((m) => m.close())
    Promise.allSettled(closing).then(() => {
      if (!alone) return
      removeHooks(s)
      process.kill(process.pid, signal)
    })
  }
  const onExit = () => {
    for (const m of [...s.running]) m._closeNow(EXIT_WAIT_MS)
  }
  s.hooks = { onSignal, onExit }
  for (const signal of SIGNALS) process.on(signal, onSignal)
  process.on('exit', onExit)
}

function removeHooks(s) {
  if (!s.hooks) return
  for (const signal of SIGNALS) process.removeListener(signal, s.hooks.onSignal)
  process.removeListener('exit', s.hooks.onExit)
  s.hooks = null
}

/** A server started: it is found by `latest()` and closed with the process. */
function started(manager) {
  const s = state()
  s.running.add(manager)
  installHooks(s)
}

/** A server closing: forgotten; the process hooks go with the last one. */
function closing(manager) {
  const s = state()
  s.running.delete(manager)
  for (const [port, entry] of s.byPort) if (entry.manager === manager) s.byPort.delete(port)
  if (s.running.size === 0) removeHooks(s)
}

/** The most recently started server that is still open. */
function latest() {
  let last
  for (const m of state().running) last = m
  return last
}

module.exports = {
  started,
  closing,
  latest,
  byPort: () => state().byPort,
  pluginDefaults: () => state().pluginDefaults,
}
