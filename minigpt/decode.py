"""Fast decoding: a preallocated KV cache, a fixed-shape decode step, and CUDA graphs.

`minigpt.generate.stream` is the readable path: each token runs `model(token, cache)`.
At batch 1 a 124M model is bound by reading its weights once per token, and on a GPU
the ~150 small kernels of one step cost more to launch than to run. This module
removes what is not weight reading:

- The cache is allocated once per `Decoder` (the model's `KVCache`, (L, B, nh, max_len, hs));
  every step writes one position into it, so decoding never reallocates.
- The generated sequence, the current token, its position and the rows that are done
  live in small device buffers that each step updates in place. Nothing is copied to
  the host while decoding, except one check of "all rows done" every `check_every`
  steps when an eos_id is given (every step on the CPU, where it costs nothing).
- On CUDA the step has static shapes (the position is a device tensor; attention runs
  over the whole cache with a mask from that position), so one step, greedy choice and
  bookkeeping included, is captured once as a CUDA graph and each token costs one replay.
- On the CPU the step attends over the written prefix only (a view of the cache),
  since a graph has nothing to save there and the masked tail is wasted reading. The
  matrix-vector products go through oneDNN (`OneDNNLinear`) rather than F.linear, whose
  CPU GEMV streams the weights well below the memory bandwidth; in bf16 on weights
  reordered once into oneDNN's blocked layout, a copy that costs memory (see its docstring).

The step reuses the model's own modules (ln_1, ln_2, ln_f, wte, wpe) and reads the weights
of its linear layers (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, and wte as the tied
lm_head) where they are, so a `Decoder` follows any change to the weights (the bf16 CPU
path's packed copies are remade when a weight changes).
Greedy tokens equal those of `generate.stream` (tests/test_decode.py).

    decoder = Decoder(model, batch_size=1, max_len=256)
    out = decoder.generate(idx, max_new_tokens=128, temperature=0)   # (1, T + 128)
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from minigpt.generate import check_length, sample_next
from minigpt.model import GPT, KVCache

MODES = ("auto", "eager", "static", "graph")


CPU_LINEARS = ("auto", "torch", "onednn", "onednn-packed")


def onednn_unavailable_reason(dtype: torch.dtype) -> str | None:
    """Why `OneDNNLinear` cannot run weights of this dtype on this CPU, or None if it can."""
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn)"
    if dtype not in (torch.float32, torch.bfloat16):
        return f"the oneDNN linears are used for float32 and bfloat16 only, not {dtype}"
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "this CPU has no oneDNN bfloat16 support"
    return None


class OneDNNLinear:
    """F.linear(x, weight, bias) on the CPU through oneDNN's inner product, the op PyTorch's
    inductor emits for frozen CPU linears.

    On 2 cores of this project's CPU, a batch-1 fp32 F.linear (MKL's GEMV) streamed the
    weights at 12-17 GB/s and oneDNN at 19-24 GB/s on the weight as it is. In bf16 oneDNN
    needs the weight reordered into its blocked layout to go faster (17-24 GB/s against
    11-16), so `pack=True` keeps one reordered copy of each weight: more memory, remade
    whenever the weight changes in place (its version counter moves) or is replaced.
    """

    def __init__(self, pack: bool, batch_size: int):
        self.pack, self.batch_size = pack, batch_size
        self.packed: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}  # id(W) -> (W, version, packed W)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.pack:
            entry = self.packed.get(id(weight))
            if entry is None or entry[0] is not weight or entry[1] != weight._version:
                blocked = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), self.batch_size)
                entry = self.packed[id(weight)] = (weight, weight._version, blocked)
            weight = entry[2]
        rows = x.reshape(-1, x.size(-1))
        y = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")
        return y.view(*x.shape[:-1], y.size(-1))


class Decoder:
    """Decodes batches of `batch_size` prompts of up to `max_len` tokens (prompt + new).

    mode: "eager" runs the step op by op, attending over the written prefix of the cache;
    "static" runs the fixed-shape step op by op (what "graph" captures: useful to test it
    without a GPU); "graph" replays the fixed-shape step as a CUDA graph (CUDA only);
    "auto" is "graph" on CUDA and "eager" elsewhere.

    cpu_linear: how the CPU runs the matrix-vector products: "torch" (F.linear), "onednn"
    (`OneDNNLinear` on the model's weights), "onednn-packed" (on reordered copies of them);
    "auto" is "onednn" in fp32, "onednn-packed" in bf16, "torch" where oneDNN cannot run.
    Ignored on a GPU.

    A Decoder can be reused for any number of `generate` calls with the same batch size;
    each starts afresh from its prompt.
    """

    def __init__(self, model: GPT, batch_size: int, max_len: int | None = None, mode: str = "auto",
                 check_every: int = 16, cpu_linear: str = "auto"):
        if mode not in MODES:
            raise ValueError(f"unknown decode mode {mode!r}; choose from {', '.join(MODES)}")
        if cpu_linear not in CPU_LINEARS:
            raise ValueError(f"unknown cpu_linear {cpu_linear!r}; choose from {', '.join(CPU_LINEARS)}")
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        if mode == "auto":
            mode = "graph" if self.device.type == "cuda" else "eager"
        if mode == "graph" and self.device.type != "cuda":
            raise ValueError(f"mode 'graph' needs the model on a CUDA device (it is on {self.device.type})")
        if model.training:
            raise ValueError("the model is in training mode (dropout is on); call model.eval() first")
        self.model, self.config, self.mode = model, model.config, mode
        self.linear = F.linear
        if self.device.type == "cpu" and cpu_linear != "torch":
            reason = onednn_unavailable_reason(self.dtype)
            if reason is not None and cpu_linear != "auto":
                raise ValueError(f"cpu_linear={cpu_linear!r} cannot run: {reason}")
            if reason is None:
                pack = cpu_linear == "onednn-packed" or (cpu_linear == "auto" and self.dtype == torch.bfloat16)
                self.linear = OneDNNLinear(pack, batch_size)
        self.max_len = max_len or model.config.block_size
        self.check_every = check_every if self.device.type == "cuda" else 1
        B, dev = batch_size, self.device
        self.cache = KVCache(model.config, B, self.max_len, device=dev, dtype=self.dtype)
        # Decoding state, updated in place by every step (so a CUDA graph can own it):
        self.seq = torch.zeros(B, self.max_len, dtype=torch.long, device=dev)  # prompt + new tokens
        self.token = torch.zeros(B, 1, dtype=torch.long, device=dev)  # the token to feed next...
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)  # ...and its position
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)  # rows that have produced eos
        self.eos = torch.full((), -1, dtype=torch.long, device=dev)  # -1: no eos, nothing is ever done
        self.length = torch.zeros((), dtype=torch.long, device=dev)  # tokens kept in seq
        self.logits = torch.zeros(B, self.config.vocab_size, dtype=self.dtype, device=dev)
        self.positions = torch.arange(self.max_len, device=dev).view(1, self.max_len)  # (1, max_len)
        self.graphs: dict[bool, torch.cuda.CUDAGraph] = {}  # greedy? -> captured step
        self._pos = 0  # the host's copy of pos, for the eager step's cache slices

    @property
    def batch_size(self) -> int:
        return self.seq.size(0)

    # --- one step -------------------------------------------------------------------------------
    def forward_step(self) -> torch.Tensor:
        """Logits (B, vocab_size) after feeding `token` at position `pos`; writes its keys/values."""
        tr = self.model.transformer
        x = tr.wte(self.token) + tr.wpe(self.pos)  # (B, 1, C)
        visible = self.positions <= self.pos if self.mode != "eager" else None  # (1, max_len)
        for layer, block in enumerate(tr.h):
            x = x + self.attend(block.attn, block.ln_1(x), layer, visible)
            x = x + self.mlp(block.mlp, block.ln_2(x))
        x = tr.ln_f(x[:, -1])  # (B, C)
        return self.linear(x, tr.wte.weight)[:, : self.config.vocab_size]  # the tied lm_head

    def mlp(self, mlp, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.linear(x, mlp.c_fc.weight, mlp.c_fc.bias), approximate="tanh")  # as MLP.forward
        return self.linear(x, mlp.c_proj.weight, mlp.c_proj.bias)

    def attend(self, attn, x: torch.Tensor, layer: int, visible: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.size()  # T == 1
        nh, hs = attn.n_head, C // attn.n_head
        q, k, v = self.linear(x, attn.c_attn.weight, attn.c_attn.bias).split(C, dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, 1, hs)
        cache_k, cache_v = self.cache.k[layer], self.cache.v[layer]  # (B, nh, max_len, hs)
        cache_k.index_copy_(2, self.pos, k.view(B, T, nh, hs).transpose(1, 2))
        cache_v.index_copy_(2, self.pos, v.view(B, T, nh, hs).transpose(1, 2))
        if visible is None:  # eager: the written prefix, a view
            end = self._pos + 1
            y = F.scaled_dot_product_attention(q, cache_k[:, :, :end], cache_v[:, :, :end])
        else:  # static shapes: the whole cache, positions after pos masked out
            y = F.scaled_dot_product_attention(q, cache_k, cache_v, attn_mask=visible)
        return self.linear(y.transpose(1, 2).reshape(B, T, C), attn.c_proj.weight, attn.c_proj.bias)

    def advance(self, next_token: torch.Tensor) -> None:
        """Append next_token (B,) to the sequence and make it the token to feed next."""
        still_going = ~self.done.all()
        next_token = torch.where(self.done, self.eos, next_token)  # finished rows repeat eos (no sync)
        self.done |= next_token == self.eos
        self.length += still_going  # the simple path stops once every row is done
        self.pos += 1
        self.seq.index_copy_(1, self.pos, next_token[:, None])
        self.token.copy_(next_token[:, None])
        self._pos += 1

    def greedy_step(self) -> None:
        """One step choosing the most likely token: what a greedy CUDA graph holds."""
        # argmax in fp32 picks the same token (the cast is exact) and, on the CPU, takes a
        # third of the time of the bf16 argmax (about 60 µs against 180 µs over 50257 logits)
        self.advance(self.forward_step().float().argmax(dim=-1))

    def logits_step(self) -> None:
        """One step up to the logits: what a sampling CUDA graph holds (the sampler runs after it)."""
        self.logits.copy_(self.forward_step())

    # --- CUDA graphs ----------------------------------------------------------------------------
    def capture(self, greedy: bool) -> None:
        """Record one step as a CUDA graph, warmed up on a side stream first as the PyTorch docs ask.

        Done before a prefill: the warm-up writes into the cache and the state, and the prefill
        then overwrites all of it that a step reads.
        """
        body = self.greedy_step if greedy else self.logits_step
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self.pos.zero_()  # keeps every write of the warm-up inside the buffers
                body()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.pos.zero_()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # recorded, not run
            body()
        self.graphs[greedy] = graph

    # --- decoding -------------------------------------------------------------------------------
    def prefill(self, idx: torch.Tensor, eos_id: int | None = None) -> torch.Tensor:
        """Run the prompt idx (B, T) through the model, filling the cache; its last logits (B, V).

        The model's own blocks, with the lm_head applied to the last position only: the
        logits of the other T - 1 positions would be (B, T - 1, V) of work and memory for nothing.
        """
        B, T = idx.shape
        if B != self.batch_size:
            raise ValueError(f"this Decoder decodes batches of {self.batch_size} rows, got {B}")
        if T > self.max_len:
            raise ValueError(f"the prompt is {T} tokens; this Decoder holds {self.max_len} positions")
        model, tr = self.model, self.model.transformer
        self.cache.reset()
        x = tr.wte(idx) + tr.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
        for layer, block in enumerate(tr.h):
            x = block(x, self.cache, layer)
        self.cache.pos = T
        logits = self.linear(tr.ln_f(x[:, -1]), tr.wte.weight)[:, : self.config.vocab_size]  # (B, V)
        self.seq[:, :T].copy_(idx)
        self.pos.fill_(T - 1)  # the last prompt token, already fed
        self._pos = T - 1
        self.length.fill_(T)
        self.done.zero_()
        self.eos.fill_(-1 if eos_id is None else eos_id)
        return logits

    @torch.inference_mode()  # as a decorator, so it holds only while the generator runs
    def steps(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        eos_id: int | None = None,
    ) -> Iterator[int]:
        """Decode, yielding after each new token the column of `seq` that holds it.

        Nothing here waits for the device except the "all rows done?" check, made every
        `check_every` steps when an eos_id is given.
        """
        T = idx.size(1)
        check_length(self.model, T, max_new_tokens)
        if T + max_new_tokens > self.max_len:
            raise ValueError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds this Decoder's "
                             f"max_len ({self.max_len})")
        if max_new_tokens == 0:
            return
        greedy = temperature == 0
        if self.mode == "graph" and max_new_tokens > 1 and greedy not in self.graphs:
            self.prefill(idx[:, :1])  # resolves the model's backends and runs its kernels once
            self.capture(greedy)
        logits = self.prefill(idx, eos_id)
        self.advance(sample_next(logits, temperature, top_k, top_p, generator))
        yield T
        for step in range(1, max_new_tokens):
            if eos_id is not None and step % self.check_every == 0 and bool(self.done.all()):
                return
            if self.mode == "graph":
                self.graphs[greedy].replay()
            elif greedy:
                self.greedy_step()
            else:
                self.logits_step()
            if not greedy:
                self.advance(sample_next(self.logits, temperature, top_k, top_p, generator))
            yield T + step

    def stream(self, idx: torch.Tensor, max_new_tokens: int, **sampling) -> Iterator[torch.Tensor]:
        """Like `generate.stream`: the next token (B,) of every row, step by step. On CUDA the
        stream may run on for up to check_every - 1 steps (of eos only) after every row is done."""
        for column in self.steps(idx, max_new_tokens, **sampling):
            yield self.seq[:, column].clone()

    def generate(self, idx: torch.Tensor, max_new_tokens: int, **sampling) -> torch.Tensor:
        """idx (B, T) followed by up to max_new_tokens tokens: (B, T + n), as `generate.generate`."""
        for _ in self.steps(idx, max_new_tokens, **sampling):
            pass
        if max_new_tokens == 0:
            return idx.clone()
        return self.seq[:, : int(self.length)].clone()
