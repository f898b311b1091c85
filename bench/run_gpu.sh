#!/usr/bin/env bash
# The one prepared GPU check: bench/gpu_qlora.py at Mistral-7B-Instruct-v0.3's shapes, ours vs plain TRL, on a
# lent CUDA machine that has no network. It uses that machine's own python3 (the one with a CUDA torch; this repo's
# .venv holds a CPU torch and is never used there) plus the pinned packages it lacks, carried as wheels in .whl/.
#
# 1. Here (a machine with the package index), once:
#      bash bench/run_gpu.sh --fetch-wheels      # ~60 MB into .whl/, and .whl/ added to .git/info/exclude
# 2. On the GPU machine (the device tool: command `bash bench/run_gpu.sh`, carry [".whl"], timeout_s 600):
#      bash bench/run_gpu.sh                      # results in $OUT (or bench/results): gpu_qlora.json/.md, log
#    bash bench/run_gpu.sh --sweep              # our batch layout / checkpointing settings vs the baseline: gpu_sweep.*
#    bash bench/run_gpu.sh --parity --profile   # issue 17: loss parity over 8 steps (loss_parity.*), then one
#                                               # profiled optimizer step per side (profile_step.*, traces .json.gz)
#    bash bench/run_gpu.sh --decode             # issue 16: adapter decode in the local engine, eager vs compiled
#                                               # (adapter_decode.json/.md)
#    bash bench/run_gpu.sh --plan               # the memory plan's predicted peak against max_memory_allocated at
#                                               # three batch layouts (precision_memory-plan.json/.md)
#    bash bench/run_gpu.sh --fp16               # the paper recipe in fp16 against bf16: losses within 1%, no skipped
#                                               # step after warm-up (precision_memory-fp16.json/.md)
#    CPU_REHEARSAL=1 bash bench/run_gpu.sh        # here, with the .venv's python first on PATH: the same path at
#                                                 # tiny shapes on the CPU (checks this script, not the GPU)
#
# Sized to finish in about 6 minutes on an H200 (model build and save ~1 min, each side's 4-bit load ~0.5 min,
# 8 optimizer steps of 8 x ~1,500-token conversations per side, then 4-bit generation); everything is written after
# each phase, so a run cut short still returns what it measured. Set STEPS / GEN_TOKENS / BENCH_TIMEOUT to change it.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(trl==1.16.0 bitsandbytes==0.50.2 transformers==5.24.0 peft==0.21.2 datasets==5.2.0 liger-kernel==0.8.5
        dill==0.4.1 multiprocess==0.70.19 regex==2026.11.19)  # regex: transformers checks its version at import

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  # Python 3.12 x86-64 wheels for the GPU image (KINDS.md: python3 3.12, torch/accelerate/triton already there).
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  platforms=()
  for n in 39 35 34 31 28 27 24 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 --platform any -d .whl "${WHEELS[@]}" || exit 1
  du -ch .whl/*.whl | tail -1
  exit 0
fi

OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
exec > >(tee "$OUT/run_gpu.log") 2>&1
PY=python3
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

# Carried wheels go beside the image's packages, without touching them
if [[ "${CPU_REHEARSAL:-}" != 1 ]] && compgen -G ".whl/*.whl" > /dev/null; then  # Python 3.12 wheels: GPU side only
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "error: installing the carried wheels failed"; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

# Preflight: a CUDA torch and every import the benchmark needs, before a minute of GPU time is spent
$PY - <<'EOF' || { echo "error: preflight failed (the line above says what is missing; wheels: 'bash bench/run_gpu.sh --fetch-wheels' on a machine with the package index, then carry .whl)"; exit 2; }
import importlib, os, shutil, sys
missing = []
try:
    import torch
except ImportError:
    sys.exit("missing: torch")
if not torch.cuda.is_available() and os.environ.get("CPU_REHEARSAL") != "1":
    sys.exit(f"torch {torch.__version__} sees no CUDA device (torch.version.cuda={torch.version.cuda})")
if torch.cuda.is_available():
    print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"{torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
else:
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}: CPU rehearsal at tiny shapes")
for name in ("transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate", "safetensors", "tokenizers",
             "yaml", "matplotlib", "trl.trainer.sft_trainer"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '')}")
    except Exception as exc:  # an import that fails for any reason is what this check is for
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
try:
    import liger_kernel  # optional: TRL's use_liger_kernel on our side
    print("  liger_kernel available")
except Exception as exc:
    print(f"  liger_kernel not usable ({exc}); the benchmark runs without it and says so")
free = shutil.disk_usage("/tmp").free / 2**30
print(f"  /tmp free: {free:.0f} GiB (the bf16 model needs ~14 GiB)")
if free < 20:
    missing.append("disk: less than 20 GiB free in /tmp")
if missing:
    sys.exit("missing: " + "; ".join(missing))
EOF

STEPS="${STEPS:-6}"
GEN_TOKENS="${GEN_TOKENS:-64}"
SHAPE=(--model-dir /tmp/gpu_qlora-mistral7b)
[[ "${CPU_REHEARSAL:-}" == 1 ]] && SHAPE=(--tiny --model-dir /tmp/gpu_qlora-tiny) && STEPS=2 && GEN_TOKENS=8
if [[ "${1:-}" == "--parity" || "${1:-}" == "--profile" || "${1:-}" == "--decode" || "${1:-}" == "--plan" \
      || "${1:-}" == "--fp16" ]]; then
  # Issue 17, in the order given (both fit one call: ~1 min model build, shared; parity ~2 x (0.5 min load +
  # 8 steps); profile ~2 x (0.5 min load + 3 steps + trace processing)). Each has its own timeout, so one that runs
  # long cannot cost the other; both write their JSON/markdown as they go. TRACE=0 skips the Chrome traces.
  PARITY_STEPS="${PARITY_STEPS:-8}"
  status=0
  for mode in "$@"; do
    case "$mode" in
      --parity)
        timeout "${PARITY_TIMEOUT:-270}" $PY bench/loss_parity.py --steps "$PARITY_STEPS" --out-dir "$OUT" \
          --work-dir /tmp/loss_parity-work --quiet "${SHAPE[@]}"
        rc=$?; echo "bench/loss_parity.py exit status: $rc (1: FAIL or a side failed; 124: timed out)";;
      --profile)
        trace=(); [[ "${TRACE:-1}" == 0 ]] && trace=(--no-trace)
        timeout "${PROFILE_TIMEOUT:-300}" $PY bench/profile_step.py --mode both --out-dir "$OUT" \
          --work-dir /tmp/profile_step-work --quiet "${trace[@]}" "${SHAPE[@]}"
        rc=$?; echo "bench/profile_step.py exit status: $rc";;
      --decode)
        # Issue 16: the local engine's adapter decode, eager vs compiled (static cache + CUDA graphs, hot-swapped
        # slot), 4-bit base + two rank-16 adapters; ~0.5 min load per mode, compiling two graphs ~1-3 min.
        decode_shape=(--mistral7b "${SHAPE[@]}"); [[ "${CPU_REHEARSAL:-}" == 1 ]] && decode_shape=(--no-4bit "${SHAPE[@]}")
        timeout "${DECODE_TIMEOUT:-420}" $PY bench/adapter_decode.py --new-tokens "${DECODE_TOKENS:-64}" \
          --out-dir "$OUT" --work-dir /tmp/adapter_decode-work "${decode_shape[@]}"
        rc=$?; echo "bench/adapter_decode.py exit status: $rc (1: the modes' answers differ; 124: timed out)";;
      --plan)
        # Issue 28: the memory plan against max_memory_allocated, stage 1 at three layouts (3 runs x (0.5 min load +
        # 3 steps), model build ~1 min, shared with --fp16)
        timeout "${PLAN_TIMEOUT:-300}" $PY bench/precision_memory.py --mode plan --out-dir "$OUT" --quiet "${SHAPE[@]}"
        rc=$?; echo "bench/precision_memory.py --mode plan exit status: $rc";;
      --fp16)
        # Issue 28: the paper recipe in fp16 against bf16 (2 runs x (0.5 min load + 12 steps))
        timeout "${FP16_TIMEOUT:-300}" $PY bench/precision_memory.py --mode fp16 --steps "${FP16_STEPS:-12}" \
          --out-dir "$OUT" --quiet "${SHAPE[@]}"
        rc=$?; echo "bench/precision_memory.py --mode fp16 exit status: $rc (1: FAIL or a run failed)";;
      *) echo "unknown mode $mode (use --parity, --profile, --decode, --plan and/or --fp16)"; rc=2;;
    esac
    [[ $rc != 0 ]] && status=$rc
  done
  nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv 2>/dev/null || true
  exit $status
fi

if [[ "${1:-}" == "--sweep" ]]; then
  # Our side's batch layout and activation checkpointing, one setting at a time, beside the plain-TRL baseline, on
  # the same model and data (built once, reused by every run), no generation: bench/results/gpu_sweep.{json,md}.
  # Each run gets its own timeout so one slow setting cannot cost the others.
  B="--set stages.stage1.per_device_train_batch_size"; A="--set stages.stage1.gradient_accumulation_steps"
  VARIANTS=(
    "baseline|--mode baseline"
    "ours (configs/paper.yaml: 8 x 1 packed, checkpointing, Liger)|--mode ours"
    "ours 8 x 1 without Liger|--mode ours --liger off"
    "ours 2 x 4 without checkpointing|--mode ours $B=2 $A=4 --set training.gradient_checkpointing=false"
    "ours 4 x 2 without checkpointing|--mode ours $B=4 $A=2 --set training.gradient_checkpointing=false"
    "ours 2 x 4 with checkpointing|--mode ours $B=2 $A=4"
    "ours (configs/paper.yaml) with compile_layers|--mode ours --set training.compile_layers=true"
  )
  i=0
  for v in "${VARIANTS[@]}"; do
    label="${v%%|*}"; read -r -a flags <<< "${v#*|}"
    echo "[sweep] $label: ${flags[*]}"
    timeout "${RUN_TIMEOUT:-110}" $PY bench/gpu_qlora.py "${flags[@]}" --steps "$STEPS" --warmup-steps 2 --gen-tokens 0 \
      --out-dir "/tmp/gpu_sweep/$i" --work-dir /tmp/gpu_qlora-work --quiet "${SHAPE[@]}"
    echo "[sweep] $label: exit $?"
    $PY - "$OUT" "$i" "$label" <<'PYEOF'
import json, sys
from pathlib import Path
out, i, label = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
path = out / "gpu_sweep.json"
runs = json.loads(path.read_text()) if path.is_file() else []
result = Path(f"/tmp/gpu_sweep/{i}/gpu_qlora.json")
run = json.loads(result.read_text()) if result.is_file() else {"error": "no result (timed out?)"}
runs.append({"label": label, "command": run.get("command"), "data": run.get("data"), "sides": run.get("sides"),
             "error": run.get("error")})
path.write_text(json.dumps(runs, indent=2) + "\n")
keys = ("tokens_per_second", "samples_per_second", "mfu", "peak_gpu_allocated_gb", "peak_gpu_reserved_gb")
lines = ["| run | tokens/s | samples/s | MFU | peak GPU alloc / reserved (GB) |", "|---|---|---|---|---|"]
for r in runs:
    for side in (r.get("sides") or {}).values():
        if "error" in side:
            lines.append(f"| {r['label']} | failed: {side['error'][-120:]!r} | | | |")
        else:
            lines.append(f"| {r['label']} | {side.get('tokens_per_second')} | {side.get('samples_per_second')} | "
                         f"{side.get('mfu')} | {side.get('peak_gpu_allocated_gb')} / {side.get('peak_gpu_reserved_gb')} |")
(out / "gpu_sweep.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
    i=$((i + 1))
  done
  nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv 2>/dev/null || true
  exit 0
fi

timeout "${BENCH_TIMEOUT:-500}" $PY bench/gpu_qlora.py --mode both --steps "$STEPS" --warmup-steps 2 \
  --gen-tokens "$GEN_TOKENS" --out-dir "$OUT" --work-dir /tmp/gpu_qlora-work "${SHAPE[@]}"
status=$?
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv 2>/dev/null || true
echo "bench/gpu_qlora.py exit status: $status"
exit $status
