#!/bin/bash
# One GPU session on the lent machine (no network): vLLM 0.26.0 from ../shared/gpu-vllm (its
# archive carried in three pieces, cut at 60 MiB so the last call also carries FlashInfer
# 0.7.2.post1 for the GPU suite), then, in the background: the server-start bench on the
# Llama-3.1-8B shape, the whole GPU suite with FlashInfer 0.7.2.post1, the bench on a MoE shape.
#
# What the calls carry is built on the CPU side by bench/gpu_prepare.sh.
#
#   bash bench/gpu_session.sh piece DIR     copy a carried piece into /root/vxpieces
#   bash bench/gpu_session.sh install       join, check, unpack, install (vLLM + serve wheels + FlashInfer 0.7.2.post1)
#   bash bench/gpu_session.sh start         run the jobs under setsid (they outlive the call)
#   bash bench/gpu_session.sh wait SECONDS  wait for them, then copy the results to $OUT
set -u
PY=/opt/torch/.venv/bin/python3; [ -x "$PY" ] || PY=$(command -v python3)
R=/root/kw-session
VX_SHA=b18a11b7455e973da54b7d0a831f81bda73bec249302249ddb8f1cbba5b5e5a1  # shared/gpu-vllm/README.md
VLLM_PATH=/root/vxs-site:/root/vx/site:/root/vx/vllm-tree
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1

case "${1:-}" in
piece)
  mkdir -p /root/vxpieces && cp "$2"/* /root/vxpieces/ && ls -la /root/vxpieces ;;
install)
  set -e
  cat /root/vxpieces/vxpiece-* > /root/vx.tar.xz
  echo "$VX_SHA  /root/vx.tar.xz" | sha256sum -c
  rm -rf /root/vxparts && mkdir -p /root/vxparts
  split -b 57671680 -d -a 2 /root/vx.tar.xz /root/vxparts/vx.tar.xz.part-  # the parts install.sh knows
  bash .vx/install.sh /root/vxparts 2>&1 | tail -5
  $PY -m pip install -q --no-index --no-deps --no-compile --target /root/vxs-site .vxs/*.whl
  mkdir -p /root/site072 && tar -xJf .whl/flashinfer_python-0.7.2.post1.tree.tar.xz -C /root/site072
  $PY -m pip install -q --no-index --no-deps --no-compile --target /root/site072 .whl/*.whl
  PYTHONPATH=$VLLM_PATH $PY -c "import vllm.entrypoints.openai.api_server, importlib.metadata as m; print('vllm serve imports:', m.version('vllm'), m.version('flashinfer-python'))"
  PYTHONPATH=/root/site072 $PY -c "import flashinfer, importlib.metadata as m; print('gpu suite flashinfer', m.version('flashinfer-python'))"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader ;;
start)
  mkdir -p $R && rm -rf $R/out && mkdir -p $R/out && cp -r . $R/repo && rm -f $R/DONE
  setsid nohup bash bench/gpu_session.sh jobs > $R/out/session.log 2>&1 < /dev/null &
  sleep 2; echo "started"; cat $R/out/session.log ;;
jobs)
  cd $R/repo
  bench() {  # name, then --model arguments
    local name=$1; shift
    echo "== bench $name $(date +%T)"
    OUT=$R/out/$name KW_BENCH_WORK=/root/kw-bench-$name PYTHONPATH=$VLLM_PATH \
      timeout 1800 $PY bench/bench_server_start.py --tokenizer .vxs/model "$@" 2>&1 | tail -20
  }
  bench llama8b --model llama8b=bench/configs/llama31-8b.json
  echo "== gpu suite $(date +%T)"
  PYTHONPATH=/root/site072:initcontainer:operator timeout 1500 $PY -m pytest -q -rs -p no:cacheprovider \
    --durations=15 --junitxml=$R/out/gpu-suite.xml tests/gpu > $R/out/gpu-suite.log 2>&1
  echo "gpu suite rc $?"; tail -30 $R/out/gpu-suite.log
  if [ "${KW_SESSION_MOE:-0}" = 1 ]; then  # off by default: the session's device time runs short
    bench moe --model moe=bench/configs/qwen3-30b-a3b-24-layers.json \
      --fallback fp8=bench/configs/llama31-8b.json:--quantization=fp8
  fi
  echo "== all done $(date +%T)"; touch $R/DONE ;;
wait)
  end=$(( $(date +%s) + ${2:-560} ))
  while [ ! -f $R/DONE ] && [ $(date +%s) -lt $end ]; do sleep 5; done
  tail -40 $R/out/session.log
  for n in llama8b moe; do
    [ -f $R/out/$n/bench_server_start.json ] && cp $R/out/$n/bench_server_start.json "$OUT/$n.json"
    [ -f $R/out/$n/server-logs.tar.gz ] && cp $R/out/$n/server-logs.tar.gz "$OUT/$n-logs.tar.gz"
  done
  for f in gpu-suite.log gpu-suite.xml session.log; do [ -f $R/out/$f ] && cp $R/out/$f "$OUT/"; done
  [ -f $R/DONE ] && echo ALL_DONE || echo "still running" ;;
*) echo "usage: $0 piece DIR | install | start | wait SECONDS"; exit 2 ;;
esac
