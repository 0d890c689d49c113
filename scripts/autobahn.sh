#!/usr/bin/env bash
# Autobahn|Testsuite conformance run against the `autobahn-echo` binary.
#
#   scripts/autobahn.sh                 # build (release), run cases 1.* .. 10.*
#
# Environment knobs:
#   AUTOBAHN_PROFILE=debug      build/use target/debug instead of target/release
#   AUTOBAHN_ECHO_BIN=/path     use this echo server binary, skip `cargo build`
#   AUTOBAHN_CASES="1.*,2.1.1"  comma list of case patterns (default: 1.* .. 10.*)
#   AUTOBAHN_EXCLUDE="6.4.*"    comma list of case patterns to exclude
#   AUTOBAHN_PORT=9001          listen port (default: a free loopback port)
#   AUTOBAHN_TIMEOUT=1200       seconds before wstest is killed
#   AUTOBAHN_PYTHON27=/path     a python2.7 interpreter (default: pyenv's 2.7.x)
#
# Tooling (a Python 2.7 virtualenv holding wstest) lives in .autobahn/ at the
# repo root and is installed on first use; later runs reuse it.  Reports go to
# .autobahn/reports (index.html there is the browsable version).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

AB_DIR="$ROOT/.autobahn"
TOOL_VENV="$AB_DIR/tool"
PY27_VENV="$AB_DIR/py27"
REPORT_DIR="$AB_DIR/reports"
AGENT="payload-realtime"

log() { printf 'autobahn.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

command -v python3 >/dev/null || die "python3 is required"

# ---------------------------------------------------------------- .gitignore
if ! { [ -f .gitignore ] && grep -qxE '/?\.autobahn/?' .gitignore; }; then
  # keep the file newline-terminated before appending
  if [ -s .gitignore ] && [ -n "$(tail -c1 .gitignore)" ]; then echo >> .gitignore; fi
  echo '/.autobahn/' >> .gitignore
fi

# ------------------------------------------------------------------ tooling
# Known-good pins for Python 2.7 (the newest releases of most of these dropped
# py2; pip 20.3's resolver picks these on its own today, the pins keep it so).
PY27_CONSTRAINTS='autobahntestsuite==25.10.1
autobahn==0.10.9
txaio==2.1.0
Twisted==19.10.0
zope.interface==4.6.0
Automat==22.10.0
attrs==21.4.0
constantly==15.1.0
hyperlink==21.0.0
incremental==16.10.1
idna==2.10
typing==3.10.0.0
six==1.16.0
wsaccel==0.6.6
ujson==2.0.3
PyHamcrest==1.10.1
klein==17.10.0
Werkzeug==1.0.1
Jinja2==2.11.3
MarkupSafe==1.1.1
pyOpenSSL==19.1.0
cryptography==3.3.2
cffi==1.15.1
pycparser==2.21
enum34==1.1.10
ipaddress==1.0.23
service-identity==18.1.0
pyasn1==0.5.1
pyasn1-modules==0.3.0
unittest2==1.1.0
traceback2==1.4.0
linecache2==1.0.0
argparse==1.4.0
setuptools==44.0.0'
STAMP_CONTENT="v1
$PY27_CONSTRAINTS"

find_python27() {
  if [ -n "${AUTOBAHN_PYTHON27:-}" ]; then echo "$AUTOBAHN_PYTHON27"; return; fi
  local root cand
  if command -v pyenv >/dev/null 2>&1 && root="$(pyenv root 2>/dev/null)"; then :; else root="${PYENV_ROOT:-$HOME/.pyenv}"; fi
  for cand in "$root/versions/2.7.18/bin/python2.7" $(ls -d "$root"/versions/2.7*/bin/python2.7 2>/dev/null | sort -rV); do
    if [ -x "$cand" ]; then echo "$cand"; return; fi
  done
  command -v python2.7 || command -v python2 || true
}

ensure_tools() {
  if [ -x "$PY27_VENV/bin/wstest" ] && [ -f "$PY27_VENV/.ab-installed" ] \
     && [ "$(cat "$PY27_VENV/.ab-installed")" = "$STAMP_CONTENT" ]; then
    return
  fi
  log "installing Autobahn|Testsuite into $AB_DIR (one-time, ~1 min)"
  mkdir -p "$AB_DIR"
  local py27
  py27="$(find_python27)"
  [ -n "$py27" ] && [ -x "$py27" ] || die "no Python 2.7 found (set AUTOBAHN_PYTHON27 or install pyenv 2.7.18)"

  if [ ! -x "$PY27_VENV/bin/python" ]; then
    if [ ! -x "$TOOL_VENV/bin/virtualenv" ]; then
      rm -rf "$TOOL_VENV"
      python3 -m venv "$TOOL_VENV"
      # virtualenv 20.22 dropped support for creating Python 2 environments
      "$TOOL_VENV/bin/pip" install -q 'virtualenv<20.22'
    fi
    "$TOOL_VENV/bin/virtualenv" -q -p "$py27" "$PY27_VENV"
  fi
  local cfile="$AB_DIR/py27-constraints.txt"
  printf '%s\n' "$PY27_CONSTRAINTS" > "$cfile"
  # Twisted/cryptography wheels exist for cp27; wsaccel, ujson, autobahn build
  # from sdist (needs a C compiler, present on the image).
  if ! "$PY27_VENV/bin/pip" install --no-warn-script-location -c "$cfile" autobahntestsuite \
       > "$AB_DIR/pip-install.log" 2>&1; then
    tail -n 40 "$AB_DIR/pip-install.log" >&2
    die "pip install autobahntestsuite failed (full log: $AB_DIR/pip-install.log)"
  fi
  "$PY27_VENV/bin/wstest" -a >/dev/null 2>&1 || die "wstest is installed but does not run"
  printf '%s' "$STAMP_CONTENT" > "$PY27_VENV/.ab-installed"
}
ensure_tools
WSTEST="$PY27_VENV/bin/wstest"

# -------------------------------------------------------------- echo server
if [ -n "${AUTOBAHN_ECHO_BIN:-}" ]; then
  ECHO_BIN="$AUTOBAHN_ECHO_BIN"
else
  TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
  case "${AUTOBAHN_PROFILE:-release}" in
    release) log "cargo build --release --bin autobahn-echo"
             cargo build --release --bin autobahn-echo
             ECHO_BIN="$TARGET_DIR/release/autobahn-echo" ;;
    debug)   log "cargo build --bin autobahn-echo"
             cargo build --bin autobahn-echo
             ECHO_BIN="$TARGET_DIR/debug/autobahn-echo" ;;
    *) die "AUTOBAHN_PROFILE must be 'release' or 'debug'" ;;
  esac
fi
[ -x "$ECHO_BIN" ] || die "echo server binary not found: $ECHO_BIN"

if [ -n "${AUTOBAHN_PORT:-}" ]; then
  PORT="$AUTOBAHN_PORT"
else
  PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
fi
ADDR="127.0.0.1:$PORT"
SERVER_LOG="$AB_DIR/echo-server.log"

SERVER_PID=""
WSTEST_PID=""
cleanup() {
  if [ -n "$WSTEST_PID" ]; then kill "$WSTEST_PID" 2>/dev/null || true; wait "$WSTEST_PID" 2>/dev/null || true; fi
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting $ECHO_BIN $ADDR (log: $SERVER_LOG)"
"$ECHO_BIN" "$ADDR" > "$SERVER_LOG" 2>&1 &
SERVER_PID=$!

port_open() {
  python3 -c 'import socket,sys; s=socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5); s.close()' "$PORT" 2>/dev/null
}
ready=""
for _ in $(seq 1 300); do   # up to ~30 s
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    cat "$SERVER_LOG" >&2 || true
    die "echo server exited before becoming ready"
  fi
  if grep -q "listening on" "$SERVER_LOG" 2>/dev/null && port_open; then ready=1; break; fi
  sleep 0.1
done
[ -n "$ready" ] || { cat "$SERVER_LOG" >&2 || true; die "echo server not ready on $ADDR after 30 s"; }

# ------------------------------------------------------------------ wstest
CASES="${AUTOBAHN_CASES:-1.*,2.*,3.*,4.*,5.*,6.*,7.*,8.*,9.*,10.*}"
EXCLUDE="${AUTOBAHN_EXCLUDE:-}"
SPEC="$AB_DIR/fuzzingclient.json"
python3 - "$SPEC" "$REPORT_DIR" "$AGENT" "ws://$ADDR" "$CASES" "$EXCLUDE" <<'EOF'
import json, sys
spec, outdir, agent, url, cases, exclude = sys.argv[1:7]
split = lambda s: [c.strip() for c in s.split(",") if c.strip()]
with open(spec, "w") as f:
    json.dump({
        "outdir": outdir,
        "servers": [{"agent": agent, "url": url}],
        "cases": split(cases),
        "exclude-cases": split(exclude),
        "exclude-agent-cases": {},
    }, f, indent=2)
    f.write("\n")
EOF

rm -rf "$REPORT_DIR"
mkdir -p "$REPORT_DIR"
log "running wstest -m fuzzingclient (cases: $CASES${EXCLUDE:+; excluding: $EXCLUDE})"
start=$(date +%s)
wstest_rc=0
# wstest writes a line per case; keep it in a log and show only the tail on error
# (run in the background + wait, so a TERM/INT to this script is handled at once)
( cd "$AB_DIR" && exec timeout "${AUTOBAHN_TIMEOUT:-1200}" "$WSTEST" -m fuzzingclient -s "$SPEC" ) \
  > "$AB_DIR/wstest.log" 2>&1 &
WSTEST_PID=$!
wait "$WSTEST_PID" || wstest_rc=$?
WSTEST_PID=""
log "wstest finished in $(( $(date +%s) - start )) s (rc=$wstest_rc, log: $AB_DIR/wstest.log)"
if [ "$wstest_rc" -ne 0 ]; then
  tail -n 30 "$AB_DIR/wstest.log" >&2 || true
fi
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  log "warning: echo server is no longer running (crashed?); its log:"
  tail -n 30 "$SERVER_LOG" >&2 || true
fi

# ------------------------------------------------------------------ summary
summary_rc=0
python3 - "$REPORT_DIR" "$AGENT" <<'EOF' || summary_rc=$?
import json, os, sys
from collections import Counter

report_dir, agent = sys.argv[1], sys.argv[2]
index_path = os.path.join(report_dir, "index.json")
if not os.path.exists(index_path):
    print("no %s: wstest produced no results" % index_path)
    print("autobahn: 0 passed, 1 failed")
    sys.exit(1)
with open(index_path) as f:
    index = json.load(f)
results = index.get(agent)
if not results:
    print("no results for agent %r in %s" % (agent, index_path))
    print("autobahn: 0 passed, 1 failed")
    sys.exit(1)

PASS = {"OK", "NON-STRICT", "INFORMATIONAL"}

def case_key(cid):
    return tuple(int(p) if p.isdigit() else p for p in cid.split("."))

def ok(value, cid):
    if value in PASS:
        return True
    # compression cases are allowed to be unimplemented
    return value == "UNIMPLEMENTED" and cid.split(".")[0] in ("12", "13")

behaviors, closes = Counter(), Counter()
failed = []
for cid in sorted(results, key=case_key):
    r = results[cid]
    b, bc = r.get("behavior"), r.get("behaviorClose")
    behaviors[b] += 1
    closes[bc] += 1
    if not (ok(b, cid) and ok(bc, cid)):
        failed.append((cid, r))

print("Autobahn|Testsuite results for %s (%d cases)" % (agent, len(results)))
print("  behavior:      " + ", ".join("%s=%d" % kv for kv in sorted(behaviors.items())))
print("  behaviorClose: " + ", ".join("%s=%d" % kv for kv in sorted(closes.items())))

if failed:
    print("")
    print("Failing cases (report files in %s):" % report_dir)
    for cid, r in failed:
        detail = ""
        rf = r.get("reportfile")
        if rf:
            try:
                with open(os.path.join(report_dir, rf)) as f:
                    rep = json.load(f)
                parts = [rep.get("result") or "", rep.get("resultClose") or ""]
                detail = " | ".join(p for p in parts if p)
                if len(detail) > 240:
                    detail = detail[:237] + "..."
            except Exception:
                pass
        print("  %-10s behavior=%-13s close=%-13s remoteCloseCode=%s  %s" % (
            cid, r.get("behavior"), r.get("behaviorClose"), r.get("remoteCloseCode"), rf or ""))
        if detail:
            print("             " + detail)
    print("")

print("autobahn: %d passed, %d failed" % (len(results) - len(failed), len(failed)))
sys.exit(1 if failed else 0)
EOF

if [ "$summary_rc" -ne 0 ]; then exit 1; fi
if [ "$wstest_rc" -ne 0 ]; then log "wstest exited with $wstest_rc"; exit 1; fi
exit 0
