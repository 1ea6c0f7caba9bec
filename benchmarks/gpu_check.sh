#!/usr/bin/env bash
# The GPU checks in one short run, for a session that is lent a GPU machine (docs/performance.md,
# "On a lent GPU"). Everything it measures goes to $OUT (default ./gpu_check); each step has its own
# time limit so that one slow step cannot eat the machine's time, and a failed step does not stop the
# others (the summary says which failed).
#
#   1. the environment (nvidia-smi, torch, the packages fss needs);
#   2. benchmarks/speed.py for every model, fp32 and bf16 autocast (400 px, ResNet-50, 1 and 5 shots);
#   3. benchmarks/reference.py against the public HSNet / HSNet-HM code when their clones were carried
#      as .refs/hsnet and .refs/hm;
#   4. `fss fit` of every registered model on the synthetic data for a few steps, bf16-mixed on the GPU;
#   5. the model tests (tests/models) on the machine (they run on the CPU: parity holds there too).
#
# Packages the device image lacks travel as wheels (benchmarks/gpu_wheels.sh, carry .whl).
# Usage there: bash benchmarks/gpu_check.sh   (QUICK=1 DEVICE=cpu: its dry run on a CPU:
# 128 px, HSNet only in speed.py, no bf16, 2 training steps)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ! $PY -c "import jsonargparse, albumentations, pycocotools" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then SPEED=(--quick --models hsnet --shots 1); STEPS=2; FIT_LIMIT=240
else SPEED=(--repeats 10 --warmup 3); STEPS=20; FIT_LIMIT=90; fi
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, note the outcome
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$SUMMARY"
}

step env 60 bash -c "nvidia-smi; $PY -c 'import torch, pytorch_lightning, jsonargparse, albumentations, timm; \
print(torch.__version__, torch.cuda.is_available(), pytorch_lightning.__version__, jsonargparse.__version__)'"
step speed_fp32 150 $PY benchmarks/speed.py --device "$DEVICE" "${SPEED[@]}" --out "$OUT/speed_fp32.json"
[ "$DEVICE" = cpu ] || step speed_bf16 150 $PY benchmarks/speed.py --device "$DEVICE" --bf16 "${SPEED[@]}" --out "$OUT/speed_bf16.json"
if [ -d .refs/hsnet ] && [ -d .refs/hm ]; then
    step reference 90 $PY benchmarks/reference.py --hsnet .refs/hsnet --hm .refs/hm --device "$DEVICE" --train \
        --out "$OUT/reference.json"
fi
if [ "$DEVICE" = cpu ]; then ACCEL=(--trainer.accelerator cpu); else ACCEL=(--trainer.accelerator gpu --trainer.precision bf16-mixed); fi
for net in $($PY -c "from fss.models import MODELS; print(*(c.__name__ for c in MODELS.values()))"); do
    extra=()
    case $net in  # the models whose default options do not fit the demo's 36 training classes / size
        BAM) extra=(--model.net.num_base_classes 36) ;;
        VAT) extra=(--model.net.benchmark pascal) ;;
    esac
    if [ "$QUICK" = 1 ]; then  # CPU-sized: 64 px and the tests' small learners
        extra+=(--data.init_args.img_size 64)
        case $net in
            VAT) extra+=(--model.net.feature_size 8) ;;
            NTRENet) extra+=(--model.net.reduce_dim 16 --model.net.ppm_scales "[4, 2]") ;;
        esac
    fi
    step "fit_$net" "$FIT_LIMIT" $PY -m fss fit --config configs/demo.yaml --model.net "$net" "${extra[@]}" "${ACCEL[@]}" \
        --trainer.limit_train_batches "$STEPS" --trainer.max_epochs 1 --trainer.limit_val_batches 2 --trainer.logger false \
        --trainer.enable_progress_bar false --trainer.default_root_dir "/tmp/gpu_check/$net"
done
[ "$QUICK" = 1 ] || step model_tests 150 $PY -m pytest -q -p no:cacheprovider tests/models
cat "$SUMMARY"
