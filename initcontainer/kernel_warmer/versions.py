"""The facts that differ between the releases the warmer serves: one row per version range.

The warmer runs inside the serving image, so at run time it reads which vLLM, FlashInfer,
torch and Triton it runs with (package metadata, no import) and plans with the row of each
table that covers that version. A version no row covers is planned with the nearest row,
and the pick carries a Warning that names both (never silently).

Rows come from each release's own code (docs/VLLM.md cites the lines). Part of the
contract: stdlib only, so the operator can validate a serving command against every
release it knows.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from typing import Generic, Optional, Sequence, TypeVar

Version = tuple[int, int, int]


def parse_version(text: Optional[str]) -> Optional[Version]:
    """"0.7.2.post1" -> (0, 7, 2); "0.34.0+cu130" -> (0, 34, 0); None when unreadable."""
    if not text:
        return None
    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def show(v: Version) -> str:
    return ".".join(map(str, v))


T = TypeVar("T")


@dataclass(frozen=True)
class Pick(Generic[T]):
    """The row used for a version, and the Warning when no row covers it."""

    facts: T
    version: Optional[str]  # as installed ("0.7.2.post1"); None: not installed
    warning: Optional[str] = None

    @property
    def exact(self) -> bool:
        return self.warning is None


def pick(rows: Sequence[T], version: Optional[str], what: str) -> Pick[T]:
    """The row whose [since, until) holds ``version``; else the nearest, with a Warning.
    Rows are ordered oldest first and each has ``since``/``until`` (Version) and ``label``."""
    v = parse_version(version)
    if v is None:
        newest = rows[-1]
        if version is None:
            return Pick(newest, None)  # not installed: nothing of it runs, nothing to warn about
        return Pick(newest, version, f"{what} version {version!r} is unreadable; "
                                     f"planned with the facts of {what} {newest.label}")
    for row in rows:
        if row.since <= v < row.until:
            return Pick(row, version)
    nearest = rows[0] if v < rows[0].since else rows[-1]
    known = f"{show(rows[0].since)} up to {show(rows[-1].until)}"
    return Pick(nearest, version, f"{what} {version} is not a release this warmer knows (it knows {known}, "
                                  f"exclusive); planned with the facts of {what} {nearest.label}")


def installed(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- FlashInfer -------------------------------------------------------------------------


@dataclass(frozen=True)
class MoeKeyFormat:
    """Where a fused-MoE tactic's file key holds its world: the positions, in
    ``MoERunner.get_cache_key_extras``, of the tp/ep sizes and (when the key has them) the
    tp/ep ranks, and how many extras the key has."""

    name: str
    length: int
    tp_size: int
    ep_size: int
    tp_rank: Optional[int] = None
    ep_rank: Optional[int] = None

    @property
    def per_rank(self) -> bool:
        """Each rank looks its tactics up under its own key (the warmer writes them all)."""
        return self.tp_rank is not None


# flashinfer/fused_moe/core.py MoERunner.get_cache_key_extras:
# 0.6.x-0.7.1: (x, w, out dtypes, top_k, tp_size, tp_rank, ep_size, ep_rank, cluster_size,
#   cluster_rank, ... 20 fields) (0.6.18: lines 715-736; 0.7.1: 778-799)
# 0.7.2 on: the ranks and cluster_rank are gone, "ranks that tune together must share
#   persisted entries" (0.7.2.post1: lines 758-780, 17 fields)
MOE_KEY_PER_RANK = MoeKeyFormat("per-rank keys (FlashInfer 0.6.0-0.7.1)", 20, tp_size=4, ep_size=6,
                                tp_rank=5, ep_rank=7)
MOE_KEY_SHARED = MoeKeyFormat("one key for every rank (FlashInfer 0.7.2+)", 17, tp_size=4, ep_size=5)


@dataclass(frozen=True)
class FlashInferFacts:
    label: str
    since: Version
    until: Version
    moe_key: MoeKeyFormat


FLASHINFER = (
    FlashInferFacts("0.6.0-0.7.1", (0, 6, 0), (0, 7, 2), MOE_KEY_PER_RANK),
    FlashInferFacts("0.7.2+", (0, 7, 2), (0, 8, 0), MOE_KEY_SHARED),
)


def flashinfer(version: Optional[str]) -> Pick[FlashInferFacts]:
    return pick(FLASHINFER, version, "FlashInfer")


def installed_flashinfer() -> Pick[FlashInferFacts]:
    return flashinfer(installed("flashinfer-python"))


# --- vLLM -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CliNames:
    """The names a release's ``vllm serve`` accepts for the flags that decide kernels:
    AttentionBackendEnum (``vllm/v1/attention/backends/registry.py``; "auto" is also taken,
    ``config/attention.py``), CacheDType (``config/cache.py``), MoEBackend and LinearBackend
    (``config/kernel.py``)."""

    attention: tuple[str, ...]
    kv_cache: tuple[str, ...]
    moe: tuple[str, ...]
    linear: tuple[str, ...]

    def then(self, **changes: tuple[tuple[str, ...], tuple[str, ...]]) -> "CliNames":
        """The next release's names: per field, (added, removed)."""
        out = dict(self.__dict__)
        for name, (added, removed) in changes.items():
            out[name] = tuple(x for x in out[name] if x not in removed) + tuple(added)
        return CliNames(**out)


@dataclass(frozen=True)
class VllmFacts:
    """What differs between vLLM releases for the warmer (each release's own code)."""

    label: str
    since: Version
    until: Version
    names: CliNames
    # The pins in the release's METADATA (Requires-Dist)
    torch: str
    flashinfer: str
    # sha256 of vllm/v1/attention/ops/triton_prefill_attention.py as released (a patched
    # build's kernel is warmed as it is, with a Warning that its call sites are assumed)
    kernel_sha256: str
    # The launcher sizes its tile from the GPU's shared memory (0.34: _fit_block_to_shared_memory,
    # through vllm.utils.mem_utils.get_max_shared_memory_bytes): compile-only answers it for the target.
    kernel_asks_shared_memory: bool = False
    # EnableDisableAction's --disable-x spelling (vllm/utils/argparse_utils.py, 0.33 on);
    # before, only --enable-x / --no-enable-x
    disable_flags: bool = False
    # EngineArgs.get_batch_defaults (vllm/engine/arg_utils.py): the 16384 tier from 160 GiB
    # (0.28 on) and GB10 (SM121) kept out of the 8192 tier (0.33 on)
    batch_tier_160: bool = True
    batch_excludes_gb10: bool = False

    def default_max_num_batched_tokens(self, gpu_memory_bytes: int, gpu_name: str, capability: int) -> int:
        """``vllm serve``'s default (OpenAI API server) on a CUDA GPU."""
        gib = 1 << 30
        if self.batch_tier_160 and gpu_memory_bytes >= 160 * gib:
            return 16384
        excluded = "a100" in gpu_name.lower() or (self.batch_excludes_gb10 and capability == 121)
        if gpu_memory_bytes >= 70 * gib and not excluded:
            return 8192
        return 2048


# Each release's names as the one before it changed them (.ref: read from every wheel).
V026 = CliNames(
    attention=(
        "FLASH_ATTN", "FLASH_ATTN_DIFFKV", "TRITON_ATTN", "TRITON_ATTN_DIFFKV", "ROCM_ATTN", "ROCM_AITER_MLA",
        "ROCM_AITER_TRITON_MLA", "ROCM_AITER_FA", "ROCM_AITER_MLA_SPARSE", "XPU_MLA_SPARSE", "TORCH_SDPA",
        "FLASHINFER", "FLASHINFER_MLA", "TOKENSPEED_MLA", "FLASHINFER_MLA_SPARSE",
        "FLASHINFER_MLA_SPARSE_SM120", "TRITON_MLA", "CUTLASS_MLA", "FLASHMLA", "FLASHMLA_SPARSE",
        "FLASHMLA_SPARSE_DSV4", "FLASHINFER_MLA_SPARSE_DSV4", "ROCM_FLASHMLA_SPARSE_DSV4", "FLASH_ATTN_MLA",
        "FLASH_ATTN_MLA_SPARSE", "MINIMAX_M3_SPARSE", "NO_ATTENTION", "FLEX_ATTENTION", "HPC_ATTN",
        "ROCM_AITER_UNIFIED_ATTN", "CPU_ATTN", "TURBOQUANT", "CUSTOM",
    ),
    kv_cache=(
        "auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla",
        "turboquant_k8v4", "turboquant_4bit_nc", "turboquant_k3v4_nc", "turboquant_3bit_nc",
        "int4_per_token_head", "int8_per_token_head", "fp8_per_token_head", "nvfp4",
    ),
    moe=(
        "auto", "triton", "deep_gemm", "deep_gemm_mega_moe", "cutlass", "flashinfer_trtllm",
        "flashinfer_cutlass", "flashinfer_cutedsl", "flashinfer_b12x", "marlin", "humming", "triton_unfused",
        "aiter", "flydsl", "hpc", "emulation",
    ),
    linear=(
        "auto", "cutlass", "flashinfer_cutlass", "flashinfer_cutedsl", "flashinfer_trtllm", "flashinfer_cudnn",
        "flashinfer_b12x", "marlin", "humming", "triton", "deep_gemm", "torch", "aiter", "machete", "fbgemm",
        "conch", "exllama", "emulation", "xpu", "xpu_woq",
    ),
)
V027 = V026.then(
    attention=(("CUTLASS_MSA", "TRITON_MSA"), ()),
    moe=(("batched_triton",), ()),
)
V028 = V027.then(
    attention=(("CPU_MLA",), ()),
    kv_cache=(("nvfp4_4over6",), ()),
    linear=(("b12x",), ()),
)
V029 = V028.then(
    attention=(("AMX_MLA",), ()),
    moe=(("b12x", "flashinfer_moe_ep_mega_deep_gemm", "flashinfer_moe_ep_mega_cutedsl"), ()),
)
V030 = V029.then(
    attention=(("TRITON_FLASH_ATTN", "TRITON_FLASHINFER", "FLASHINFER_MLA_SPARSE_SM90", "FLASHMLA_SPARSE_DSV41",
                "FLASHINFER_MLA_SPARSE_DSV41", "B12X"), ()),
    kv_cache=(("nvfp4_ds_mla",), ()),
    moe=(("aiter_triton_mxfp4_bf16", "rdna3"), ()),
)
V031 = V030.then(
    attention=(("FLASHMLA_MEGA_ATTN_DSV41",), ()),
)
V032 = V031.then(
    attention=(("ROCM_SEGMENTED_ATTN", "ULTRAQUANT"), ()),
    kv_cache=(("ultraquant_4bit",), ()),
    moe=(("flashinfer_moe_ep_cutedsl", "aiter_mega_moe"), ("flashinfer_moe_ep_mega_cutedsl",)),
)
V033 = V032.then(
    attention=(("ROCM_FLASHMLA_SPARSE_DSV41", "FLASH_ATTN_MLA_SPARSE_FA4", "STEP5_DSA", "ROCM_OCTAVE"), ()),
    kv_cache=(("octave_k3v4", "octave_k3v3", "octave_k3v3_compact"), ()),
    moe=(("aiter_triton_mxfp4_mxfp4",), ()),
)
V034 = V033.then(
    attention=(("FLASHINFER_TS", "KIMI_K3_KV_BALANCED_MLA"), ()),
)

_KERNEL_026 = "799473a00984233ff1b659fffa4d67e02d985cd83a413281eba36ef7b8737e27"  # 0.26-0.27
_KERNEL_028 = "352c1a4ac86146580040579fb217c2e288268830d6602b735713e154f36d74fe"  # 0.28-0.30: sinks_bias_key0
_KERNEL_031 = "fbe63fc400cdffd1a04118cce1ae2ff907b646b0bb4c501d514cc24df04b853d"  # 0.31: a ROCm-only tile path
_KERNEL_032 = "82f3ba37c24feed5ce8eaddc398f81a36fb3bdf7446c812570eb5eab88765be7"  # 0.32-0.33: BLOCK 32 at d>=512
_KERNEL_034 = "0ab956d00b93071ad75ed104fff710ce569ec600f4ab6af19649b479c53b7a33"  # 0.34: two constexprs more

VLLM = (
    VllmFacts("0.26", (0, 26, 0), (0, 27, 0), V026, "2.11.0", "0.6.14", _KERNEL_026, batch_tier_160=False),
    VllmFacts("0.27", (0, 27, 0), (0, 28, 0), V027, "2.13.0", "0.6.16.post3", _KERNEL_026, batch_tier_160=False),
    VllmFacts("0.28", (0, 28, 0), (0, 29, 0), V028, "2.13.0", "0.6.16.post3", _KERNEL_028),
    VllmFacts("0.29", (0, 29, 0), (0, 30, 0), V029, "2.13.0", "0.6.18", _KERNEL_028),
    VllmFacts("0.30", (0, 30, 0), (0, 31, 0), V030, "2.13.0", "0.6.18.post1", _KERNEL_028),
    VllmFacts("0.31", (0, 31, 0), (0, 32, 0), V031, "2.13.0", "0.7.0.post1", _KERNEL_031),
    VllmFacts("0.32", (0, 32, 0), (0, 33, 0), V032, "2.13.0", "0.7.0.post1", _KERNEL_032),
    VllmFacts("0.33", (0, 33, 0), (0, 34, 0), V033, "2.14.0", "0.7.2.post1", _KERNEL_032, disable_flags=True,
              batch_excludes_gb10=True),
    VllmFacts("0.34", (0, 34, 0), (0, 35, 0), V034, "2.14.0", "0.7.3", _KERNEL_034, kernel_asks_shared_memory=True,
              disable_flags=True, batch_excludes_gb10=True),
)
# Every name any known release accepts: what the operator can check a serving command
# against before it knows the image's vLLM (the warmer checks the exact release's).
ALL_NAMES = CliNames(*(tuple(dict.fromkeys(n for row in VLLM for n in getattr(row.names, f)))
                       for f in ("attention", "kv_cache", "moe", "linear")))


def vllm(version: Optional[str]) -> Pick[VllmFacts]:
    return pick(VLLM, version, "vLLM")


def installed_vllm() -> Pick[VllmFacts]:
    return vllm(installed("vllm"))


# --- what this image runs ----------------------------------------------------------------


def _cuda_of_torch(torch_version: Optional[str]) -> Optional[str]:
    """"2.11.0+cu130" -> "13.0" (the CUDA torch was built with; None when the tag lacks it)."""
    m = re.search(r"\+cu(\d+)(\d)$", torch_version or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


@dataclass(frozen=True)
class Runtime:
    """The versions the warmer runs with (the serving image's packages) and the table rows
    it plans with for them."""

    vllm: Optional[str]
    flashinfer: Optional[str]
    torch: Optional[str]
    triton: Optional[str]
    cuda: Optional[str]
    vllm_facts: Pick[VllmFacts]
    flashinfer_facts: Pick[FlashInferFacts]

    def to_dict(self) -> dict:
        return {"vllm": self.vllm, "flashinfer": self.flashinfer, "torch": self.torch, "triton": self.triton,
                "cuda": self.cuda, "vllmFacts": self.vllm_facts.facts.label if self.vllm else None,
                "flashinferFacts": self.flashinfer_facts.facts.label if self.flashinfer else None}

    def warnings(self) -> list[str]:
        """A version no row covers, and a FlashInfer other than the one this vLLM pins."""
        out = [w for w in (self.vllm_facts.warning, self.flashinfer_facts.warning) if w]
        pin = self.vllm_facts.facts.flashinfer
        if self.vllm and self.flashinfer and self.vllm_facts.exact and parse_version(self.flashinfer) != parse_version(pin):
            out.append(f"vLLM {self.vllm} pins flashinfer-python=={pin}; this image has {self.flashinfer}: tactics "
                       "follow the installed FlashInfer")
        return out


def read_runtime() -> Runtime:
    torch = installed("torch")
    vllm_v, fi_v = installed("vllm"), installed("flashinfer-python")
    return Runtime(vllm_v, fi_v, torch, installed("triton"), _cuda_of_torch(torch), vllm(vllm_v), flashinfer(fi_v))


def unknown_names(facts: VllmFacts, engine: object) -> list[str]:
    """The serving command's kernel choices this vLLM release does not take (the server
    would refuse to start); ``engine`` is the spec's EngineSection."""
    checks = (("attention_backend", "--attention-backend", facts.names.attention),
              ("mm_encoder_attn_backend", "--mm-encoder-attn-backend", facts.names.attention),
              ("kv_cache_dtype", "--kv-cache-dtype", facts.names.kv_cache),
              ("moe_backend", "--moe-backend", facts.names.moe),
              ("linear_backend", "--linear-backend", facts.names.linear))
    out = []
    for attr, flag, names in checks:
        value = getattr(engine, attr, None)
        if value not in (None, "auto") and value not in names:
            out.append(f"{flag} {value} is not one vLLM {facts.label} takes: the server will refuse this command")
    return out
