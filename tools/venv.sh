#!/usr/bin/env bash
# Create or refresh the project virtualenv at <repo>/.venv.
#
# Idempotent: when setup.cfg, pyproject.toml, this script, the Python version
# and the settings below are unchanged since the last successful run (recorded
# in .venv/.effdet-fingerprint) and the key imports work, it exits in a few
# seconds without touching anything.
#
# Environment:
#   PYTHON=...              base interpreter (default python3.11, then python3;
#                           must be Python 3.10 or 3.11)
#   EFFDET_DEVICE=cpu|gpu   TensorFlow flavour: tensorflow-cpu or
#                           tensorflow[and-cuda] (default cpu)
#   EFFDET_SKIP_HOROVOD=1   do not build Horovod; the project then runs
#                           single-process only (no synchronized batch norm,
#                           no multi-worker runs)
#   EFFDET_VENV_VERBOSE=1   show full pip output
#
# Horovod 0.28.1 is built from source against the installed TensorFlow
# (needs g++; uses the pip cmake 3.x; CPU/Gloo build, plus MPI when mpicc is on
# PATH). It is not a setup.cfg extra because it needs --no-build-isolation.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
FP_FILE="$VENV/.effdet-fingerprint"
HOROVOD_VERSION=0.28.1
DEVICE="${EFFDET_DEVICE:-cpu}"
SKIP_HVD="${EFFDET_SKIP_HOROVOD:-0}"
[[ "$SKIP_HVD" == 1 || "$SKIP_HVD" == true ]] && SKIP_HVD=1 || SKIP_HVD=0
START=$SECONDS

log() { echo "[venv] $*" >&2; }
die() { echo "[venv] ERROR: $*" >&2; exit 1; }

case "$DEVICE" in
  cpu|gpu) ;;
  *) die "EFFDET_DEVICE must be 'cpu' or 'gpu' (got '$DEVICE')" ;;
esac

# pip, quiet unless EFFDET_VENV_VERBOSE=1. The quiet mode also drops the
# "Location 'file:///...' is ignored" warnings that this machine's global pip
# config (an empty extra index dir) prints once per package.
pip_() {
  if [[ "${EFFDET_VENV_VERBOSE:-0}" == 1 ]]; then
    "$VPY" -m pip "$@"
  else
    "$VPY" -m pip -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  fi
}

# --- pick the base interpreter ------------------------------------------------
PY=""
PY_VERSION=""
for cand in "${PYTHON:-python3.11}" python3; do
  if ver="$("$cand" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"; then
    case "$ver" in
      3.10|3.11) PY="$cand"; PY_VERSION="$("$cand" -c 'import sys; print(sys.version.split()[0])')"; break ;;
      *) log "skipping $cand: Python $ver (need 3.10 or 3.11)" ;;
    esac
  else
    log "skipping $cand: not runnable"
  fi
done
[[ -n "$PY" ]] || die "no usable Python 3.10/3.11 found (tried ${PYTHON:-python3.11} and python3); set PYTHON=/path/to/python3.11"

# --- serialize concurrent runs (e.g. two make targets at once) ----------------
if command -v flock >/dev/null 2>&1; then
  LOCK="${TMPDIR:-/tmp}/effdet-venv-$(printf '%s' "$ROOT" | sha256sum | cut -c1-16).lock"
  exec 9>"$LOCK"
  flock 9
fi

# --- fingerprint ----------------------------------------------------------------
# Top-level package dirs are included so that an editable install made before
# effdet/ existed is redone once it appears.
fingerprint() {
  {
    for f in setup.cfg pyproject.toml tools/venv.sh; do
      echo "== $f"
      cat "$f" 2>/dev/null || echo "<missing>"
    done
    echo "python=$PY_VERSION"
    echo "device=$DEVICE"
    echo "skip_horovod=$SKIP_HVD"
    echo "packages=$(ls -d effdet*/__init__.py 2>/dev/null | tr '\n' ' ')"
  } | sha256sum | cut -d' ' -f1
}
FP="$(fingerprint)"

IMPORTS="import tensorflow, hydra, tf2onnx, onnxruntime"
[[ "$SKIP_HVD" == 1 ]] || IMPORTS="$IMPORTS, horovod.tensorflow"

quiet_import() { TF_CPP_MIN_LOG_LEVEL=3 "$VPY" -c "$1" >/dev/null 2>&1; }

if [[ -x "$VPY" && -f "$FP_FILE" && "$(cat "$FP_FILE")" == "$FP" ]] && quiet_import "$IMPORTS"; then
  log "up to date ($((SECONDS - START))s)"
  exit 0
fi

# --- (re)create the venv ------------------------------------------------------
log "refreshing $VENV (python $PY_VERSION via $PY, device=$DEVICE, skip_horovod=$SKIP_HVD)"
export PATH="$VENV/bin:$PATH"   # cmake / horovodrun from the venv

VENV_VERSION="$("$VPY" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || true)"
if [[ "$VENV_VERSION" != "$PY_VERSION" ]]; then
  if [[ -e "$VENV" ]]; then
    log "recreating .venv (has Python '${VENV_VERSION:-broken}', want $PY_VERSION)"
  else
    log "creating .venv"
  fi
  "$PY" -m venv --clear "$VENV"
fi
rm -f "$FP_FILE"   # written again only after everything below succeeded

log "upgrading pip, setuptools, wheel"
pip_ install --upgrade pip setuptools wheel

# CMake 4 dropped compatibility with cmake_minimum_required(< 3.5), which
# Horovod 0.28.1's bundled third_party/gloo still declares: pin CMake 3.x.
log "installing cmake (3.x, for the Horovod build)"
pip_ install "cmake>=3.13,<4"

# tensorflow-cpu and tensorflow share one import package: when switching
# EFFDET_DEVICE on an existing venv, remove both flavours (the install below
# puts back the right one; Horovod is then rebuilt if it no longer imports).
if [[ "$DEVICE" == gpu ]]; then OTHER_TF=tensorflow-cpu; else OTHER_TF=tensorflow; fi
if "$VPY" -m pip show "$OTHER_TF" >/dev/null 2>&1; then
  log "removing $OTHER_TF (switching to EFFDET_DEVICE=$DEVICE)"
  pip_ uninstall -y tensorflow tensorflow-cpu
fi

log "installing effdet (editable) with extras [$DEVICE,onnx,dev]"
pip_ install -e ".[$DEVICE,onnx,dev]"

# --- Horovod ----------------------------------------------------------------------
horovod_ok() {
  TF_CPP_MIN_LOG_LEVEL=3 "$VPY" -c "
import sys, horovod, horovod.tensorflow
sys.exit(0 if horovod.__version__ == '$HOROVOD_VERSION' else 1)" >/dev/null 2>&1
}

if [[ "$SKIP_HVD" == 1 ]]; then
  log "EFFDET_SKIP_HOROVOD=1: skipping Horovod (the project runs single-process without it)"
else
  if horovod_ok; then
    log "horovod $HOROVOD_VERSION already importable; not rebuilding"
  else
    command -v "${CXX:-g++}" >/dev/null 2>&1 \
      || die "Horovod needs a C++ compiler (${CXX:-g++}); install it (apt-get install -y g++) or set EFFDET_SKIP_HOROVOD=1"
    if "$VPY" -m pip show horovod >/dev/null 2>&1; then
      log "removing unusable/other-version horovod"
      pip_ uninstall -y horovod
    fi
    if command -v mpicc >/dev/null 2>&1; then
      MPI_FLAG=HOROVOD_WITH_MPI; MPI_DESC="with MPI"
    else
      MPI_FLAG=HOROVOD_WITHOUT_MPI; MPI_DESC="without MPI"
    fi
    log "building horovod $HOROVOD_VERSION against TensorFlow (Gloo, $MPI_DESC; takes a few minutes)"
    (
      export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
      export HOROVOD_WITH_GLOO=1 "$MPI_FLAG=1"
      export HOROVOD_CMAKE="$VENV/bin/cmake"     # not whatever cmake is on PATH
      export CMAKE_POLICY_VERSION_MINIMUM=3.5     # in case a CMake 4 is used anyway
      # horovod's setup.py defaults to make -j8; match the cores instead (the
      # TF-header compiles take ~1-2 GB each). Overrides flags from an outer make.
      export MAKEFLAGS="-j$(nproc 2>/dev/null || echo 2)"
      pip_ install --no-build-isolation --no-cache-dir "horovod==$HOROVOD_VERSION"
    )
  fi
  log "checking horovod"
  size="$(TF_CPP_MIN_LOG_LEVEL=3 "$VPY" -c 'import horovod.tensorflow as hvd; hvd.init(); print(hvd.size())' 2>/dev/null | tail -n1 || true)"
  [[ "$size" == 1 ]] || die "horovod.tensorflow hvd.init() failed (size='$size')"
  TF_CPP_MIN_LOG_LEVEL=2 "$VENV/bin/horovodrun" --check-build >&2 || die "horovodrun --check-build failed"
fi

log "checking imports: $IMPORTS"
TF_CPP_MIN_LOG_LEVEL=3 "$VPY" -c "$IMPORTS" >/dev/null || die "import check failed: $IMPORTS"

echo "$FP" > "$FP_FILE"
log "done ($((SECONDS - START))s)"
