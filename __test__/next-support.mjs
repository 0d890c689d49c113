// Shared by the Next.js tests (next.test.mjs, next-custom-server.test.mjs): a server process in
// its own process group, and a JSON POST.

import { spawn } from 'node:child_process'

import { waitUntil } from './helpers.mjs'

/**
 * `node <args>` in `cwd`, in its own process group, so that stopping it stops whatever it
 * started. `ready` waits (bounded, no HTTP request made) for its output to match `readyLine`.
 */
export function startProcess(args, { cwd, env, readyLine, label, timeout = 120_000 }) {
  const child = spawn(process.execPath, args, { cwd, env: { ...process.env, ...env }, detached: true })
  let out = ''
  child.stdout.on('data', (d) => (out += d))
  child.stderr.on('data', (d) => (out += d))
  const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve(code ?? signal)))
  return {
    output: () => out,
    exited,
    ready: () => waitUntil(() => readyLine.test(out) || child.exitCode !== null, { timeout, interval: 100, label }),
    async stop() {
      try {
        process.kill(-child.pid, 'SIGTERM')
      } catch {
        return
      }
      const timer = setTimeout(() => {
        try {
          process.kill(-child.pid, 'SIGKILL')
        } catch {
          // already gone
        }
      }, 10_000)
      await exited
      clearTimeout(timer)
    },
  }
}

export async function postJson(url, body, headers = {}) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  })
  return { status: res.status, json: await res.json() }
}
