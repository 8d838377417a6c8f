"""Speed settings chosen from the GPU kit sees and the model's size: a pure function, printed and overridable.

Gradient checkpointing costs about a third of the step time, so it is turned on only when the estimated
peak memory without it does not fit the GPU (or when the method exists to save memory: `qlora`).
Attention uses flash-attention 2 when it is installed and the GPU supports it, else PyTorch's sdpa;
Liger's fused kernels (fused linear cross-entropy: no full-vocabulary logits in memory) when installed
and the architecture is one Liger patches. On a CPU: no checkpointing, bf16 autocast when the CPU has native
bf16 (AVX512-BF16/AMX), LoRA dropout masks drawn four per random number (kit/dropout.py), with glibc
freed memory kept for reuse (`keep_freed_memory`), and TRL's LM head on the answer tokens only
(`score_answer_tokens_only`). Every choice but these last three can be forced in the recipe; `plan()` says why.

The memory model (bytes, 16-bit activations, flash/sdpa attention so no seq^2 term):
weights + LoRA/optimizer state + layers * 34 * seq * batch * hidden (Korthikanti et al. 2022) + logits
(batch * seq * vocab * 4 bytes, two live copies in the loss). For Llama-3.1-8B at seq 2048, batch 4 this
gives about 58 GiB, close to the 58.6 GiB TRL measured without checkpointing on an H200 (with
checkpointing it gives 27 GiB against 20.1 measured: on the safe side).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kit.errors import KitError

LIGER_ARCHITECTURES = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "granite", "olmo2"}
GIB = 1024**3


@dataclass(frozen=True)
class Hardware:
    """What the training process sees."""

    cuda: bool
    name: str = "cpu"
    memory_gib: float = 0.0
    compute_capability: tuple[int, int] = (0, 0)
    flash_attn_installed: bool = False
    liger_installed: bool = False
    cpu_bf16: bool = False  # the CPU multiplies bf16 natively (AVX512-BF16 or AMX), so oneDNN runs bf16 fast
    glibc: bool = False  # the C library is glibc, whose malloc `keep_freed_memory` tunes


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    layers: int
    hidden: int
    vocab: int
    model_type: str


@dataclass
class Plan:
    gradient_checkpointing: bool
    attn_implementation: str
    use_liger_kernel: bool
    estimated_peak_gib: float
    reasons: list[str] = field(default_factory=list)
    cpu_bf16_autocast: bool = False
    cpu_lora_dropout: bool = False  # LoRA dropout masks from 16-bit lanes of 64-bit draws (kit/dropout.py)
    cpu_keep_freed_memory: bool = False  # glibc malloc without mmap for big blocks (see `keep_freed_memory`)
    cpu_answer_tokens_only: bool = False  # TRL's LM head projects only the scored tokens (`score_answer_tokens_only`)

    def describe(self) -> str:
        cpu = ", bf16 autocast" if self.cpu_bf16_autocast else ""
        cpu += ", 4-masks-per-draw LoRA dropout" if self.cpu_lora_dropout else ""
        cpu += ", freed memory kept for reuse" if self.cpu_keep_freed_memory else ""
        cpu += ", LM head on answer tokens only" if self.cpu_answer_tokens_only else ""
        return (f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}{cpu}, attention "
                f"{self.attn_implementation}, Liger kernels {'on' if self.use_liger_kernel else 'off'}, "
                f"estimated peak {self.estimated_peak_gib:.1f} GiB ({'; '.join(self.reasons)})")


def frozen_base_dtype(cpu_bf16_autocast: bool, dtype_setting: str):
    """The dtype to load a base in that stays frozen under an adapter (None: the recipe's `model.dtype`). Under CPU bf16
    autocast, with `model.dtype: auto`, bf16: it saves autocast from casting every weight at every step (about 12% of
    the step on the quickstart, same validation loss); the adapters stay float32."""
    import torch

    return torch.bfloat16 if cpu_bf16_autocast and dtype_setting == "auto" else None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse, for the rest of this process; False where it cannot.

    By default glibc serves big blocks (activations, logits chunks) with a fresh mmap and gives them back to the
    system on free, so every training step on a CPU faults in gigabytes of new pages: on the quickstart about a
    million page faults per step and about a quarter of the CPU time in the kernel. With mmap off and trimming pushed
    out, freed blocks stay in the heap and the next step reuses them (faster steps for a somewhat higher peak
    RSS; what allocators such as jemalloc or tcmalloc, which Intel recommends for PyTorch on CPUs, also do).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_mmap_max, m_trim_threshold = -4, -1
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))  # a C int
    except (OSError, AttributeError):
        return False


def score_answer_tokens_only() -> bool:
    """Make TRL's fused LM head score only the tokens a loss reads (the answers) on a CPU too, for the rest of this
    process; False where the installed TRL has no such switch.

    TRL's SFT and preference trainers project hidden states through the vocabulary only at positions with a label,
    but off CUDA/XPU it projects every position (prompt, other turns, padding), keeping tile shapes fixed for
    compilers such as Neuron's. A CPU compiles nothing, so that is pure waste, and the vocabulary projection is a
    fifth of a small model's multiply-adds per token: on the quickstart 13% of a step, for kit.sft (6 steps: 90.1 s ->
    78.4 s) and kit.prefer's DPO (96.3 s -> 83.7 s), with the same losses. CUDA and other devices are left as TRL has them.
    """
    try:
        from trl.trainer import utils
    except ImportError:
        return False
    original = getattr(utils, "_use_triton", None)  # TRL's private switch (pinned TRL; a newer one may rename it)
    if not callable(original):
        return False
    if not hasattr(original, "trl_original"):  # not patched yet in this process
        def compact(device) -> bool:
            return device.type == "cpu" or original(device)

        compact.trl_original = original
        utils._use_triton = compact
    return True


def apply_process_settings(plan: Plan) -> None:
    """Turn on the plan's settings that hold for the rest of the process (kit.sft and kit.prefer, before training)."""
    if plan.cpu_keep_freed_memory:
        keep_freed_memory()
    if plan.cpu_answer_tokens_only:
        score_answer_tokens_only()


def detect_hardware() -> Hardware:
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        import platform

        return Hardware(cuda=False, cpu_bf16=torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                        glibc=platform.libc_ver()[0] == "glibc")
    properties = torch.cuda.get_device_properties(0)
    return Hardware(
        cuda=True,
        name=properties.name,
        memory_gib=properties.total_memory / GIB,
        compute_capability=(properties.major, properties.minor),
        flash_attn_installed=importlib.util.find_spec("flash_attn") is not None,
        liger_installed=importlib.util.find_spec("liger_kernel") is not None,
    )


def shape_of(config) -> ModelShape:
    """The numbers the memory model needs, from a transformers config (parameters estimated, not loaded)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    intermediate = getattr(text, "intermediate_size", None) or 4 * hidden
    heads = getattr(text, "num_attention_heads", 1) or 1
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    attention = hidden * hidden * (2 + 2 * kv_heads / heads)
    parameters = int(layers * (attention + 3 * hidden * intermediate) + vocab * hidden * (1 if text.tie_word_embeddings else 2))
    return ModelShape(parameters=parameters, layers=layers, hidden=hidden, vocab=vocab, model_type=text.model_type)


def estimate_peak_gib(shape: ModelShape, method: str, batch: int, seq: int, checkpointing: bool, fused_loss: bool) -> float:
    weight_bytes = {"qlora": 0.55, "full": 2.0}.get(method, 2.0)
    weights = shape.parameters * weight_bytes
    if method == "full":
        weights += shape.parameters * (2 + 8)  # bf16 gradients + fp32 Adam moments
    elif method != "freeze":
        weights += shape.parameters * 0.01 * 16  # adapters with their gradients and Adam state, ~1% of the model
    tokens = batch * seq
    per_layer = 34 * tokens * shape.hidden
    activations = (tokens * shape.hidden * 2 * shape.layers + per_layer) if checkpointing else per_layer * shape.layers
    logits = 0 if fused_loss else tokens * shape.vocab * 4 * 2
    return (weights + activations + logits) / GIB


def plan(hardware: Hardware, shape: ModelShape, method: str, batch: int, seq: int,
         checkpointing: bool | None = None, attention: str | None = None, liger: bool | None = None,
         headroom: float = 0.85, cpu_bf16: bool | None = None) -> Plan:
    """Choose the speed settings; explicit arguments (from the recipe) always win."""
    reasons = []
    if liger is None:
        liger = hardware.cuda and hardware.liger_installed and shape.model_type in LIGER_ARCHITECTURES
        reasons.append("Liger: " + ("installed and supports " + shape.model_type if liger else
                                    "needs CUDA, the liger-kernel package and a supported architecture"))
    else:
        reasons.append("Liger: set in the recipe")
    if attention is None:
        if hardware.cuda and hardware.flash_attn_installed and hardware.compute_capability >= (8, 0):
            attention = "flash_attention_2"
            reasons.append("flash-attention 2 installed on an Ampere+ GPU")
        else:
            attention = "sdpa"
            reasons.append("sdpa (flash-attention 2 needs CUDA, the flash-attn package and an Ampere+ GPU)")
    else:
        if attention == "flash_attention_2" and not (hardware.cuda and hardware.flash_attn_installed):
            raise KitError("sft.attention: flash_attention_2 needs a CUDA GPU and the flash-attn package; "
                           "use sft.attention=auto (or sdpa)")
        reasons.append("attention set in the recipe")
    without = estimate_peak_gib(shape, method, batch, seq, False, liger)
    if checkpointing is None:
        if not hardware.cuda:
            checkpointing = False
            reasons.append("no checkpointing on CPU: memory is rarely the limit there, time is")
        elif method == "qlora":
            checkpointing = True
            reasons.append("qlora exists to save memory: checkpointing on")
        else:
            checkpointing = without > hardware.memory_gib * headroom
            reasons.append(f"without checkpointing ~{without:.0f} GiB of {hardware.memory_gib:.0f} GiB: "
                           + ("does not fit, checkpointing on" if checkpointing else "fits, checkpointing off"))
    else:
        reasons.append("checkpointing set in the recipe")
    autocast = False
    if not hardware.cuda:
        # fp32 weights, bf16 matmuls: on the quickstart 1.6x faster than fp32 (bench/sft_cpu.py), same loss.
        if cpu_bf16 is None:
            autocast = hardware.cpu_bf16
            reasons.append("bf16 autocast: the CPU has native bf16 (AVX512-BF16/AMX)" if autocast
                           else "fp32: the CPU has no native bf16")
        else:
            autocast = cpu_bf16
            reasons.append("CPU bf16 autocast set in the recipe")
    peak = estimate_peak_gib(shape, method, batch, seq, checkpointing, liger)
    # On a CPU one random draw per dropout element was 17% of a LoRA step; kit/dropout.py needs a quarter of them.
    return Plan(checkpointing, attention, liger, peak, reasons, autocast, cpu_lora_dropout=not hardware.cuda,
                cpu_keep_freed_memory=not hardware.cuda and hardware.glibc, cpu_answer_tokens_only=not hardware.cuda)


def plan_for(recipe, model_path: str, method: str | None = None, section=None, key: str = "model.name") -> Plan:
    """The plan for training `model_path` under the recipe's `sft` speed keys.

    `method` defaults to `sft.method`; `section` (a ModelSection, default `model`) says which revision and
    whether remote code may run, `key` which recipe key an unreadable config is blamed on.
    """
    from transformers import AutoConfig

    sft = recipe.sft
    section = section or recipe.model
    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=section.trust_remote_code,
                                            revision=section.revision)
    except (OSError, ValueError) as exc:
        raise KitError(f"{key}: cannot read the config of {section.name!r} ({str(exc).splitlines()[0][:200]})") from None
    return plan(
        detect_hardware(), shape_of(config), method or sft.method, sft.batch_size, sft.max_length,
        checkpointing=sft.gradient_checkpointing,
        attention=None if sft.attention == "auto" else sft.attention,
        liger=sft.liger_kernel,
        cpu_bf16=sft.cpu_bf16,
    )
