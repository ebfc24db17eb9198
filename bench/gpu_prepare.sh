#!/bin/bash
# The CPU side of a GPU session (bench/gpu_session.sh): build, here, every ignored folder the
# session's calls carry to the offline GPU machine, from the project's files, ../shared and PyPI.
#
#   bash bench/gpu_prepare.sh            all of it (2-15 min on 2 cores: most of it xz -9 in build.sh)
#   bash bench/gpu_prepare.sh small      all but the vLLM bundle (.vx, .vxc)
#
# Writes (all git-ignored through .git/info/exclude):
#   .vx/                 ../shared/gpu-vllm/build.sh's bundle (vLLM 0.26.0 trimmed + 22 wheels), install.sh
#   .vxc/{a,b,c}/        that archive cut into 60 MiB pieces (one call each; the third call also
#                        carries .whl, .vxs, .vllm-kernel and .vx/install.sh, all under 64 MiB)
#   .vxs/*.whl           what `vllm serve` needs beyond the bundle and the machine's image
#                        (the image's package list: /work/.library/device/KINDS.md)
#   .vxs/model/          a small real tokenizer (tokenizer.json, tokenizer_config.json), trained
#                        here with `tokenizers`: the bench's servers run dummy weights
#   .whl/                FlashInfer 0.7.2.post1 as vLLM 0.33 pins it (../shared/gpu-wheels)
#   .vllm-kernel/<v>/    vLLM's kernel files of 0.26.0, 0.33.0, 0.34.0 (tests/support/vllm_kernel.py)
# Then, on the device: bench/gpu_session.sh's calls (piece a, piece b, piece c + install + start, wait).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${KW_SHARED:-../shared}
PY312=${PY312:-$(ls -d /root/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | head -1)}; PY312=${PY312:-python3.12}
PIECE_BYTES=$((60 * 1024 * 1024))
# Beyond build.sh's wheels and the image: the API server's ASGI server and its metrics middleware.
SERVE_WHEELS=(uvicorn==0.54.0 prometheus-fastapi-instrumentator==8.1.0)
log() { printf '[gpu_prepare %s +%4ds] %s\n' "$(date +%H:%M:%S)" "$SECONDS" "$*"; }

for d in /.vx/ /.vxc/ /.vxs/ /.whl/ /.vllm-kernel/; do
  grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
done

if [ "${1:-all}" = all ]; then
  log "vLLM bundle: $SHARED/gpu-vllm/build.sh .vx"
  bash "$SHARED/gpu-vllm/build.sh" .vx
  want=$(grep -o 'VX_SHA=[0-9a-f]*' bench/gpu_session.sh | cut -d= -f2)
  tmp=$(mktemp -d)
  cat .vx/p*/* > "$tmp/vx.tar.xz"
  echo "$want  $tmp/vx.tar.xz" | sha256sum -c --quiet || { log "the bundle differs from gpu_session.sh's VX_SHA"; exit 1; }
  rm -rf .vxc && mkdir -p .vxc
  split -b $PIECE_BYTES -d -a 1 "$tmp/vx.tar.xz" "$tmp/vxpiece-"
  n=0
  for letter in a b c; do
    [ -f "$tmp/vxpiece-$n" ] || { log "expected three pieces"; exit 1; }
    mkdir -p ".vxc/$letter" && mv "$tmp/vxpiece-$n" ".vxc/$letter/"
    n=$((n + 1))
  done
  [ ! -e "$tmp/vxpiece-3" ] || { log "more than three pieces: gpu_session.sh carries three"; exit 1; }
  rm -rf "$tmp"
fi

log "serve wheels: ${SERVE_WHEELS[*]}"
rm -rf .vxs && mkdir -p .vxs/model
"$PY312" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .vxs "${SERVE_WHEELS[@]}"

log "tokenizer: a small BPE trained here"
venv=$(mktemp -d)
"$PY312" -m venv "$venv" && "$venv/bin/pip" install -q tokenizers==0.23.2
"$venv/bin/python" - .vxs/model <<'EOF'
import json, sys
from pathlib import Path
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
out = Path(sys.argv[1])
files = sorted(Path(sys.prefix, "lib").rglob("*.py"))[:400]  # the venv's own stdlib-ish text
lines = [line for p in files for line in p.read_text(errors="ignore").splitlines() if line.strip()]
special = ["<|begin_of_text|>", "<|end_of_text|>", "<unk>"]
tok = Tokenizer(models.BPE(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=8000, special_tokens=special,
                                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
tok.save(str(out / "tokenizer.json"))
(out / "tokenizer_config.json").write_text(json.dumps({
    "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": special[0], "eos_token": special[1],
    "unk_token": special[2], "model_max_length": 131072,
    "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}, indent=1))
print("tokenizer:", tok.get_vocab_size(), "tokens")
EOF
rm -rf "$venv"

log "FlashInfer 0.7.2.post1: $SHARED/gpu-wheels/fi-0.7.2.post1"
rm -rf .whl && mkdir -p .whl && cp "$SHARED"/gpu-wheels/fi-0.7.2.post1/* .whl/

log "vLLM kernel trees"
for v in 0.26.0 0.33.0 0.34.0; do
  .venv/bin/python tests/support/vllm_kernel.py --version "$v" --dest ".vllm-kernel/$v" >/dev/null
done

third=(.vxs .whl .vllm-kernel)
[ -d .vxc/c ] && third+=(.vxc/c .vx/install.sh)
du -sh "${third[@]}" .vxc/a .vxc/b 2>/dev/null || true
small=$(du -scb "${third[@]}" | tail -1 | cut -f1)
log "the third call carries $((small / 1024 / 1024)) MiB (at most 64)"
[ "$small" -le $((64 * 1024 * 1024)) ] || { log "over 64 MiB: the third call cannot carry it"; exit 1; }
