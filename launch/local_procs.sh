#!/usr/bin/env bash
# N local CPU processes joined by jax.distributed on 127.0.0.1 (DEVICES fake devices each, default 4): the
# multi-host code path on one machine, e.g.
#   launch/local_procs.sh 2 -- --config=experiments/stage1_aligner.py:tiny --workdir=runs/mp
# COMMAND picks another dsvl_jax command (default train). No logic here: see dsvl_jax/parallel/local_launch.py.
set -euo pipefail
n=${1:?usage: launch/local_procs.sh N [--] FLAGS...}; shift
if [[ "${1:-}" == "--" ]]; then shift; fi
exec "${PYTHON:-python}" -m dsvl_jax.launch_local --procs="$n" --devices_per_proc="${DEVICES:-4}" -- "${COMMAND:-train}" "$@"
