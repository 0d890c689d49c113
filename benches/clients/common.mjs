// What the JS load generators (browser.mjs, ws.mjs) share: their `--key value` options, the token,
// and the stdin/stdout lines benches/loadgen speaks (`measure <expected> <timeout_ms>`, `stats`,
// `quit`; `{"event":"ready"|"armed"|"result"|"stats",...}`), so benches/run.mjs drives them alike.

import { createHash, createHmac } from 'node:crypto'
import { createInterface } from 'node:readline'

const argv = process.argv.slice(2)
/** The value after `--k` on the command line, or `d`. */
export const arg = (k, d) => {
  const i = argv.indexOf(`--${k}`)
  return i >= 0 ? argv[i + 1] : d
}

/** The options both generators take; `conns` defaults to `defaultConns`. */
export function options(defaultConns) {
  const conns = Number(arg('conns', String(defaultConns)))
  return {
    host: arg('host', '127.0.0.1'),
    port: Number(arg('port', '3002')),
    conns,
    offset: Number(arg('offset', '0')),
    users: Math.max(1, Number(arg('users', String(conns)))),
    room: arg('room', 'posts'),
    secret: arg('secret', 'bench-secret'),
  }
}

export const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

/** A token as Payload 3 mints it (HS256, key = sha256(secret) hex, first 32 characters; jwtSign's header). */
export function token(secret, user) {
  const key = createHash('sha256').update(secret).digest('hex').slice(0, 32)
  const now = Math.floor(Date.now() / 1000)
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url')
  const body = `${b64({ alg: 'HS256', authVersion: 1, typ: 'JWT' })}.${b64({
    id: `u${user}`,
    collection: 'users',
    email: `u${user}@example.com`,
    sid: `bench-sid-${user}`,
    iat: now,
    exp: now + 7200,
  })}`
  return `${body}.${createHmac('sha256', key).update(body).digest('base64url')}`
}

export const pct = (sorted, p) => (sorted.length ? sorted[Math.round((sorted.length - 1) * p)] : 0)
export const ms2us = (v) => Math.round(v * 1000)

/**
 * Obeys the stdin commands until `quit` or EOF: `stats()` returns the stats line's fields,
 * `measure(expected, timeoutMs)` runs one round (it prints `armed` and the result itself).
 */
export async function commandLoop({ stats, measure }) {
  for await (const line of createInterface({ input: process.stdin })) {
    const [cmd, expectedS, timeoutS] = line.trim().split(/\s+/)
    if (cmd === 'quit') break
    if (cmd === 'stats') out({ event: 'stats', ...(await stats()) })
    else if (cmd === 'measure') await measure(Number(expectedS), Number(timeoutS))
  }
}

/**
 * A round's `result` line (the fields of benches/loadgen's; those these clients do not measure
 * are 0). Times in ms on the wall clock; `lat` and `recv` sorted; `per` the counts of the
 * sockets that received any.
 */
export function result({
  strayBefore,
  expected,
  delivered,
  armedUs,
  first,
  last,
  lat,
  recv,
  per,
  closedDuring,
  cpuUs,
}) {
  return {
    event: 'result',
    stray_before: strayBefore,
    expected,
    delivered,
    timed_out: delivered < expected,
    armed_us: armedUs,
    first_recv_us: ms2us(first) || 0,
    last_recv_us: ms2us(last),
    latency_samples: lat.length,
    p50_us: ms2us(pct(lat, 0.5)),
    p99_us: ms2us(pct(lat, 0.99)),
    max_us: ms2us(lat.at(-1) ?? 0),
    recv_p50_us: ms2us(pct(recv, 0.5)),
    recv_p99_us: ms2us(pct(recv, 0.99)),
    arrival_samples: 0,
    sockets_receiving: per.length,
    min_per_socket: per.length ? per.reduce((a, b) => Math.min(a, b)) : 0,
    max_per_socket: per.length ? per.reduce((a, b) => Math.max(a, b)) : 0,
    closed_during: closedDuring,
    duplicates: 0,
    out_of_order: 0,
    id_out_of_range: 0,
    cpu_us: cpuUs,
  }
}
