#!/usr/bin/env bash
# The whole pipeline in a few minutes on a CPU, on a fresh machine:
#   set-up -> a short real training run -> ONNX conversion into a model repository
#   -> a real Triton server in the background -> headless remote play (sync, then
#   async) and standalone play, with statistics, a gameplay GIF and a screenshot
#   -> the server stopped.
# Environment knobs: DEMO_ENV (BreakoutNoFrameskip-v4), DEMO_STEPS (training steps,
# 3000), DEMO_PLAY_STEPS (agent steps per game, 600), DEMO_PORT (first of three free
# ports, 18000), DEMO_OUT (demo_output/<env id>: everything the demo writes, the model
# repository included, so the tracked trtismodel/ is never touched and each game keeps its own).
set -euo pipefail
cd "$(dirname "$0")"

ENV_ID=${DEMO_ENV:-BreakoutNoFrameskip-v4}
STEPS=${DEMO_STEPS:-3000}
PLAY_STEPS=${DEMO_PLAY_STEPS:-600}
PORT=${DEMO_PORT:-18000}
OUT=${DEMO_OUT:-demo_output/$ENV_ID}
REPO=$OUT/trtismodel
GRPC_PORT=$((PORT + 1))
PY=.venv/bin/python
export SDL_VIDEODRIVER=${SDL_VIDEODRIVER:-dummy}  # no display needed; the window is still drawn

step() { printf '\n=== %s\n' "$*"; }

step "1/6 set-up (.venv)"
./setup.sh

mkdir -p "$OUT"
step "2/6 training a DQN on $ENV_ID for $STEPS steps (CPU)"
$PY train_src/train_dqn.py --env "$ENV_ID" --gpu -1 --outdir "$OUT/results" --steps "$STEPS" \
  --replay-start-size 1000 --final-exploration-steps 2000 --eval-interval 1500 --eval-n-steps 1000 \
  --n-best-episodes 1 --checkpoint-freq 0
RUN=$(ls -d "$OUT"/results/*/ | sort | tail -n 1)
echo "run directory: $RUN (learning curve: ${RUN}learning_curve.png)"

# No --env from here on: the agent directory records its game, the repository's config
# carries it, and both players read it.
step "3/6 converting ${RUN}best to ONNX into $REPO/"
$PY onnx_converter_src/converter.py --model "${RUN}best" --repository "$REPO" --version 1 --force

step "4/6 serving $REPO/ with Triton on 127.0.0.1:$GRPC_PORT"
$PY -m atari_trtis_demo.serve --model-repository "$REPO" --http-port "$PORT" --grpc-port "$GRPC_PORT" \
  --metrics-port $((PORT + 2)) > "$OUT/serve.log" 2>&1 &
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
$PY src/app.py --host 127.0.0.1 --port "$GRPC_PORT" "${PLAY[@]}" --headless --rendering_scale 3 \
  --record "$OUT/gameplay.gif" --screenshot "$OUT/app_running.png" --json "$OUT/remote_async.json"

step "6/6 standalone play with local Chainer inference"
$PY standalone_src/app.py --modelpath "${RUN}best" --sync --headless --fps 0 "${PLAY[@]}" \
  --json "$OUT/standalone.json"

kill -TERM $SERVER
wait $SERVER || true
trap - EXIT
step "done"
echo "statistics: $OUT/remote_sync.json $OUT/remote_async.json $OUT/standalone.json"
echo "pictures:   $OUT/gameplay.gif $OUT/app_running.png ${RUN}learning_curve.png"
