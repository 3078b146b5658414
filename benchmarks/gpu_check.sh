#!/usr/bin/env bash
# CUDA checks of dcd-deploy on a machine with an NVIDIA GPU and onnxruntime-gpu installed
# (`pip install -e '.[gpu,test]'` after `pip uninstall -y onnxruntime`).
#
#   bash benchmarks/gpu_check.sh [OUTDIR]        # about 6 minutes on one H100/H200
#
# 1. the GPU tests (pytest -m gpu);
# 2. both sample models: export (fp32 and fp16, --target cuda), `dcd-deploy parity` on CPU and
#    CUDA against the PyTorch original, `dcd-deploy bench` on CUDA with CUDA graphs;
# 3. zoo networks at 224 (random weights, calibrated BatchNorms): export --target cuda, parity on
#    CUDA with TF32 on (ONNX Runtime's default) and off (full float32);
# 4. the static-twin ratio table on CUDA (benchmarks/static_twin_ratio.py), CUDA graphs off and
#    on, float32 and float16, the CPU and CUDA cost models and --tune measured on CUDA.
# Everything is logged under OUTDIR; a failing step is reported and the next one still runs.
set -u
OUT_DIR=${1:-gpu-check}
mkdir -p "$OUT_DIR"
MODELS=${GPU_CHECK_MODELS-mobilenetv2_dcd,resnet50_dcd,resnet18_dcd}
RUNS=${GPU_CHECK_RUNS:-100}
SIZE=${GPU_CHECK_SIZE:-224}
PROVIDER=${GPU_CHECK_PROVIDER:-cuda}   # cpu: a dry run of this script on a machine without a GPU
status=0
# without a console script on PATH (e.g. a --target install), run the CLI module
command -v dcd-deploy >/dev/null || dcd-deploy() { python3 -m dcd_deploy_cli.main "$@"; }
step() {  # step NAME COMMAND...: run, log to OUT_DIR/NAME.log, keep going on failure
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  tail -n "${TAIL:-6}" "$OUT_DIR/$name.log"
  echo "== $name: rc=$rc, $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || status=1
}

step env python3 -c "import onnxruntime as o, torch, dcd_deploy; print('onnxruntime', o.__version__, o.get_available_providers()); print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA'); print('dcd_deploy', dcd_deploy.__version__)"
if [ "$PROVIDER" = cuda ]; then
  step nvidia-smi nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  step gpu-tests python3 -m pytest -q -m gpu tests/ -p no:cacheprovider
fi
for ckpt in sample_models/*.pth; do
  n=$(basename "$ckpt" .pth)
  step "export-$n" dcd-deploy export "$ckpt" -o "$OUT_DIR/$n.onnx" --input-size 48 --target "$PROVIDER" -q
  step "export-$n-fp16" dcd-deploy export "$ckpt" -o "$OUT_DIR/$n-fp16.onnx" --input-size 48 --target "$PROVIDER" --fp16 -q
  step "parity-$n" dcd-deploy parity "$OUT_DIR/$n.onnx" "$ckpt" --providers "cpu,$PROVIDER" --inputs sample_models/inputs.npz --json "$OUT_DIR/parity-$n.json"
  step "parity-$n-fp16" dcd-deploy parity "$OUT_DIR/$n-fp16.onnx" "$ckpt" --providers "$PROVIDER" --inputs sample_models/inputs.npz
done
for arch in ${PARITY_MODELS:-mobilenetv2_dcd resnet50_dcd}; do
  step "zoo-$arch" python3 -c "import torch, sys; from dcd_deploy.zoo import create_model; from dcd_deploy.zoo.calibration import calibrate_batchnorm; torch.manual_seed(0); m = calibrate_batchnorm(create_model('$arch'), 64); torch.save({'arch': '$arch', 'state_dict': m.state_dict()}, sys.argv[1])" "$OUT_DIR/$arch.pth"
  step "export-$arch" dcd-deploy export "$OUT_DIR/$arch.pth" -o "$OUT_DIR/$arch.onnx" --input-size "$SIZE" --target "$PROVIDER" -q
  step "parity-$arch-tf32" dcd-deploy parity "$OUT_DIR/$arch.onnx" "$OUT_DIR/$arch.pth" --providers "$PROVIDER" --samples 8
  step "parity-$arch-fp32" dcd-deploy parity "$OUT_DIR/$arch.onnx" "$OUT_DIR/$arch.pth" --providers "$PROVIDER" --samples 8 --provider-option "$PROVIDER:use_tf32=0"
done
for m in ${MODELS//,/ }; do
  TAIL=2 step "ratio-$m" python3 benchmarks/static_twin_ratio.py --provider "$PROVIDER" --models "$m" --batches 1,8 \
    --size "$SIZE" --runs "$RUNS" --cuda-graph both --fp16 --form cuda,auto,tune --no-plain --json "$OUT_DIR/ratio-$m.json"
  grep -E '^(\||  [a-z])' "$OUT_DIR/ratio-$m.log"
done
first=$(ls sample_models/*.pth | head -1)
TAIL=14 step bench-sample dcd-deploy bench "$first" --providers "$PROVIDER" --batch 1,8 --cuda-graph --runs "$RUNS" --input-size 48 \
  --no-progress --json "$OUT_DIR/bench-sample.json"
exit $status
