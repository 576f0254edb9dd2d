#!/usr/bin/env bash
# Start a run as an XPK workload on a GKE TPU cluster (one pod per TPU VM host, all slices):
#   CLUSTER=my-cluster RUN=7b-stage2 TPU_TYPE=v5p-256 IMAGE=gcr.io/my-project/dsvl_jax:latest \
#       launch/xpk.sh --config=experiments/stage2_pretrain.py:7b --workdir=/mnt/shared/runs/7b/stage2
# NUM_SLICES (default 1) > 1 adds DCN slices: the mesh's dcn axes come from parallel.dcn (data-parallel by
# default). The image holds this repo (pip install -e .[tpu]) and is started in its root (WORKDIR_IN_IMAGE).
# Optional: PROJECT, ZONE, COMMAND (default train). No logic here: see launch/README.md.
set -euo pipefail
: "${CLUSTER:?set CLUSTER}" "${RUN:?set RUN (workload name)}" "${TPU_TYPE:?set TPU_TYPE, e.g. v5p-256}"
: "${IMAGE:?set IMAGE (docker image with dsvl_jax installed)}"
args=$(printf ' %q' "$@")
exec xpk workload create --cluster "$CLUSTER" --workload "$RUN" --docker-image "$IMAGE" \
    --tpu-type "$TPU_TYPE" --num-slices "${NUM_SLICES:-1}" ${PROJECT:+--project "$PROJECT"} ${ZONE:+--zone "$ZONE"} \
    --command "cd ${WORKDIR_IN_IMAGE:-/app} && DSVL_DISTRIBUTED=auto python3 -m dsvl_jax.${COMMAND:-train}${args}"
