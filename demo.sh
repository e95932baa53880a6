#!/usr/bin/env bash
# The whole pipeline in a few minutes on a CPU, on a fresh machine:
#   set-up -> a short real training run -> ONNX conversion into a model repository
#   -> a real Triton server in the background -> headless remote play (sync, then
#   async) and standalone play, with statistics, a gameplay GIF and a screenshot
#   -> the server stopped.
# Environment knobs: DEMO_ENV (BreakoutNoFrameskip-v4), DEMO_STEPS (training steps,
# 3000), DEMO_PLAY_STEPS (agent steps per game, 600), DEMO_PORT (the server's HTTP port,
# gRPC and metrics on the next two; default: 18000-18002, or three free ports if any of
# those is taken), DEMO_OUT (demo_output/<env id>: everything the demo writes, the model
# repository included, so the tracked trtismodel/ is never touched and each game keeps its own),
# DEMO_SETUP (1; 0 skips ./setup.sh when .venv is already set up).
set -euo pipefail
cd "$(dirname "$0")"

ENV_ID=${DEMO_ENV:-BreakoutNoFrameskip-v4}
STEPS=${DEMO_STEPS:-3000}
PLAY_STEPS=${DEMO_PLAY_STEPS:-600}
OUT=${DEMO_OUT:-demo_output/$ENV_ID}
REPO=$OUT/trtismodel
PY=.venv/bin/python
export SDL_VIDEODRIVER=${SDL_VIDEODRIVER:-dummy}  # no display needed; the window is still drawn

step() { printf '\n=== %s\n' "$*"; }

step "1/6 set-up (.venv)"
if [ "${DEMO_SETUP:-1}" = 0 ]; then echo "skipped (DEMO_SETUP=0)"; else ./setup.sh; fi

# The server's three ports, checked now rather than after minutes of training: a port taken
# by another program stops the demo here if DEMO_PORT chose it, else free ones are used.
ports_free() {  # exit 0 when every port given can be bound on 127.0.0.1 now
  $PY -c 'import socket, sys
for p in map(int, sys.argv[1:]):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            sys.exit(1)' "$@"
}
if [ -n "${DEMO_PORT:-}" ]; then
  case $DEMO_PORT in *[!0-9]*) echo "error: DEMO_PORT=$DEMO_PORT: give a port number" >&2; exit 2 ;; esac
  if [ "$DEMO_PORT" -lt 1 ] || [ "$DEMO_PORT" -gt 65533 ]; then
    echo "error: DEMO_PORT=$DEMO_PORT: give a port between 1 and 65533 (the server takes it and the next two)" >&2
    exit 2
  fi
  DEMO_PORT=$((10#$DEMO_PORT))  # 018000 is not octal here
  HTTP_PORT=$DEMO_PORT GRPC_PORT=$((DEMO_PORT + 1)) METRICS_PORT=$((DEMO_PORT + 2))
  ports_free "$HTTP_PORT" "$GRPC_PORT" "$METRICS_PORT" || {
    echo "error: DEMO_PORT=$DEMO_PORT: one of ports $HTTP_PORT-$METRICS_PORT is taken on 127.0.0.1;" \
      "choose other free ports (DEMO_PORT=N uses N, N+1, N+2) or leave DEMO_PORT unset to pick free ones" >&2
    exit 2
  }
elif ports_free 18000 18001 18002; then
  HTTP_PORT=18000 GRPC_PORT=18001 METRICS_PORT=18002
else
  read -r HTTP_PORT GRPC_PORT METRICS_PORT < <($PY -c 'import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()')
  echo "ports 18000-18002: one is taken; the server will use $HTTP_PORT (HTTP), $GRPC_PORT (gRPC)," \
    "$METRICS_PORT (metrics) (DEMO_PORT=N chooses N, N+1, N+2)"
fi

mkdir -p "$OUT"
step "2/6 training a DQN on $ENV_ID for $STEPS steps (CPU)"
$PY train_src/train_dqn.py --env "$ENV_ID" --gpu -1 --outdir "$OUT/results" --steps "$STEPS" \
  --replay-start-size 1000 --final-exploration-steps 2000 --eval-interval 1500 --eval-n-steps 1000 \
  --n-best-episodes 1 --checkpoint-freq 0
RUN=$(ls -d "$OUT"/results/*/ | sort | tail -n 1)
# best/ once an evaluation ran (DEMO_STEPS >= 1500), else the final agent
AGENT=${RUN}best
[ -d "$AGENT" ] || AGENT=${RUN}${STEPS}_finish
echo "run directory: $RUN"

# No --env from here on: the agent directory records its game, the repository's config
# carries it, and both players read it.
step "3/6 converting $AGENT to ONNX into $REPO/"
$PY onnx_converter_src/converter.py --model "$AGENT" --repository "$REPO" --version 1 --force

step "4/6 serving $REPO/ with Triton on 127.0.0.1:$GRPC_PORT"
$PY -m atari_trtis_demo.serve --model-repository "$REPO" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" \
  --metrics-port "$METRICS_PORT" > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  grep -q "ready at" "$OUT/serve.log" && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/serve.log"; exit 1; }
  sleep 1
done
grep "ready at" "$OUT/serve.log" || { echo "server not ready after 120 s"; cat "$OUT/serve.log"; exit 1; }

PLAY=(--episodes 1 --max-steps "$PLAY_STEPS" --seed 0)
step "5/6 remote play through Triton: --sync, then asynchronous"
# The statistics games run as fast as they can (--fps 0); the recorded one at the Atari's own pace.
$PY src/app.py --host 127.0.0.1 --port "$GRPC_PORT" --sync --headless --fps 0 "${PLAY[@]}" --json "$OUT/remote_sync.json"
# The recorded game presses FIRE after each lost life (--fire-on-life-loss, a play-time action override,
# see docs/deviations.md): a 3,000-step agent rarely serves by itself, and its Breakout would stand still.
$PY src/app.py --host 127.0.0.1 --port "$GRPC_PORT" "${PLAY[@]}" --headless --rendering_scale 3 --fire-on-life-loss \
  --record "$OUT/gameplay.gif" --screenshot "$OUT/app_running.png" --json "$OUT/remote_async.json"

step "6/6 standalone play with local Chainer inference"
$PY standalone_src/app.py --modelpath "$AGENT" --sync --headless --fps 0 "${PLAY[@]}" \
  --json "$OUT/standalone.json"

kill -TERM $SERVER
wait $SERVER || true
trap - EXIT
step "done"
echo "statistics: $OUT/remote_sync.json $OUT/remote_async.json $OUT/standalone.json"
CURVE=${RUN}learning_curve.png
[ -f "$CURVE" ] || CURVE="(no learning curve: no evaluation ran)"
echo "pictures:   $OUT/gameplay.gif $OUT/app_running.png $CURVE"
# The README's commands name the tracked trtismodel/, which holds no model: these name the demo's.
cat <<EOF

To watch this agent play in a window: serve its model (the server runs until Ctrl-C),
  $PY -m atari_trtis_demo.serve --model-repository $REPO
and, in another terminal once it prints "ready", play against it:
  $PY src/app.py --host 127.0.0.1 --port 8001 --fire-on-life-loss
Or without a server, the agent run here by Chainer:
  $PY standalone_src/app.py --modelpath $AGENT --fire-on-life-loss
If ports 8000-8002 are taken, serve on the three this demo used (free a moment ago) and play on its gRPC port:
  $PY -m atari_trtis_demo.serve --model-repository $REPO --http-port $HTTP_PORT --grpc-port $GRPC_PORT --metrics-port $METRICS_PORT
  $PY src/app.py --host 127.0.0.1 --port $GRPC_PORT --fire-on-life-loss
(--games 4 plays four games at once; Esc or Q ends play.)
EOF
