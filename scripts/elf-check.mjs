// Static checks of the Linux binaries, shared by scripts/release.mjs and __test__/dist.test.mjs.
// `readelf` reads ELF files of any architecture (the host's `objdump` may not know aarch64), so
// it is used for both the glibc symbol versions and the NEEDED libraries.

import { execFileSync } from 'node:child_process'

/**
 * The oldest glibc the linux-gnu binaries must load on. 2.17 (CentOS 7) is what Rust's
 * `*-unknown-linux-gnu` targets and napi-rs's own cross toolchain support; it is below the 2.28
 * that Node 20's official builds need, so the addon also loads under the unofficial glibc-2.17
 * builds of Node that hosts such as Amazon Linux 2 (glibc 2.26) run. Raising it gains nothing.
 */
export const GLIBC_BASELINE = '2.17'

/** Compares dotted versions numerically: -1, 0 or 1. */
export function compareVersions(a, b) {
  const pa = a.split('.').map(Number)
  const pb = b.split('.').map(Number)
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0)
    if (d !== 0) return Math.sign(d)
  }
  return 0
}

function readelf(args, file) {
  return execFileSync('readelf', ['-W', ...args, file], { encoding: 'utf8', maxBuffer: 64 << 20 })
}

/** The undefined dynamic symbols of `file` with the GLIBC version each needs. */
export function glibcSymbols(file) {
  const out = []
  for (const line of readelf(['--dyn-syms'], file).split('\n')) {
    if (!/\bUND\b/.test(line)) continue
    const m = line.match(/\s(\S+?)@@?GLIBC_([\d.]+)/)
    if (m) out.push({ symbol: m[1], version: m[2] })
  }
  return out
}

/** Symbols of `file` that need a glibc newer than `baseline`, e.g. `mallinfo2@GLIBC_2.33`. */
export function glibcAbove(file, baseline = GLIBC_BASELINE) {
  return glibcSymbols(file)
    .filter((s) => compareVersions(s.version, baseline) > 0)
    .map((s) => `${s.symbol}@GLIBC_${s.version}`)
}

/** The shared libraries `file` names as NEEDED. */
export function neededLibraries(file) {
  return [...readelf(['-d'], file).matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1])
}

/** The ELF machine of `file`, e.g. `AArch64` or `Advanced Micro Devices X86-64`. */
export function machine(file) {
  return readelf(['-h'], file)
    .match(/Machine:\s+(.+)/)[1]
    .trim()
}
