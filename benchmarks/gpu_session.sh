#!/usr/bin/env bash
# Device-call wrapper for benchmarks/gpu_session.py: install what the GPU
# machine lacks, then run the stages. Everything lands in $OUT (else ./gpu_out).
#
#   bash benchmarks/gpu_session.sh STAGE [STAGE ...] [gpu_session.py options]
#
# Wheels carried in .whl/ (open_clip_torch, ftfy, wcwidth: the GPU image lacks them) go to /tmp/site;
# dawin_fast itself is installed editable (kernels/ is the package dawin_fast.kernels
# only through the install), without dependencies and without the network.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "gpu_session.sh: wheel install failed"; exit 3; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import dawin_fast.kernels" 2> /dev/null; then
    if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/pip-e.log 2>&1; then
        # No editable build here (e.g. no `wheel` for an old setuptools): the same package
        # layout through a link in this copy of the tree; no console script then.
        echo "gpu_session.sh: pip install -e . failed (see /tmp/pip-e.log); linking dawin_fast/kernels"
        ln -sfn ../kernels dawin_fast/kernels
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
    "$PY" -c "import dawin_fast.kernels" || { echo "gpu_session.sh: dawin_fast not importable"; exit 3; }
fi
exec "$PY" -m benchmarks.gpu_session "$@"
