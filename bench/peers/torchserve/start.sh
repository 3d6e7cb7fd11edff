#!/usr/bin/env bash
# TorchServe recipe: archive the handler (the TorchScript file is loaded by path, like every
# peer), write config.properties (one worker, batch size/delay, no token auth, no snapshots),
# then run the frontend in the foreground. Usage: start.sh VENV MODEL_DIR PORT BATCH DELAY_MS WORKDIR
set -euo pipefail
venv=$1 model_dir=$2 port=$3 batch=$4 delay_ms=$5 work=$6
here=$(cd "$(dirname "$0")" && pwd)
name=$(basename "$model_dir")
# The harness starts us inside $work: empty it rather than deleting our cwd.
mkdir -p "$work" && cd "$work" && rm -rf store logs tmp config.properties && mkdir -p store
"$venv/bin/torch-model-archiver" --model-name "$name" --version 1.0 --handler "$here/handler.py" \
  --export-path "$work/store" --archive-format no-archive
cat > "$work/config.properties" <<CFG
inference_address=http://127.0.0.1:$port
management_address=http://127.0.0.1:$((port + 1))
metrics_address=http://127.0.0.1:$((port + 2))
model_store=$work/store
load_models=$name
disable_token_authorization=true
enable_envvars_config=false
install_py_dep_per_model=false
default_workers_per_model=1
number_of_netty_threads=1
netty_client_threads=1
job_queue_size=1000
vmargs=-Xmx1g -XX:+UseSerialGC -XX:ActiveProcessorCount=1 -Dlog4j.configurationFile=file://$here/log4j2.xml
models={"$name": {"1.0": {"defaultVersion": true, "marName": "$name", "minWorkers": 1, "maxWorkers": 1, "batchSize": $batch, "maxBatchDelay": $((${delay_ms%.*})), "responseTimeout": 120}}}
CFG
mkdir -p "$work/tmp"
# TorchServe keeps a pid file in TMPDIR and refuses to start while it exists.
export TMPDIR="$work/tmp" PATH="$venv/bin:$PATH" LOG_LOCATION="$work/logs" METRICS_LOCATION="$work/logs"
exec "$venv/bin/torchserve" --start --foreground --ncs --disable-token-auth --model-store "$work/store" \
  --ts-config "$work/config.properties"
