#!/usr/bin/env bash
# Check every CUDA path of fewshot in one command, meant to take under about 8 minutes on one GPU
# (its time on a GPU is not measured yet: none was available when it was written; the CPU
# rehearsal, --device cpu, ran every path but the CUDA tests here).
#
#   scripts/gpu_check.sh [OUT_JSON]          # default OUT_JSON: gpu_check.json
#   scripts/gpu_check.sh --dry-run           # print what it would install and run; run nothing
#   scripts/gpu_check.sh --no-install        # use the environment as it is (e.g. a CUDA image)
#   scripts/gpu_check.sh --device cpu        # rehearse every path on the CPU (tiny runs, no
#                                            # installs, no CUDA tests): checks the script itself
#
# On a machine without CUDA it prints one line saying why and exits 0, installing nothing.
# "No CUDA" means: CUDA_VISIBLE_DEVICES hides every GPU, or `nvidia-smi -L` lists none and the
# environment's torch sees none.
#
# With a GPU it
#   1. installs what the GPU needs into the virtual environment of scripts/install.sh (VENV,
#      default ./.venv; or PYTHON=/path/to/python): the CUDA build of torch 2.14.1 when the
#      installed torch has no CUDA (PyPI's Linux x86-64 wheels of 2.14.1 are the CUDA 13.0 build;
#      torchvision 0.29.1 with it), and faiss-gpu-cu12 in place of faiss-cpu (both own the `faiss`
#      module; re-running scripts/install.sh puts faiss-cpu back). Other versions come from
#      scripts/constraints.txt, as in install.sh;
#   2. runs the CUDA tests (`pytest -k cuda`: the tests parametrised or named for CUDA, which
#      skip themselves without a GPU);
#   3. runs a short training of each path through the `fewshot` CLI with --device cuda:
#        conv4          Conv-4 ProtoNet
#        vig            vig_small_28 ProtoNet (its best.pt is the frozen backbone of the prompt paths)
#        patch_voting   vig_small_28 with the patch voting matcher (node features)
#        maml, fomaml   GPF prompt on the frozen ViG, initialisation meta-learned by learn2learn
#        damvp          DAM-VP: k-means clusters of the frozen ViG's features, one VPT prompt each
#        knn_faiss      `fewshot eval --matcher knn` of the ViG run on a faiss GPU index (after
#                       checking that faiss sees the GPU and agrees with its CPU index: the k-NN
#                       matcher silently falls back to the CPU index otherwise)
#        bf16           training steps under the engine's bf16 autocast (fewshot.evaluation.
#                       autocast_for, which every CUDA run uses) against float32: activations
#                       must be bfloat16 and the loss finite; episodes/s of both
#        torchrun       Conv-4 training launched by `torchrun --standalone --nproc_per_node 1`
#                       (GPU_CHECK_NPROC=2 on a machine with 2 GPUs exercises DDP over NCCL; with
#                       one process fewshot forms no process group)
#      and prints episodes per second for each: train_episodes_per_s as the run logged it to
#      MLflow (a sqlite store in the work folder), test-bank episodes per second for knn_faiss;
#   4. writes every path's result (ok, episodes/s, test accuracy, wall time, command, the error's
#      last lines) and the GPU, driver, torch and faiss versions to OUT_JSON.
# Each path is a function: one failing path is reported and the others still run. The exit code
# is 0 when every path passed, 1 when one failed, 2 for a usage error.
#
# Environment: GPU_CHECK_EPISODES (training episodes of the plain paths, default 200; the meta
# paths take a tenth, DAM-VP a quarter), GPU_CHECK_EVAL_EPISODES (test bank, default 500),
# GPU_CHECK_WORK (folder for runs and logs, default a new temporary folder, kept), GPU_CHECK_NPROC.
#
# Known risks: faiss-gpu-cu12's wheels are built for compute capability 7.0-8.9 (Volta to Ada);
# on Hopper (H100/H200, 9.0) knn_faiss may fail with "no kernel image": the JSON then says so.
# PyPI's torch 2.14.1 is built for CUDA 13.0 and needs a driver that supports it (580 or newer);
# with an older driver torch sees no GPU: install a matching build from the PyTorch index, e.g.
#   .venv/bin/pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu126
# and run this script with --no-install.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="${PYTHON:-$VENV/bin/python}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
FAISS_GPU_VERSION=1.14.1.post1

OUT_JSON=gpu_check.json
DRY_RUN=0
INSTALL=1
DEVICE=cuda

say() { printf 'gpu_check: %s\n' "$*"; }
usage() { sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --no-install) INSTALL=0 ;;
    --device)
      [ $# -ge 2 ] || { say "--device needs a value: cuda or cpu" >&2; exit 2; }
      DEVICE="$2"; shift ;;
    --device=*) DEVICE="${1#--device=}" ;;
    -h|--help) usage; exit 0 ;;
    -*) say "unknown option $1 (valid: --dry-run, --no-install, --device cuda|cpu, --help)" >&2; exit 2 ;;
    *) OUT_JSON="$1" ;;
  esac
  shift
done
case "$DEVICE" in
  cuda|cpu) ;;
  *) say "--device must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;;
esac

int_env() {  # name default: a positive integer from the environment
  local v="${!1:-$2}"
  if ! [[ "$v" =~ ^[1-9][0-9]*$ ]]; then say "$1 must be a positive integer, got '$v'" >&2; exit 2; fi
  printf '%s' "$v"
}
if [ "$DEVICE" = cpu ]; then EPISODES_DEFAULT=4 EVAL_DEFAULT=10; else EPISODES_DEFAULT=200 EVAL_DEFAULT=500; fi
EPISODES="$(int_env GPU_CHECK_EPISODES "$EPISODES_DEFAULT")" || exit 2
EVAL_EPISODES="$(int_env GPU_CHECK_EVAL_EPISODES "$EVAL_DEFAULT")" || exit 2
NPROC="$(int_env GPU_CHECK_NPROC 1)" || exit 2
META_EPISODES=$(( EPISODES / 10 > 0 ? EPISODES / 10 : 1 ))
DAMVP_EPISODES=$(( EPISODES / 4 > 0 ? EPISODES / 4 : 1 ))

# ----- is there a GPU? (before anything is installed or written) --------------------------------
no_cuda_reason() {  # prints why there is no usable CUDA device; returns 1 when there is one
  if [ -n "${CUDA_VISIBLE_DEVICES+x}" ] && { [ -z "$CUDA_VISIBLE_DEVICES" ] || [ "$CUDA_VISIBLE_DEVICES" = "-1" ]; }; then
    echo "CUDA_VISIBLE_DEVICES='$CUDA_VISIBLE_DEVICES' hides every GPU"; return 0
  fi
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    return 1
  fi
  if [ -x "$PY" ] && "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    return 1
  fi
  echo "no CUDA device (nvidia-smi lists no GPU and $([ -x "$PY" ] && echo "torch in $PY sees none" || echo "there is no $PY"))"
  return 0
}

if [ "$DRY_RUN" = 1 ]; then
  say "dry run: the CUDA check is skipped; commands are printed (+ ...), nothing is installed or run"
elif [ "$DEVICE" = cuda ]; then
  if reason="$(no_cuda_reason)"; then
    say "skipped: $reason"
    exit 0
  fi
fi

if [ "$DRY_RUN" = 0 ] && [ ! -x "$PY" ]; then
  say "no Python at $PY: build the environment with 'bash scripts/install.sh' (or set VENV / PYTHON)" >&2
  exit 2
fi

if [ "$DRY_RUN" = 1 ]; then
  WORK="${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/gpu-check.dry-run}"
else
  WORK="${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}"
  mkdir -p "$WORK/results" "$WORK/runs" || exit 2
fi
TRACKING="sqlite:///$WORK/mlflow.db"
PIP=("$PY" -m pip --disable-pip-version-check)

show() {  # a command as the shell would read it
  local out="" arg
  for arg in "$@"; do out+="$(printf '%q' "$arg") "; done
  printf '+ %s\n' "${out% }"
}

run() {  # run a command, or print it in a dry run
  show "$@"
  [ "$DRY_RUN" = 1 ] || "$@"
}

# ----- 1. install --------------------------------------------------------------------------------
install_gpu_packages() {
  if [ "$DRY_RUN" = 1 ] || ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
    say "installing the CUDA build of torch $TORCH_VERSION"
    run "${PIP[@]}" uninstall -y -q torch torchvision || return 1  # a +cpu build satisfies ==2.14.1
    run "${PIP[@]}" install -q -c "$ROOT/scripts/constraints.txt" "torch==$TORCH_VERSION" \
      "torchvision==$TORCHVISION_VERSION" || return 1
  fi
  if [ "$DRY_RUN" = 1 ] || ! "$PY" -c 'import faiss, sys; sys.exit(0 if hasattr(faiss, "StandardGpuResources") else 1)' 2>/dev/null; then
    say "installing faiss-gpu-cu12 $FAISS_GPU_VERSION in place of faiss-cpu"
    run "${PIP[@]}" uninstall -y -q faiss-cpu || return 1
    run "${PIP[@]}" install -q -c "$ROOT/scripts/constraints.txt" "faiss-gpu-cu12==$FAISS_GPU_VERSION" || return 1
  fi
}

# ----- the Python helpers, written into the work folder ------------------------------------------
write_helpers() {
  mkdir -p "$WORK/py" || return 1
  # record.py NAME RC WALL_MS KIND WORK COMMAND...: results/NAME.json from the path's logs
  cat >"$WORK/py/record.py" <<'EOF'
import json, sys
from pathlib import Path
name, rc, wall, kind, work, *command = sys.argv[1:]
out, err = (Path(work, f"{name}.{s}").read_text(errors="replace") if Path(work, f"{name}.{s}").exists() else ""
            for s in ("out", "err"))
rec = {"ok": rc == "0", "rc": int(rc), "wall_s": round(int(wall) / 1000, 2), "command": " ".join(command), "kind": kind}
lines = [l for l in out.splitlines() if l.strip()]
last = None
if lines:
    try:
        last = json.loads(lines[-1])
    except ValueError:
        pass
if isinstance(last, dict):
    rec["result"] = last
if kind == "pytest":
    rec["summary"] = lines[-1] if lines else ""
    skips = [l for l in out.splitlines() if l.startswith("SKIPPED")]
    if skips:
        rec["skipped"] = skips
    if rec["ok"] and " passed" not in rec["summary"]:
        rec.update(ok=False, error="no CUDA test ran")
if not rec["ok"] and "error" not in rec:
    rec["error"] = "\n".join((err or out).strip().splitlines()[-15:])
Path(work, "results", f"{name}.json").write_text(json.dumps(rec))
EOF
  # faiss_gpu.py: faiss sees the GPU and its flat index agrees with the CPU one
  cat >"$WORK/py/faiss_gpu.py" <<'EOF'
import sys
import faiss, numpy as np, torch
if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
    sys.exit(f"faiss {faiss.__version__} has no GPU support here (get_num_gpus: "
             f"{faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 'n/a'}); install faiss-gpu-cu12")
rng = np.random.default_rng(0)
base, queries = rng.standard_normal((2000, 96), dtype=np.float32), rng.standard_normal((300, 96), dtype=np.float32)
cpu = faiss.IndexFlatL2(96); cpu.add(base)
try:
    gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, faiss.IndexFlatL2(96)); gpu.add(base)
    _, got = gpu.search(queries, 5)
except Exception as e:
    cap = torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None
    sys.exit(f"faiss GPU search failed on compute capability {cap}: {e}")
_, want = cpu.search(queries, 5)
agree = float((got == want).mean())
print(f"faiss {faiss.__version__}: GPU and CPU flat indexes agree on {100 * agree:.2f} % of 5-NN ids")
sys.exit(0 if agree > 0.99 else "faiss GPU results differ from the CPU index")
EOF
  # bf16.py DEVICE STEPS: training steps under fewshot's bf16 autocast and in float32
  cat >"$WORK/py/bf16.py" <<'EOF'
import contextlib, json, sys, time
import torch, torch.nn.functional as F
from episodes import EpisodeSampler, load_splits
from fewshot import Config
from fewshot.evaluation import autocast_for
from fewshot.model import build_model
device, steps = torch.device(sys.argv[1]), int(sys.argv[2])
train = load_splits("glyphs").train
sampler = EpisodeSampler(train, way=5, shot=1, query=5, seed=0)
sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
out = {"device": str(device)}
for mode in ("bf16", "fp32"):
    torch.manual_seed(0)
    model = build_model(Config(backbone="vig_small_28"), 28, 1).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    context = (lambda: autocast_for(device)) if mode == "bf16" else contextlib.nullcontext
    def step(i):
        ep = sampler[i]
        s, q = train.images[ep.support].to(device), train.images[ep.query].to(device)
        with context():
            logits = model(s, ep.support_labels.to(device), q)
        loss = F.cross_entropy(logits.float(), ep.query_labels.to(device))
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        return loss.detach()
    if mode == "bf16":
        with torch.no_grad(), context():
            out["autocast_dtype"] = str(model.embed(train.images[:8].to(device)).dtype)
    for i in range(3):
        step(i)
    sync(); t0 = time.perf_counter()
    for i in range(steps):
        loss = step(3 + i)
    sync()
    out[f"{mode}_train_episodes_per_s"] = round(steps / (time.perf_counter() - t0), 2)
    out[f"{mode}_last_loss"] = round(float(loss), 4)
    if not torch.isfinite(loss):
        sys.exit(f"{mode}: loss is {float(loss)}")
print(json.dumps(out))
if device.type == "cuda" and out["autocast_dtype"] != "torch.bfloat16":
    sys.exit(f"autocast_for(cuda) gave {out['autocast_dtype']} activations, expected torch.bfloat16")
EOF
  # report.py WORK OUT_JSON TRACKING_URI DEVICE NAME...: the JSON report and the table
  cat >"$WORK/py/report.py" <<'EOF'
import json, platform, subprocess, sys
from pathlib import Path
work, out_path, tracking, device = sys.argv[1:5]
names = sys.argv[5:]
paths = {}
for name in names:
    f = Path(work, "results", f"{name}.json")
    paths[name] = json.loads(f.read_text()) if f.exists() else {"ok": False, "error": "did not run"}
runs = {n: p["result"]["mlflow_run_id"] for n, p in paths.items()
        if isinstance(p.get("result"), dict) and p["result"].get("mlflow_run_id")}
if runs:
    try:
        from mlflow.tracking import MlflowClient
        client = MlflowClient(tracking_uri=tracking)
        for n, run_id in runs.items():
            history = client.get_metric_history(run_id, "train_episodes_per_s")
            if history:
                paths[n]["train_episodes_per_s"] = round(history[-1].value, 2)
    except Exception as e:  # the numbers are missing, the paths still ran
        for n in runs:
            paths[n].setdefault("note", f"could not read MLflow: {e}")
for n, p in paths.items():
    r = p.get("result") or {}
    if "test_acc" in r:
        p["test_acc"] = r["test_acc"]
    if r.get("eval_seconds") and r.get("test_episodes"):
        p["eval_episodes_per_s"] = round(r["test_episodes"] / r["eval_seconds"], 2)
    if "bf16_train_episodes_per_s" in r:
        p["train_episodes_per_s"] = r["bf16_train_episodes_per_s"]
        p["fp32_train_episodes_per_s"] = r["fp32_train_episodes_per_s"]
env = {"python": platform.python_version(), "device": device}
try:
    import torch
    env.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)))
except Exception as e:
    env["torch"] = f"import failed: {e}"
try:
    import faiss
    env.update(faiss=faiss.__version__, faiss_gpus=faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0)
except Exception as e:
    env["faiss"] = f"import failed: {e}"
try:
    env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20).stdout.strip() or None
except Exception:
    env["driver"] = None
report = {"ok": all(p.get("ok") for p in paths.values()), "environment": env, "work": work, "paths": paths}
Path(out_path).write_text(json.dumps(report, indent=2) + "\n")
print(f"{'path':<14} {'ok':<5} {'train ep/s':>10} {'eval ep/s':>10} {'test acc':>9} {'wall s':>7}")
for n, p in paths.items():
    cell = lambda k, f: format(p[k], f) if isinstance(p.get(k), (int, float)) else "-"
    print(f"{n:<14} {str(bool(p.get('ok'))):<5} {cell('train_episodes_per_s', '10.1f'):>10} "
          f"{cell('eval_episodes_per_s', '10.1f'):>10} {cell('test_acc', '9.3f'):>9} {cell('wall_s', '7.1f'):>7}")
print(f"written to {out_path}")
sys.exit(0 if report["ok"] else 1)
EOF
}

# ----- helpers that run one path and record it ---------------------------------------------------
# record NAME RC WALL_S KIND COMMAND...: results/NAME.json from the path's stdout/stderr logs

path() {  # path NAME KIND COMMAND...: run, time and record one path
  local name="$1" kind="$2"; shift 2
  say "--- $name"
  if [ "$DRY_RUN" = 1 ]; then show "$@"; return 0; fi
  local t0 wall_ms rc
  t0=$(date +%s%N)
  "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
  rc=$?
  wall_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  "$PY" "$WORK/py/record.py" "$name" "$rc" "$wall_ms" "$kind" "$WORK" "$@" || rc=1
  if [ "$rc" = 0 ]; then say "$name: ok ($(( wall_ms / 1000 )) s)"
  else say "$name: FAILED (exit $rc): $(tail -n 1 "$WORK/$name.err")"; fi
  return "$rc"
}

fail_path() {  # fail_path NAME MESSAGE: record a path that could not start
  say "--- $1"; say "$1: FAILED: $2"
  [ "$DRY_RUN" = 1 ] && return 0
  "$PY" -c 'import json, sys; from pathlib import Path
Path(sys.argv[3], "results", sys.argv[1] + ".json").write_text(json.dumps({"ok": False, "error": sys.argv[2]}))' \
    "$1" "$2" "$WORK"
}

fewshot() {  # the CLI with the options every path shares
  local sub="$1"; shift
  printf '%s\0' "$PY" -m fewshot "$sub" "$@" --device "$DEVICE" --tracking-uri "$TRACKING" --experiment gpu-check \
    --no-progress --json
}
as_array() { mapfile -d '' -t CMD; }  # CMD=( ...NUL-separated words from stdin... )

VIG_RUN="$WORK/runs/vig"
TRAIN_COMMON=(--way 5 --shot 1 --query 15 --eval-episodes "$EVAL_EPISODES")

# ----- 2. the CUDA tests -------------------------------------------------------------------------
check_tests() {
  if [ "$DEVICE" = cpu ]; then say "--- tests: not run with --device cpu (they need CUDA)"; return 0; fi
  path tests pytest "$PY" -m pytest -q -p no:cacheprovider -rs -k cuda "$ROOT/tests"
}

# ----- 3. one function per path ------------------------------------------------------------------
check_conv4() {
  as_array < <(fewshot train --backbone conv4 --episodes "$EPISODES" --val-episodes 0 "${TRAIN_COMMON[@]}" \
    --run-dir "$WORK/runs/conv4")
  path conv4 cli "${CMD[@]}"
}

check_vig() {  # validates once at the end so that best.pt exists for the prompt paths
  as_array < <(fewshot train --backbone vig_small_28 --episodes "$EPISODES" --val-episodes 20 \
    --val-every "$EPISODES" --train-query 5 "${TRAIN_COMMON[@]}" --run-dir "$VIG_RUN")
  path vig cli "${CMD[@]}"
}

check_patch_voting() {
  as_array < <(fewshot train --backbone vig_small_28 --matcher patch_voting --episodes "$EPISODES" \
    --val-episodes 0 --train-query 5 "${TRAIN_COMMON[@]}" --run-dir "$WORK/runs/patch_voting")
  path patch_voting cli "${CMD[@]}"
}

need_vig() {  # need_vig NAME: the prompt paths load the ViG path's best.pt
  if [ "$DRY_RUN" = 0 ] && [ ! -f "$VIG_RUN/best.pt" ]; then
    fail_path "$1" "needs $VIG_RUN/best.pt from the vig path, which failed"; return 1
  fi
}

check_meta() {  # check_meta maml|fomaml
  need_vig "$1" || return 1
  as_array < <(fewshot train --backbone vig_small_28 --backbone-from "$VIG_RUN/best.pt" --prompt gpf \
    --meta-init "$1" --adapt tune --inner-steps 1 --inner-lr 0.1 --meta-batch 4 --adapt-steps 2 \
    --episodes "$META_EPISODES" --val-episodes 0 --train-query 5 "${TRAIN_COMMON[@]}" --run-dir "$WORK/runs/$1")
  path "$1" cli "${CMD[@]}"
}

check_damvp() {
  need_vig damvp || return 1
  as_array < <(fewshot train --backbone vig_small_28 --backbone-from "$VIG_RUN/best.pt" --prompt damvp \
    --clusters 4 --cluster-prompt vpt --episodes "$DAMVP_EPISODES" --val-episodes 0 --train-query 5 \
    "${TRAIN_COMMON[@]}" --run-dir "$WORK/runs/damvp")
  path damvp cli "${CMD[@]}"
}


check_knn_faiss() {
  need_vig knn_faiss || return 1
  if [ "$DEVICE" = cuda ]; then
    path knn_faiss_index check "$PY" "$WORK/py/faiss_gpu.py" || {
      fail_path knn_faiss "faiss cannot search on the GPU: $(tail -n 3 "$WORK/knn_faiss_index.err" 2>/dev/null)"
      return 1; }
  fi
  as_array < <(fewshot eval --run-dir "$VIG_RUN" --matcher knn --eval-episodes "$EVAL_EPISODES")
  path knn_faiss cli "${CMD[@]}"
}


check_bf16() {
  path bf16 check "$PY" "$WORK/py/bf16.py" "$DEVICE" "$EPISODES"
}

check_torchrun() {
  local -a args
  as_array < <(fewshot train --backbone conv4 --episodes "$EPISODES" --val-episodes 0 "${TRAIN_COMMON[@]}" \
    --run-dir "$WORK/runs/torchrun")
  args=("${CMD[@]:3}")  # drop "$PY -m fewshot"
  path torchrun cli "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m fewshot "${args[@]}"
}

# ----- 4. the JSON report ------------------------------------------------------------------------

# ----- main --------------------------------------------------------------------------------------
PATHS=(conv4 vig patch_voting maml fomaml damvp knn_faiss bf16 torchrun)
if [ "$DEVICE" = cuda ]; then PATHS=(tests "${PATHS[@]}"); fi
say "device $DEVICE, $EPISODES training episodes ($META_EPISODES meta, $DAMVP_EPISODES DAM-VP), $EVAL_EPISODES test episodes; work folder $WORK"

if [ "$DEVICE" = cuda ] && [ "$INSTALL" = 1 ]; then
  if ! install_gpu_packages; then
    say "installing the GPU packages failed; the paths run with what is installed"
  fi
fi
if [ "$DRY_RUN" = 0 ]; then
  write_helpers || { say "cannot write to $WORK" >&2; exit 2; }
  "$PY" -c 'import torch, faiss; print("torch", torch.__version__, "cuda", torch.version.cuda, "available",
torch.cuda.is_available(), "| faiss", faiss.__version__)' 2>&1 | sed 's/^/gpu_check: /'
  if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    say "torch sees no GPU although one is there: its CUDA build may need a newer driver (see the header)"
  fi
fi

check_tests
check_conv4
check_vig
check_patch_voting
check_meta maml
check_meta fomaml
check_damvp
check_knn_faiss
check_bf16
check_torchrun

if [ "$DRY_RUN" = 1 ]; then
  say "dry run: would write $OUT_JSON"
  exit 0
fi
"$PY" "$WORK/py/report.py" "$WORK" "$OUT_JSON" "$TRACKING" "$DEVICE" "${PATHS[@]}"
