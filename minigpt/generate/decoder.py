"""Fast decoding: decoding state in device buffers, a static KV cache, CUDA graphs, a compiled step.

`minigpt.generate.simple` is the readable path: each token runs `model(token, cache=cache)` with its
bookkeeping on the host. A `Decoder` keeps what a step reads and writes (the cache, the sequence,
the current token, the finished rows) in device buffers updated in place, and calls the model's own
forward for every step. With `StaticKVCache` every shape is fixed, so on CUDA one step is captured
as a CUDA graph and each token costs one replay; on a CPU the cache grows, and the matrix-vector
products run through F.linear or oneDNN, whichever timed steps found faster for this model: a
trial of its own forwards for a decode long enough to pay for them, else the decode's own first
steps, alternating between F.linear and oneDNN on the model's weights (`StepTrial`). A float16
model on a CPU runs its products of many rows (a prefill) widened to float32 (`Float16ViaFloat32`).
Greedy tokens equal those of the simple path (tests/generate/test_decode.py). Mode "compiled" runs
the same fixed-shape step compiled by torch.compile (Inductor, weights frozen into the code): on a
CPU it removes most of the per-token Python and dispatch work, but compiling costs seconds, so it is
chosen only by asking for it (tests/generate/test_compiled_decode.py: same tokens, one compilation
per kind of step, none per token or position).

    decoder = Decoder(model, batch_size=1, max_len=256)
    out = decoder.generate(idx, max_new_tokens=128, temperature=0)   # (1, T + 128)
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from minigpt.generate.sampling import SamplingSettings, check_ids, check_length
from minigpt.model.model import GPT, KVCache
from minigpt.model.quantize import is_quantized

MODES = ("auto", "eager", "static", "graph", "compiled")

# Inductor settings of the compiled step: the weights are constants of the code (freezing), so the CPU
# linears are prepacked for oneDNN once and constant work is folded away.
COMPILE_OPTIONS = {"freezing": True}


class StaticKVCache(KVCache):
    """A KVCache whose every shape is fixed, for CUDA graphs: `pos` is a (1,) tensor on the cache's
    device, advanced in place, and attention runs over all max_len positions with a mask hiding
    those after each query. Nothing is read back to the host, so a step can be recorded once."""

    def __init__(self, config, batch_size: int, max_len: int, device=None, dtype=None):
        super().__init__(config, batch_size, max_len, device, dtype)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.key_positions = torch.arange(max_len, device=device)

    def positions(self, B: int, T: int) -> torch.Tensor:
        if T > self.max_len or B != self.batch_size:  # the position stays on the device: only sizes are checked
            raise ValueError(
                f"KV cache holds {self.batch_size} x {self.max_len} positions; "
                f"cannot add {B} x {T} tokens at its position"
            )
        return self.pos + torch.arange(T, device=self.pos.device)

    def visible(self, positions: torch.Tensor) -> torch.Tensor:
        """(T, max_len): the keys each query may see."""
        return self.key_positions[None, :] <= positions[:, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = self.pos + torch.arange(k.size(2), device=self.pos.device)
        self.k[layer].index_copy_(2, positions, k)
        self.v[layer].index_copy_(2, positions, v)
        return self.k[layer], self.v[layer]

    def advance(self, T: int) -> None:
        self.pos.add_(T)

    def reset(self) -> None:
        self.pos.zero_()


CPU_LINEARS = ("auto", "torch", "onednn", "onednn-packed")


# ----------------------------------------------------------------------------------------------
# oneDNN linears: an option of the CPU decoder, chosen by measurement


def onednn_unavailable_reason(dtype: torch.dtype) -> str | None:
    """Why `OneDNNLinear` cannot run weights of this dtype on this CPU, or None if it can."""
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn)"
    if dtype not in (torch.float32, torch.bfloat16):
        return f"the oneDNN linears are used for float32 and bfloat16 only, not {dtype}"
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "this CPU has no oneDNN bfloat16 support"
    return None


class OneDNNLinear(TorchFunctionMode):
    """While active, every F.linear runs through oneDNN's inner product: the op PyTorch's
    inductor emits for frozen CPU linears, reached through PyTorch's private mkldnn ops.

    At batch 1 a CPU linear is a matrix-vector product bound by reading the weight, and
    on some CPUs oneDNN streams it faster than F.linear's GEMV. `pack=True` keeps one copy
    of each weight reordered into oneDNN's blocked layout (what its bf16 kernels want): more
    memory, remade whenever the weight changes in place (its version counter moves) or is
    replaced.
    """

    def __init__(self, pack: bool, batch_size: int):
        super().__init__()
        self.pack, self.batch_size = pack, batch_size
        self.packed: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}  # id(W) -> (W, version, packed W)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            return self.linear(*args, **kwargs)
        return func(*args, **kwargs)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.pack:
            entry = self.packed.get(id(weight))
            if entry is None or entry[0] is not weight or entry[1] != weight._version:
                blocked = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), self.batch_size)
                entry = self.packed[id(weight)] = (weight, weight._version, blocked)
            weight = entry[2]
        rows = x.reshape(-1, x.size(-1))
        y = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")
        return y.view(*x.shape[:-1], y.size(-1))


# ----------------------------------------------------------------------------------------------
# float16 on a CPU without float16 arithmetic

FLOAT16_ROWS = 32  # from this many rows a float16 product is faster widened to float32 (measured, AMD EPYC)


class Float16ViaFloat32(TorchFunctionMode):
    """While active, an F.linear of float16 tensors with at least FLOAT16_ROWS rows of input (a prefill,
    a wide batch) runs in float32 on widened copies, its result rounded back to float16. PyTorch's CPU
    float16 product costs one matrix-vector product per row; widening the weight costs about as much
    as 16 of them, and the float32 product is then a real matrix product (4x faster at 512 rows on a
    124M layer). Both sum the products in float32, so the results agree to float16's rounding
    (tests/generate/test_decode.py). Fewer rows run F.linear as it is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            return self.linear(*args, **kwargs)
        return func(*args, **kwargs)

    @staticmethod
    def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.dtype != torch.float16 or x.numel() < FLOAT16_ROWS * x.size(-1):
            return F.linear(x, weight, bias)
        wide = None if bias is None else bias.float()
        return F.linear(x.float(), weight.float(), wide).to(torch.float16)


# The measured choice of `cpu_linear="auto"`, per (model shape, dtype, batch size, threads).
_measured_cpu_linear: dict[tuple, str] = {}

# The timed trial of `cpu_linear="auto"` runs TRIAL_STEPS greedy steps (after a one-token prefill) with each
# candidate, over a warm-up and TRIAL_ROUNDS timed rounds: (1 + 5) x 3 x (1 + 3) = 72 forwards for three
# candidates, whose tokens are thrown away. A decode runs it only when that is at most TRIAL_SHARE of its own
# steps: on a 100-token sample it cost more than oneDNN could ever win back (auto ran at
# 47-87 tok/s where simple ran at 158-177), so a shorter decode times its own steps instead (StepTrial).
TRIAL_STEPS, TRIAL_ROUNDS, TRIAL_SHARE = 3, 5, 0.05
TRIAL_MARGIN = 0.1  # oneDNN is chosen only if it is this much faster than F.linear (noise on a busy machine)

# A decode too short for that trial times its own steps instead (StepTrial), between the candidates that
# need no set-up and no copy of the weights; after a warm-up step of each, STEP_TRIAL_ROUNDS timed steps each.
STEP_TRIAL_CANDIDATES = ("torch", "onednn")
STEP_TRIAL_ROUNDS = 4


class StepTrial:
    """Chooses between F.linear and oneDNN's linears by timing a decode's own steps, so no forward is
    thrown away: each step runs the candidate with the fewest timed steps so far (the first step of
    each is a warm-up, not counted), and once each has STEP_TRIAL_ROUNDS the faster by median is
    `chosen` (oneDNN only if it is TRIAL_MARGIN faster). One trial serves every decode of its model
    shape, dtype, batch size and thread count in this process (`_step_trials`), so it may span
    several short decodes. Both candidates give the same tokens (tests/generate/test_decode.py):
    the decode's tokens are its own."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.times: dict[str, list[float]] = {name: [] for name in STEP_TRIAL_CANDIDATES}
        self.warm: set[str] = set()
        self.chosen: str | None = None

    def next(self) -> str:
        """The candidate the next step runs."""
        cold = [name for name in STEP_TRIAL_CANDIDATES if name not in self.warm]
        return cold[0] if cold else min(STEP_TRIAL_CANDIDATES, key=lambda name: len(self.times[name]))

    def time(self, name: str, step) -> None:
        """Run step() as `name`'s next step; choose once every candidate has its timed steps."""
        t0 = self.clock()
        step()
        seconds = self.clock() - t0
        if name not in self.warm:
            self.warm.add(name)
            return
        self.times[name].append(seconds)
        if all(len(self.times[c]) >= STEP_TRIAL_ROUNDS for c in STEP_TRIAL_CANDIDATES):
            median = {c: statistics.median(self.times[c]) for c in STEP_TRIAL_CANDIDATES}
            self.chosen = "onednn" if median["onednn"] <= (1 - TRIAL_MARGIN) * median["torch"] else "torch"


_step_trials: dict[tuple, StepTrial] = {}  # choice key (Decoder.choice_key) -> its trial


# ----------------------------------------------------------------------------------------------
# The decoder


class Decoder:
    """Decodes batches of `batch_size` prompts of up to `max_len` tokens (prompt + new).

    mode: "eager" runs the step op by op over a growing cache; "static" runs the fixed-shape
    step over the static cache op by op (what "graph" captures: useful to test it without a
    GPU); "graph" replays the fixed-shape step as a CUDA graph (CUDA only); "compiled" runs the
    fixed-shape step compiled by torch.compile with Inductor (COMPILE_OPTIONS; compiled at the
    first decode of each kind, greedy or sampling, and counted in `compilations`); "auto" is
    "graph" on CUDA and "eager" elsewhere (without a graph the static cache's fixed shapes buy
    nothing, and a compilation costs more than a short decode gains).

    cpu_linear: how the CPU runs the matrix-vector products: "torch" (F.linear), "onednn"
    (`OneDNNLinear` on the model's weights), "onednn-packed" (on reordered copies of them),
    or "auto": the fastest of those that can run, timed on a few decode steps of this model
    the first time a decoder of its shape, dtype and batch size decodes enough tokens for the
    trial to cost at most TRIAL_SHARE of the decode (F.linear before that). Ignored on a GPU and
    by mode "compiled" (Inductor chooses its own kernels).

    A Decoder can be reused for any number of `generate` calls with the same batch size;
    each starts afresh from its prompt.
    """

    def __init__(
        self,
        model: GPT,
        batch_size: int,
        max_len: int | None = None,
        mode: str = "auto",
        check_every: int = 16,
        cpu_linear: str = "auto",
    ):
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
        if self.device.type != "cpu" or mode == "compiled":
            cpu_linear = "torch"
        elif cpu_linear in ("onednn", "onednn-packed"):
            reason = onednn_unavailable_reason(self.dtype)
            if reason is not None:
                raise ValueError(f"cpu_linear={cpu_linear!r} cannot run: {reason}")
        self.max_len = max_len or model.config.block_size
        self.check_every = check_every if self.device.type == "cuda" else 1
        B, dev = batch_size, self.device
        cache = KVCache if mode == "eager" else StaticKVCache
        self.cache = cache(model.config, B, self.max_len, device=dev, dtype=self.dtype)
        # Decoding state, updated in place by every step (so a CUDA graph can own it):
        self.seq = torch.zeros(B, self.max_len, dtype=torch.long, device=dev)  # prompt + new tokens
        self.token = torch.zeros(B, 1, dtype=torch.long, device=dev)  # the token to feed next, at cache.pos
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)  # rows that have produced eos
        self.eos = torch.full((), -1, dtype=torch.long, device=dev)  # -1: no eos, nothing is ever done
        self.length = torch.zeros((), dtype=torch.long, device=dev)  # tokens kept in seq
        self.logits = torch.zeros(B, self.config.vocab_size, dtype=self.dtype, device=dev)
        self.graphs: dict[bool, torch.cuda.CUDAGraph] = {}  # greedy? -> captured step
        self.compiled: dict[bool, object] = {}  # greedy? -> compiled step
        self.compilations = 0  # graphs Inductor has compiled for this decoder (tests check it stays put)
        self.cpu_linear = cpu_linear  # "auto" until the first decode measures it
        self.linears = self._linears("torch" if cpu_linear == "auto" else cpu_linear)
        self.step_trial: StepTrial | None = None  # timing this decode's steps (choose_cpu_linear)

    @property
    def batch_size(self) -> int:
        return self.seq.size(0)

    def _linears(self, cpu_linear: str):
        """The context each step runs in: F.linear as it is (float16 on a CPU: widened from
        FLOAT16_ROWS rows), or routed through oneDNN."""
        if cpu_linear == "torch":  # (a compiled step is traced as it is)
            return self.wide_float16() if self.mode != "compiled" else contextlib.nullcontext()
        return OneDNNLinear(pack=cpu_linear == "onednn-packed", batch_size=self.batch_size)

    def wide_float16(self):
        """The context a prefill runs in: Float16ViaFloat32 for a float16 model on a CPU, else none."""
        if self.device.type == "cpu" and self.dtype == torch.float16:
            return Float16ViaFloat32()
        return contextlib.nullcontext()

    # --- one step -------------------------------------------------------------------------------
    def forward_step(self) -> torch.Tensor:
        """Logits (B, vocab_size) after feeding `token` at the cache's position; writes its keys/values."""
        with self.linears:
            return self.model(self.token, cache=self.cache, last_only=True)[:, -1]

    def advance(self, next_token: torch.Tensor) -> None:
        """Append next_token (B,) to the sequence, after the positions the cache holds, and make
        it the token to feed next."""
        still_going = ~self.done.all()
        next_token = torch.where(self.done, self.eos, next_token)  # finished rows repeat eos (no sync)
        self.done |= next_token == self.eos
        self.length += still_going  # the simple path stops once every row is done
        if isinstance(self.cache, StaticKVCache):
            self.seq.index_copy_(1, self.cache.pos, next_token[:, None])
        else:
            self.seq[:, self.cache.pos] = next_token
        self.token.copy_(next_token[:, None])

    def greedy_step(self) -> None:
        """One step choosing the most likely token: what a greedy CUDA graph holds."""
        # argmax in fp32 picks the same token (the cast is exact) and is quicker on the CPU than in bf16
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
                self.cache.reset()  # keeps every write of the warm-up inside the buffers
                body()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.cache.reset()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # recorded, not run
            body()
        self.graphs[greedy] = graph

    # --- the compiled step ----------------------------------------------------------------------
    def compile(self, greedy: bool):
        """The step (greedy_step, or logits_step for sampling) compiled with Inductor: the whole
        step in one graph (fullgraph), for the static cache's fixed shapes (dynamic=False; the
        position is a tensor, so neither a new token nor a new position recompiles)."""
        if greedy not in self.compiled:

            def inductor(gm, example_inputs):
                from torch._inductor.compile_fx import compile_fx  # imported only when a step is compiled

                self.compilations += 1
                return compile_fx(gm, example_inputs, config_patches=COMPILE_OPTIONS)

            body = self.greedy_step if greedy else self.logits_step
            self.compiled[greedy] = torch.compile(body, backend=inductor, fullgraph=True, dynamic=False)
        return self.compiled[greedy]

    # --- the oneDNN choice ----------------------------------------------------------------------
    def measure_cpu_linear(
        self, steps: int = TRIAL_STEPS, rounds: int = TRIAL_ROUNDS, margin: float = TRIAL_MARGIN
    ) -> str:
        """Time greedy decode steps with each runnable cpu_linear, in alternation, and return the
        fastest (the median over rounds); oneDNN only if it beats F.linear by `margin`, so that
        noise on a busy machine does not pick a path slower than the simple decoder's. Leaves the
        decoding state to be overwritten by a prefill."""
        candidates = self.cpu_linear_candidates()
        if len(candidates) == 1:  # no oneDNN here, or a quantized model: its linears call no F.linear to route
            return "torch"
        steps = max(1, min(steps, self.max_len - 2))
        contexts = {name: self._linears(name) for name in candidates}
        seconds: dict[str, list[float]] = {name: [] for name in candidates}
        with torch.inference_mode():
            for warm_up in [True] + [False] * rounds:
                for name, linears in contexts.items():
                    self.linears = linears
                    self.advance(self.prefill(self.seq[:, :1]).argmax(dim=-1))
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        self.greedy_step()
                    if not warm_up:
                        seconds[name].append(time.perf_counter() - t0)
        median = {name: sorted(seconds[name])[len(seconds[name]) // 2] for name in candidates}
        best = min(candidates, key=median.get)
        if median[best] > (1 - margin) * median["torch"]:
            best = "torch"
        self.linears = contexts[best]
        return best

    def cpu_linear_candidates(self) -> list[str]:
        """The cpu_linear values the trial times: "torch", and oneDNN's where it can run and has linears to route."""
        if onednn_unavailable_reason(self.dtype) is not None or is_quantized(self.model):
            return ["torch"]
        return ["torch", "onednn", "onednn-packed"]

    def trial_forwards(self) -> int:
        """How many forwards `measure_cpu_linear` runs (none when there is nothing to choose from)."""
        n = len(self.cpu_linear_candidates())
        return 0 if n == 1 else (1 + TRIAL_ROUNDS) * n * (1 + max(1, min(TRIAL_STEPS, self.max_len - 2)))

    def choose_cpu_linear(self, new_tokens: int | None = None) -> None:
        """Settle cpu_linear="auto", measuring once per model shape, dtype, batch size and thread count.

        With new_tokens (the length of the decode about to run), a trial not yet made is made only if it
        costs at most TRIAL_SHARE of that decode; otherwise cpu_linear stays "auto" (a later, longer decode
        may still measure) and this decode runs the choice of an earlier StepTrial, or makes one
        (`step_trial`)."""
        key = self.choice_key()
        self.step_trial = None
        if key not in _measured_cpu_linear:
            if new_tokens is not None and self.trial_forwards() > TRIAL_SHARE * new_tokens:
                trial = _step_trials.setdefault(key, StepTrial()) if len(self.cpu_linear_candidates()) > 1 else None
                if trial is not None and trial.chosen is None:
                    self.step_trial = trial
                self.linears = self._linears(trial.chosen if trial and trial.chosen else "torch")
                return
            _measured_cpu_linear[key] = self.measure_cpu_linear()
        self.cpu_linear = _measured_cpu_linear[key]
        self.linears = self._linears(self.cpu_linear)

    def choice_key(self) -> tuple:
        """What a measured cpu_linear choice holds for: model shape, dtype, quantization, batch size, threads."""
        return (
            tuple(sorted(self.config.to_dict().items())),
            self.dtype,
            is_quantized(self.model),
            self.batch_size,
            torch.get_num_threads(),
        )

    def run_step(self, greedy: bool) -> None:
        """One eager step (greedy_step or logits_step), timed by the StepTrial while one is running."""
        body = self.greedy_step if greedy else self.logits_step
        trial = self.step_trial
        if trial is None:
            body()
            return
        name = trial.next()
        self.linears = self._linears(name)
        trial.time(name, body)
        if trial.chosen is not None:
            self.linears, self.step_trial = self._linears(trial.chosen), None

    # --- decoding -------------------------------------------------------------------------------
    def prefill(self, idx: torch.Tensor, eos_id: int | None = None) -> torch.Tensor:
        """Run the prompt idx (B, T) through the model, filling the cache; its last logits (B, V)."""
        B, T = idx.shape
        if B != self.batch_size:
            raise ValueError(f"this Decoder decodes batches of {self.batch_size} rows, got {B}")
        if T > self.max_len:
            raise ValueError(f"the prompt is {T} tokens; this Decoder holds {self.max_len} positions")
        self.cache.reset()
        with self.wide_float16():
            logits = self.model(idx, cache=self.cache, last_only=True)[:, -1]  # (B, V)
        self.seq[:, :T].copy_(idx)
        self.length.fill_(T)
        self.done.zero_()
        self.eos.fill_(-1 if eos_id is None else eos_id)
        return logits

    @torch.inference_mode()  # as a decorator, so it holds only while the generator runs
    def steps(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        sampling: SamplingSettings | None = None,
        *,
        eos_id: int | None = None,
        **fields,
    ) -> Iterator[int]:
        """Decode, yielding after each new token the column of `seq` that holds it. sampling, or its
        fields as keywords (temperature=0, ...): how tokens are chosen, as for `generate.stream`.

        Nothing here waits for the device except the "all rows done?" check, made every
        `check_every` steps when an eos_id is given.
        """
        sampling = SamplingSettings.of(sampling, **fields)
        check_ids(idx, self.config.vocab_size)
        T = idx.size(1)
        check_length(self.config.block_size, T, max_new_tokens)
        if T + max_new_tokens > self.max_len:
            raise ValueError(
                f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds this Decoder's "
                f"max_len ({self.max_len})"
            )
        if max_new_tokens == 0:
            return
        greedy = sampling.greedy and not sampling.uses_history  # argmax of the logits alone, inside the step
        if self.cpu_linear == "auto" and max_new_tokens > 1:
            self.choose_cpu_linear(max_new_tokens)
        if self.mode == "graph" and max_new_tokens > 1 and greedy not in self.graphs:
            self.capture(greedy)
        compiled_step = self.compile(greedy) if self.mode == "compiled" and max_new_tokens > 1 else None
        logits = self.prefill(idx, eos_id)
        self.advance(sampling.sample(logits, idx, T, eos_id))
        yield T
        for step in range(1, max_new_tokens):
            if eos_id is not None and step % self.check_every == 0 and bool(self.done.all()):
                return
            if self.mode == "graph":
                self.graphs[greedy].replay()
            elif compiled_step is not None:
                compiled_step()
            else:
                self.run_step(greedy)
            if not greedy:
                self.advance(sampling.sample(self.logits, self.seq[:, : T + step], T, eos_id))
            yield T + step

    def stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        sampling: SamplingSettings | None = None,
        *,
        eos_id: int | None = None,
        **fields,
    ) -> Iterator[torch.Tensor]:
        """Like `generate.stream`: the next token (B,) of every row, step by step. On CUDA the
        stream may run on for up to check_every - 1 steps (of eos only) after every row is done."""
        for column in self.steps(idx, max_new_tokens, sampling, eos_id=eos_id, **fields):
            yield self.seq[:, column].clone()

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        sampling: SamplingSettings | None = None,
        *,
        eos_id: int | None = None,
        **fields,
    ) -> torch.Tensor:
        """idx (B, T) followed by up to max_new_tokens tokens: (B, T + n), as `generate.generate`."""
        for _ in self.steps(idx, max_new_tokens, sampling, eos_id=eos_id, **fields):
            pass
        if max_new_tokens == 0:
            return idx.clone()
        return self.seq[:, : int(self.length)].clone()
