#!/usr/bin/env bash
# The GPU check a session runs, as it is, on a lent device machine (one H100 or H200, no
# network, its own python3 with torch), in under 8 minutes; every figure goes to one file.
#
#   bash benchmarks/gpu_check.sh --wheels             # here, with the package registry: fetch
#                                                     # into .whl/ what the device image lacks
#   bash benchmarks/gpu_check.sh --out "$OUT"         # there, with .whl carried
#   bash benchmarks/gpu_check.sh --dry-run --out DIR  # anywhere: every stage at smoke size;
#                                                     # without CUDA the gpu tests skip
#
# Stages: install (the carried wheels into a temporary target, when flwr does not import),
# the environment, `pytest -m gpu` (tests/test_accelerator.py: float64 and float32 runs on
# CUDA held to the matrix rule and to the CPU, the vectorized engine against the in-process
# one, a CNN round against the CPU's), benchmarks/overhead.py (CNN, 16 clients, tau 8) and
# benchmarks/scale.py (CNN, 50 and 1,000 clients, a cohort of 50) for the vectorized and
# in-process engines. A stage that fails is reported in the file and the rest still run;
# the exit status is the number of failed stages. docs/testing.md#on-a-gpu says how to call
# it through the device tool.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
WHEELS=0
OUTDIR=""
while (($#)); do
    case "$1" in
    --dry-run) DRY=1 ;;
    --wheels) WHEELS=1 ;;
    --out)
        OUTDIR="$2"
        shift
        ;;
    *)
        echo "usage: $0 [--dry-run] [--wheels] [--out DIR]" >&2
        exit 2
        ;;
    esac
    shift
done
PYTHON="${PYTHON:-python3}"

# What the device image lacks of what the check imports (flwr and its server-side
# dependencies), at the versions of the environment that --wheels runs in.
DEVICE_LACKS="flwr alembic annotated-doc annotated-types cffi click cryptography dill fastapi
greenlet grpcio grpcio-health-checking iterators mako protobuf pycparser pycryptodome pydantic
pydantic-core sqlalchemy starlette tomli tomli-w typer typing-inspection uvicorn"
DEVICE_PYTHON="3.12"

if ((WHEELS)); then
    mkdir -p .whl
    for name in $DEVICE_LACKS; do
        version=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('$name'))") || exit 1
        "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$DEVICE_PYTHON" \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
            "$name==$version" || exit 1
    done
    du -sh .whl
    exit 0
fi

OUTDIR="${OUTDIR:-$PWD/gpu-check}"
mkdir -p "$OUTDIR"
REPORT="$OUTDIR/gpu-check.txt"
: >"$REPORT"
FAILED=0
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

stage() { # stage NAME COMMAND...: run it, its output into the report and on screen
    local name="$1" start rc
    shift
    start=$(date +%s)
    echo "## $name: $*" | tee -a "$REPORT"
    "$@" 2>&1 | tee -a "$REPORT"
    rc=${PIPESTATUS[0]}
    echo "## $name: rc $rc in $(($(date +%s) - start)) s" | tee -a "$REPORT"
    ((rc == 0)) || FAILED=$((FAILED + 1))
}

install() {
    if "$PYTHON" -c "import flwr" 2>/dev/null; then
        echo "flwr imports: nothing to install"
        return 0
    fi
    if ! compgen -G ".whl/*.whl" >/dev/null; then
        echo "flwr does not import and no .whl/ was carried: run --wheels here first"
        return 1
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu-check-site .whl/*.whl || return 1
    export PYTHONPATH="$PYTHONPATH:/tmp/gpu-check-site"
    "$PYTHON" -c "import flwr; print('flwr', flwr.__version__, 'from the carried wheels')"
}

environment() {
    date -u +%FT%TZ
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
        --format=csv,noheader
    "$PYTHON" - <<'EOF'
import os, platform, torch, flwr
print("python", platform.python_version(), "torch", torch.__version__, "flwr", flwr.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("cpu cores", os.cpu_count())
EOF
}

stage install install
# the install's PYTHONPATH, for the stages after it (a function run by `stage` in a pipe
# runs in a subshell)
"$PYTHON" -c "import flwr" 2>/dev/null || export PYTHONPATH="$PYTHONPATH:/tmp/gpu-check-site"
stage environment environment

if ((DRY)); then
    OVERHEAD=(--model logreg --clients 4 --tau 2 --rounds 2)
    SCALE_SMALL=(--model logreg --clients 4 --cohort 2 --rounds 1 --tau 2 --dataset mnist-embedded)
    SCALE_LARGE=(--model logreg --clients 8 --cohort 4 --rounds 1 --tau 2 --dataset mnist-embedded)
else
    OVERHEAD=(--model cnn --clients 16 --tau 8 --rounds 5)
    SCALE_SMALL=(--model cnn --clients 50 --cohort 50 --rounds 3)
    SCALE_LARGE=(--model cnn --clients 1000 --cohort 50 --rounds 3)
fi
ENGINES=(--engines vectorized,inprocess)

# the modules that hold gpu tests, named: collecting the others would import data set
# libraries the device image lacks
stage gpu-tests "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider -W ignore -rs \
    tests/test_accelerator.py tests/test_augment.py
stage overhead "$PYTHON" benchmarks/overhead.py "${OVERHEAD[@]}" "${ENGINES[@]}"
stage scale-50 "$PYTHON" benchmarks/scale.py "${SCALE_SMALL[@]}" "${ENGINES[@]}"
stage scale-1000 "$PYTHON" benchmarks/scale.py "${SCALE_LARGE[@]}" "${ENGINES[@]}"

echo "## failed stages: $FAILED (report: $REPORT)" | tee -a "$REPORT"
exit "$FAILED"
