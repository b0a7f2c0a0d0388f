#!/usr/bin/env bash
# Sets up, then runs the whole thing locally: a nats-server and a tether-relay on loopback, a
# tether-agent that lends them a scratch workspace, and a short tetherctl session against it
# (exec, files, a terminal through the relay, a GUI command, a screenshot and a click on a
# virtual display, a tool call through `tetherctl mcp`), then the Python example against the same
# agent. Everything it starts is stopped when it ends (or on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-web.sh   # the relay's /view page, embedded when the relay is built
cargo build --workspace --bins --locked

bin=target/debug
work=$(mktemp -d -t tether-demo.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo "$1"; }
port=${DEMO_NATS_PORT:-$(free_port 14222)}
relay_port=${DEMO_RELAY_PORT:-$(free_port 18443)}
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/root" "$work/state"
# NATS with a fresh token (in a 0600 config file, not on a command line): the agent refuses a
# server that lets anyone in.
export TETHER_NATS_TOKEN="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
(umask 077; printf 'listen: "127.0.0.1:%s"\nauthorization { token: "%s" }\n' "$port" "$TETHER_NATS_TOKEN" >"$work/nats.conf")
nats-server -c "$work/nats.conf" >"$work/nats.log" 2>&1 & pids+=($!)

# Fresh relay secrets for this run; they live in this script's environment only.
export TETHER_RELAY_PRODUCER_SECRET="$(head -c 32 /dev/urandom | base64)"
export TETHER_RELAY_VIEWER_SECRET="$(head -c 32 /dev/urandom | base64)"
env -u TETHER_NATS_TOKEN "$bin/tether-relay" --bind "127.0.0.1:$relay_port" 2>"$work/relay.log" & pids+=($!)

export TETHER_NATS_URL="nats://127.0.0.1:$port" TETHER_WORKSPACE_ID=demo TETHER_AGENT_ID=laptop
export TETHER_RELAY_URL="ws://127.0.0.1:$relay_port/stream"
# The agent gets only its own producer token, never the relay's secrets.
TETHER_RELAY_TOKEN="$("$bin/tetherctl" mint-token producer --ttl 1h)" \
  env -u TETHER_RELAY_PRODUCER_SECRET -u TETHER_RELAY_VIEWER_SECRET \
  "$bin/tether-agent" run --workspace-root "$work/root" --state-dir "$work/state" \
  --virtual-desktop --virtual-display "${DEMO_DISPLAY:-:97}" --consent-screen-control 2>"$work/agent.log" & pids+=($!)

# Echo each command as a user would type it (arguments with spaces in single quotes), then run it.
shown() {
  local a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@+-]+$ ]]; then printf ' %s' "$a"; else printf " '%s'" "${a//\'/\'\\\'\'}"; fi
  done
}
ctl() { printf '\n\033[1m$ tetherctl%s\033[0m\n' "$(shown "$@")"; "$bin/tetherctl" "$@"; }
for _ in $(seq 1 100); do "$bin/tetherctl" ping >/dev/null 2>&1 && break; sleep 0.1; done

ctl ping
ctl exec -- uname -sm
ctl exec --shell -- 'echo "hello from $(pwd)"; echo to-stderr >&2'
ctl run --shell -- 'for i in 1 2 3; do echo "line $i (streamed as it is printed)"; sleep 0.3; done'
ctl run --detach --id demo-build --shell -- 'echo building; sleep 1; echo done; exit 4'
ctl ps
ctl wait demo-build || echo "(demo-build exited with $?)"
ctl attach demo-build --from 0 || echo "(attach replayed it after its end, and exits with its code: $?)"
printf 'a\nb\nc\n' | ctl run -- wc -l         # stdin forwarded
ctl put README.md /workspace/docs/README.md --parents
ctl ls -R /workspace
ctl stat /workspace/docs/README.md
ctl exec --shell -- 'wc -l docs/README.md'
ctl get /workspace/docs/README.md "$work/copy.md"
cmp README.md "$work/copy.md" && echo "round trip: byte-identical"
head -c 64M /dev/urandom >"$work/big.bin"
ctl put "$work/big.bin" /workspace/big.bin     # windowed; the agent checks its BLAKE3 before the rename
report=$("$bin/tetherctl" --json get /workspace/big.bin "$work/big.copy")
digest=$(printf '%s' "$report" | sed 's/.*"blake3":"\([0-9a-f]*\)".*/\1/')
echo "get: $report"
echo "someone else's edit" >"$work/root/big.bin"
ctl put --if-match "$digest" "$work/big.bin" /workspace/big.bin \
  || echo "(refused: the remote file changed since that get; nothing was written)"
mkdir -p "$work/proj/src" && echo 'fn main() {}' > "$work/proj/src/main.rs" && echo v1 > "$work/proj/notes.txt"
ctl sync up "$work/proj" /workspace/proj --baseline-out "$work/base.json"
ctl sync up "$work/proj" /workspace/proj           # nothing changed: nothing sent
ctl exec --cwd /workspace/proj --shell -- 'echo built > out.txt; echo remote > notes.txt'
echo "local edit" > "$work/proj/src/main.rs"
ctl sync down /workspace/proj "$work/proj" --baseline "$work/base.json"
echo "notes.txt: $(cat "$work/proj/notes.txt") (taken), out.txt: $(cat "$work/proj/out.txt"), main.rs: $(cat "$work/proj/src/main.rs") (kept)"
ctl --timeout 1s exec --shell -- 'echo ran >> runs.txt; sleep 2; echo done'   # outlasts --timeout: resent with the same request id
ctl exec --shell -- 'echo "runs: $(wc -l < runs.txt)"'   # 1: the agent answered the retries from its reply cache
ctl cat /etc/hostname || echo "(confined: the agent refused a path outside its workspace root, as it should)"
ctl metrics
ctl shell -- sh -c 'echo "a terminal on $(tty), $(stty size) rows/cols, through the relay"; exit 3' </dev/null \
  || echo "(tetherctl shell exited with the remote shell's code: $?)"
ctl exec --shell -- 'xsetroot -solid "#3465a4" && echo "a confined command painted the virtual display ($DISPLAY)"'
ctl screenshot -o "$work/screen.png" --max-width 640 && file "$work/screen.png" 2>/dev/null || true
ctl screenshot -o "$work/screen.jpg" --jpeg 80 && file "$work/screen.jpg" 2>/dev/null || true  # full size, JPEG
# Browser pages for a terminal and for the desktop (the token is after '#': it reaches no log).
ctl shell --print-url --url-ttl 10m -- sh -c 'echo "a terminal in your browser"; exec sh'
ctl desktop --print-url --view-only --tiles   # key frames + changed tiles only (TILES)
ctl click 320 200 --space 640x400 && echo "(clicked the virtual display's centre, given in screenshot pixels)"
# What an MCP client (an AI assistant) sends `tetherctl mcp` on its stdin, and the answer.
printf '\n\033[1m$ tetherctl mcp   # an assistant asks it to run a command\033[0m\n'
printf '%s\n' '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"demo","version":"0"}}}' \
  '{"jsonrpc":"2.0","method":"notifications/initialized"}' \
  '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"run_command","arguments":{"command":"uname -sr"}}}' \
  | "$bin/tetherctl" mcp | tail -n 1
# The same agent from Python (the package scripts/setup.sh installed into target/pyenv).
printf '\n\033[1m$ python python/examples/quickstart.py\033[0m\n'
(repo=$(pwd); cd "$work" && "$repo/target/pyenv/bin/python" "$repo/python/examples/quickstart.py")
printf '\nDemo done. Agent log: last lines\n'
tail -n 5 "$work/agent.log"
