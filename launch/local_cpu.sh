#!/usr/bin/env bash
# Run a dsvl_jax command on this machine with N fake CPU devices (default 8), e.g.
#   launch/local_cpu.sh demo --config=experiments/demo.py:tiny
# No logic here: it only sets the device count and calls `python -m dsvl_jax.<command>`.
set -euo pipefail
cmd=${1:?usage: launch/local_cpu.sh COMMAND [flags...]}; shift
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES:-8}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"  # with libtpu installed (AOT checks), never probe for a TPU
exec "${PYTHON:-python}" -m "dsvl_jax.${cmd}" "$@"
