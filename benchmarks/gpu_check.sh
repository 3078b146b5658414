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
#    on, float32 and float16, the CPU and CUDA cost models and --tune measured on CUDA;
# 5. (part "families", about 5 minutes, at most FAMILIES_LIMIT_S) the four networks of
#    benchmarks/dynamic_families.py and resnet50_dcd / mobilenetv2_dcd at batch 1, 16 and 64, every
#    graph with CUDA graphs: the plain static-batch export, the --target cuda dynamic-batch graph
#    (checked free of control flow) and the static twin; targets: dyn/plain <= 1.0 at batch 16 and
#    64, DCD's dyn/twin <= 1.5 at batch 64 (the step's exit status); the JSON is rewritten after
#    every network, so a run stopped by FAMILIES_LIMIT_S keeps the rows it measured;
# 6. (part "fit") the per-form CUDA timings of every distinct CondConv / DyConv / ODConv layer of
#    those networks (benchmarks/fit_cost_model.py --families --provider cuda), for fitting the CUDA
#    constants of lowering/families/_expert_lowering.py (LAUNCH_US, BYTES_PER_US, MACS_PER_US) later.
# GPU_CHECK_PARTS picks parts (default all: tests,samples,zoo,ratio,families,fit), e.g.
#   GPU_CHECK_PARTS=families bash benchmarks/gpu_check.sh out        # one run of at most 8 minutes
#   GPU_CHECK_PROVIDER=cpu GPU_CHECK_PARTS=families,fit GPU_CHECK_SIZE=32 GPU_CHECK_FAMILY_BATCHES=1,2 \
#     GPU_CHECK_RUNS=2 bash benchmarks/gpu_check.sh /tmp/dry             # a dry run on a CPU
# Everything is logged under OUTDIR; a failing step is reported and the next one still runs.
set -u
OUT_DIR=${1:-gpu-check}
mkdir -p "$OUT_DIR"
MODELS=${GPU_CHECK_MODELS-mobilenetv2_dcd,resnet50_dcd,resnet18_dcd}
RUNS=${GPU_CHECK_RUNS:-100}
SIZE=${GPU_CHECK_SIZE:-224}
PROVIDER=${GPU_CHECK_PROVIDER:-cuda}   # cpu: a dry run of this script on a machine without a GPU
PARTS=,${GPU_CHECK_PARTS:-tests,samples,zoo,ratio,families,fit},
FAMILY_MODELS=${GPU_CHECK_FAMILY_MODELS:-efficientnet_cc_b0,od_resnet18,od_mobilenetv2,dy_resnet18,resnet50_dcd,mobilenetv2_dcd}
FAMILY_BATCHES=${GPU_CHECK_FAMILY_BATCHES:-1,16,64}
FAMILY_RUNS=${GPU_CHECK_FAMILY_RUNS:-${GPU_CHECK_RUNS:-30}}
FAMILIES_LIMIT_S=${FAMILIES_LIMIT_S:-420}
FIT_LIMIT_S=${FIT_LIMIT_S:-420}
GRAPHS=; [ "$PROVIDER" = cuda ] && GRAPHS=--cuda-graph   # CUDA graphs exist on the CUDA provider only
part() { case $PARTS in *,$1,*) return 0 ;; *) return 1 ;; esac; }
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
  part tests && step gpu-tests python3 -m pytest -q -m gpu tests/ -p no:cacheprovider
fi
part samples && for ckpt in sample_models/*.pth; do
  n=$(basename "$ckpt" .pth)
  step "export-$n" dcd-deploy export "$ckpt" -o "$OUT_DIR/$n.onnx" --input-size 48 --target "$PROVIDER" -q
  step "export-$n-fp16" dcd-deploy export "$ckpt" -o "$OUT_DIR/$n-fp16.onnx" --input-size 48 --target "$PROVIDER" --fp16 -q
  step "parity-$n" dcd-deploy parity "$OUT_DIR/$n.onnx" "$ckpt" --providers "cpu,$PROVIDER" --inputs sample_models/inputs.npz --json "$OUT_DIR/parity-$n.json"
  step "parity-$n-fp16" dcd-deploy parity "$OUT_DIR/$n-fp16.onnx" "$ckpt" --providers "$PROVIDER" --inputs sample_models/inputs.npz
done
part zoo && for arch in ${PARITY_MODELS:-mobilenetv2_dcd resnet50_dcd}; do
  step "zoo-$arch" python3 -c "import torch, sys; from dcd_deploy.zoo import create_model; from dcd_deploy.zoo.calibration import calibrate_batchnorm; torch.manual_seed(0); m = calibrate_batchnorm(create_model('$arch'), 64); torch.save({'arch': '$arch', 'state_dict': m.state_dict()}, sys.argv[1])" "$OUT_DIR/$arch.pth"
  step "export-$arch" dcd-deploy export "$OUT_DIR/$arch.pth" -o "$OUT_DIR/$arch.onnx" --input-size "$SIZE" --target "$PROVIDER" -q
  step "parity-$arch-tf32" dcd-deploy parity "$OUT_DIR/$arch.onnx" "$OUT_DIR/$arch.pth" --providers "$PROVIDER" --samples 8
  step "parity-$arch-fp32" dcd-deploy parity "$OUT_DIR/$arch.onnx" "$OUT_DIR/$arch.pth" --providers "$PROVIDER" --samples 8 --provider-option "$PROVIDER:use_tf32=0"
done
part ratio && for m in ${MODELS//,/ }; do
  TAIL=2 step "ratio-$m" python3 benchmarks/static_twin_ratio.py --provider "$PROVIDER" --models "$m" --batches 1,8 \
    --size "$SIZE" --runs "$RUNS" --cuda-graph both --fp16 --form cuda,auto,tune --no-plain --json "$OUT_DIR/ratio-$m.json"
  grep -E '^(\||  [a-z])' "$OUT_DIR/ratio-$m.log"
done
first=$(ls sample_models/*.pth | head -1)
part samples && TAIL=14 step bench-sample dcd-deploy bench "$first" --providers "$PROVIDER" --batch 1,8 --cuda-graph --runs "$RUNS" --input-size 48 \
  --no-progress --json "$OUT_DIR/bench-sample.json"
# 5. dynamic-batch graphs against the plain static-batch export and the static twin, with CUDA graphs
part families && TAIL=24 step families timeout "$FAMILIES_LIMIT_S" python3 benchmarks/dynamic_families.py \
  --provider "$PROVIDER" --target cuda $GRAPHS --models "$FAMILY_MODELS" --batches "$FAMILY_BATCHES" --size "$SIZE" \
  --runs "$FAMILY_RUNS" --json "$OUT_DIR/dynamic_families_cuda.json"
# 6. per-form timings on the provider, for a fit of the CUDA constants (re-score: --families --provider cuda --load FILE)
part fit && TAIL=4 step fit-families timeout "$FIT_LIMIT_S" python3 benchmarks/fit_cost_model.py --families \
  --provider "$PROVIDER" --batches 1,16 --size "$SIZE" --runs 10 --json "$OUT_DIR/fit_cost_model_families_cuda.json"
exit $status
