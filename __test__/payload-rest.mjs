// Payload's real REST API for the fixture's Payload, without Next: a node:http server handing
// every /api request to `handleEndpoints` from `payload` (the same function Next's route
// handlers call). Other paths go to `fallback` (an origin), so a page and its API share one origin.

import http from 'node:http'

import { handleEndpoints } from 'payload'

/** Resolves `{ origin, url(path), close() }`. */
export async function startRest(ctx, { fallback } = {}) {
  const server = http.createServer(async (req, res) => {
    try {
      const url = new URL(req.url, `http://${req.headers.host}`)
      const chunks = []
      for await (const c of req) chunks.push(c)
      const body = chunks.length ? Buffer.concat(chunks) : undefined
      if (!url.pathname.startsWith('/api/') && fallback) {
        const r = await fetch(`${fallback}${req.url}`)
        res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'text/plain' })
        res.end(Buffer.from(await r.arrayBuffer()))
        return
      }
      const headers = new Headers()
      for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string') headers.set(k, v)
      const request = new Request(url, {
        method: req.method,
        headers,
        body: req.method === 'GET' || req.method === 'HEAD' ? undefined : body,
      })
      const response = await handleEndpoints({
        config: ctx.payload.config,
        request,
        payloadInstanceCacheKey: ctx.key,
      })
      const out = {}
      response.headers.forEach((v, k) => {
        out[k] = v
      })
      res.writeHead(response.status, out)
      res.end(Buffer.from(await response.arrayBuffer()))
    } catch (err) {
      res.writeHead(500, { 'content-type': 'text/plain' })
      res.end(String(err?.stack ?? err))
    }
  })
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  const origin = `http://127.0.0.1:${server.address().port}`
  return {
    origin,
    url: (path) => `${origin}${path}`,
    close() {
      server.closeAllConnections()
      return new Promise((r) => server.close(r))
    },
  }
}
