#!/usr/bin/env bash
# Start a run on every worker of a Cloud TPU VM slice (v4/v5e/v5p/v6e, single- or multi-host):
#   TPU_NAME=my-v5p-256 ZONE=us-east5-a launch/tpu_vm.sh \
#       --config=experiments/stage2_pretrain.py:7b --workdir=/mnt/shared/runs/7b/stage2
# Every worker runs the same `python -m dsvl_jax.<COMMAND>` (default train) in REPO_DIR (the checkout on the
# VMs); DSVL_DISTRIBUTED=auto makes jax.distributed.initialize() find the other workers by itself.
# Optional: PROJECT, REPO_DIR (default ~/dsvl_jax), PYTHON (default python3), COMMAND, LOG (default
# /tmp/dsvl_<COMMAND>.log on each worker; the run goes on if this shell's ssh drops: nohup).
# No logic here: see launch/README.md.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
cmd="${COMMAND:-train}"
args=$(printf ' %q' "$@")
remote="cd ${REPO_DIR:-~/dsvl_jax} && DSVL_DISTRIBUTED=auto nohup ${PYTHON:-python3} -m dsvl_jax.${cmd}${args} \
> ${LOG:-/tmp/dsvl_${cmd}.log} 2>&1 < /dev/null &"
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} --worker=all \
    --command="$remote"
