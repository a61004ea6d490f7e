"""The crossbatch training loop: AdamW, warmup + cosine (or constant) learning rate, gradient
clipping and accumulation, bf16 autocast, activation checkpointing, evaluation with memory,
checkpoints (safetensors + JSON state) with exact resume, JSONL metrics, and DDP under torchrun
(`torchrun --nproc-per-node N -m fot_mem train ...`), optionally with the negatives gathered from
the global batch. A checkpoint holds everything a resumed run needs to produce the same steps."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.dictionary import DictionaryTask
from ..data.shards import TokenDataset
from ..exceptions import InvalidValueError
from ..torch import Crossbatch
from .batcher import CrossbatchBatch, CrossbatchBatcher
from .config import TrainConfig, learning_rate, schedule_points
from .dictionary import DictionaryBatches
from .distributed import Distributed
from .loss import chunked_cross_entropy
from .model import build_model, trainable
from .progress import progress_bar

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
        self.started: float | None = None  # when `run` began training (the minutes' clock)
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
        trained = trainable(self.model, cfg.trainable)
        decay = [p for p in trained if p.dim() >= 2]
        rest = [p for p in trained if p.dim() < 2]
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
                near=cfg.dict_near,
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
                sources=[i.split("/")[0] for i in self.train_data.ids] if cfg.mix_sources else None,
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
        blind = None
        if self.cfg.no_memory > 0 and not local:  # drawn per (seed, step, rank): resumable
            draw = np.random.default_rng((self.cfg.seed, self.step, self.dist.rank, 17))
            blind = torch.from_numpy(draw.random(slots) < self.cfg.no_memory)
        gather = self.cfg.gather_negatives and self.dist.world > 1 and not local
        return Crossbatch(
            slots=slots,
            d=d,
            prev=self.cfg.prev,
            gather=self.dist.gather if gather else None,
            rank=self.dist.rank if gather else 0,
            blind=blind,
            context_grad=self.cfg.context_grad,
        )

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
        chunk = self.cfg.loss_chunk
        with self._autocast():
            memory = self._spec(slots, d, evaluating) if self.cfg.prev else None
            out = forward(inputs, memory=memory, logits_rows=slice(n, None), head=not chunk)
            if chunk:  # the LM head a chunk of rows at a time (train/loss.py)
                weight = self.model.lm_head.weight
                return chunked_cross_entropy(
                    out.logits.flatten(0, 1), weight, targets.flatten(), IGNORE, chunk
                )
        logits, targets = out.logits.float().flatten(0, 1), targets.flatten()
        counted = targets != IGNORE
        right = (logits.detach().argmax(-1) == targets) & counted
        accuracy = right.sum() / counted.sum().clamp(min=1)
        return F.cross_entropy(logits, targets, ignore_index=IGNORE), accuracy

    def _clock(self) -> float:
        """The share of `cfg.minutes` this `run` has trained (0 before it starts or unbounded).
        Under DDP each rank reads its own clock: their rates differ by microseconds' worth."""
        if self.started is None or self.cfg.minutes <= 0:
            return 0.0
        return (time.perf_counter() - self.started) / (60 * self.cfg.minutes)

    def train_step(self) -> dict[str, Any]:
        cfg = self.cfg
        d = cfg.d_at(self.step, self.switched)
        lr = learning_rate(cfg, self.step, self._clock())
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
        bar = progress_bar(progress and self.dist.rank == 0, self.step, cfg.steps)
        try:
            if self.step == 0:  # the starting point: the base model's validation losses
                row = {"step": 0, **self.evaluate()}
                log.append(row)
                if metrics is not None:
                    metrics.write(json.dumps(row) + "\n")
            self.started = time.perf_counter()
            while self.step < cfg.steps:
                row = self.train_step()
                late = cfg.minutes > 0 and self._clock() > 1
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
