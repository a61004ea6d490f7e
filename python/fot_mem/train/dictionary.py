"""The dictionary lookup task's training batches (the task itself: `fot_mem.data.dictionary`)."""

from __future__ import annotations

from ..data.batch import CrossbatchBatch
from ..data.dictionary import DictionaryTask
from ..exceptions import InvalidValueError


class DictionaryBatches:
    """The batches of a training (or validation) run on the task: batch i is
    `task.training_batch(seed, i, batch, near=near)`. Holds only its step, so a checkpoint
    resumes it."""

    def __init__(
        self, task: DictionaryTask, *, batch: int, seed: int, whole: bool = False, near: int = 0
    ) -> None:
        self.task, self.batch, self.seed, self.whole, self.near = task, batch, seed, whole, near
        self.step = 0

    def next(self) -> CrossbatchBatch:
        out = self.task.training_batch(
            self.seed, self.step, self.batch, whole=self.whole, near=self.near
        )
        self.step += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "seed": self.seed, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["seed"], state["batch"]) != (self.seed, self.batch):
            raise InvalidValueError(
                f"the checkpoint's batches have seed {state['seed']} and batch {state['batch']}, "
                f"this run {self.seed} and {self.batch}"
            )
        self.step = int(state["step"])
