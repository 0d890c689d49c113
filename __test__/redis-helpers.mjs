// What the Redis test files share: a real redis-server started on a loopback port (and stopped
// or restarted on the same port), and payload-realtime instances in child processes driven over
// IPC. Without redis-server the tests skip (`skip`), except in CI
// (PAYLOAD_REALTIME_REQUIRE_ALL=1), where a missing Redis fails. Whatever is started is stopped
// by `runCleanups` (register it with `after`).

import { execFileSync, fork, spawn } from 'node:child_process'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { SECRET, waitUntil } from './helpers.mjs'

const here = fileURLToPath(new URL('.', import.meta.url))
const requireAll = process.env.PAYLOAD_REALTIME_REQUIRE_ALL === '1'

function which(cmd) {
  try {
    return (
      execFileSync('sh', ['-c', `command -v ${cmd}`])
        .toString()
        .trim() || null
    )
  } catch {
    return null
  }
}

export const redisServer = which('redis-server')
export const redisCli = which('redis-cli')
export const skip = !redisServer || !redisCli ? 'redis-server is not installed' : false
if (skip && requireAll) throw new Error('redis-server and redis-cli are required here (PAYLOAD_REALTIME_REQUIRE_ALL=1)')

export const cleanups = []
export async function runCleanups() {
  for (const c of cleanups.reverse()) await c()
}

export function cli(port, ...args) {
  return execFileSync(redisCli, ['-p', String(port), ...args])
    .toString()
    .trim()
}

/** Starts redis-server on a loopback port and waits until it answers PING. */
export async function startRedis(port, extra = [], dir) {
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...extra]
  const proc = spawn(redisServer, args, { stdio: 'ignore', cwd: dir ?? tmpdir() })
  const exited = new Promise((resolve) => proc.once('exit', resolve))
  cleanups.push(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL')
      await exited
    }
  })
  await waitUntil(
    () => {
      try {
        return cli(port, 'PING') === 'PONG'
      } catch {
        return false
      }
    },
    { label: `redis on ${port}` },
  )
  return {
    port,
    proc,
    async kill() {
      proc.kill('SIGKILL')
      await exited
    },
  }
}

/**
 * Starts a fixture script in a child process that answers `{ cmd, seq, ... }` messages with
 * `{ re: seq, ... }` after it sent `{ ready: true, ... }`; `call(cmd, args)` waits for the reply.
 */
export async function startChild(script, env) {
  const child = fork(join(here, 'fixtures', script), [], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  })
  const exited = new Promise((resolve) => child.once('exit', resolve))
  const pending = new Map()
  let seq = 0
  const ready = new Promise((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`${script} exited early (${code})`)))
    child.on('message', (m) => {
      if (m.ready) return resolve(m)
      pending.get(m.re)?.(m)
      pending.delete(m.re)
    })
  })
  const info = await ready
  const instance = {
    ...info,
    child,
    exited,
    call(cmd, args = {}) {
      const n = ++seq
      return new Promise((resolve) => {
        pending.set(n, resolve)
        child.send({ cmd, seq: n, ...args })
      })
    },
    async stats() {
      return (await instance.call('stats')).stats
    },
    async close() {
      if (child.exitCode !== null || child.signalCode !== null || !child.connected) return
      // A child that does not answer in time is killed: teardown never hangs.
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
      await Promise.race([instance.call('close'), exited])
      await exited
      clearTimeout(timer)
    },
  }
  cleanups.push(() => instance.close().catch(() => child.kill('SIGKILL')))
  return instance
}

/** A payload-realtime instance (no Payload) in its own process (fixtures/instance.mjs). */
export function startInstance(options) {
  return startChild('instance.mjs', { INSTANCE_OPTIONS: JSON.stringify({ secret: SECRET, ...options }) })
}
