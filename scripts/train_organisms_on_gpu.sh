#!/usr/bin/env bash
# Train both shipped model organisms from scratch on a lent GPU, in one call (each recipe's whole schedule;
# minutes on an H200 instead of hours on 2 CPU cores). Checkpoints and learning curves land in $OUT.
#   bash scripts/train_organisms_on_gpu.sh            # on the device machine: OUT is set there
#   OUT=/tmp/smoke DEVICE=cpu STEPS=2 SCENES=32 VISION_STEPS=2 THREADS=1 bash scripts/train_organisms_on_gpu.sh   # a smoke test here
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder the checkpoints go to}
DEVICE=${DEVICE:-cuda}
THREADS=${THREADS:-$(nproc)}
STEPS_LLAVA=${STEPS:-12000}
STEPS_INTERNVL=${STEPS:-12000}
SCENES=${SCENES:-16000}
VISION_STEPS=${VISION_STEPS:-600}
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python -m mechanisms.organisms.train --device "$DEVICE" --threads "$THREADS" --out "$OUT/tiny-llava" \
    --seed 0 --vision-steps "$VISION_STEPS" --steps "$STEPS_LLAVA" --max-turns 6 --train-scenes "$SCENES" --micro-batch 32 --eval-every 1000 \
    > "$OUT/tiny-llava.log" 2>&1 &
LLAVA=$!
python -m mechanisms.organisms.train_internvl --device "$DEVICE" --threads "$THREADS" --out "$OUT/tiny-internvl" \
    --seed 0 --vision-steps "$VISION_STEPS" --steps "$STEPS_INTERNVL" --max-turns 6 --train-scenes "$SCENES" --batch 32 --micro-batch 32 \
    --eval-every 1000 > "$OUT/tiny-internvl.log" 2>&1 &
INTERNVL=$!
status=0
wait $LLAVA || status=$?; echo "tiny-llava: rc $status"; tail -3 "$OUT/tiny-llava.log"
wait $INTERNVL || status=$?; echo "tiny-internvl: rc $status"; tail -3 "$OUT/tiny-internvl.log"
exit $status
