"""`fot-mem train --recipe NAME`: a named recipe's values, under the options given."""

from __future__ import annotations

import argparse

import pytest
from fot_mem.cli.train import add_arguments, config
from fot_mem.exceptions import InvalidValueError
from fot_mem.train.config import TrainConfig
from fot_mem.train.recipes import RECIPES, recipe


def parse(*argv: str) -> TrainConfig:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return config(p.parse_args(["--data", "d", "--out", "o", *argv]))[0]


def test_without_a_recipe_the_defaults_are_train_configs() -> None:
    assert parse() == TrainConfig(data="d", out="o")
    assert parse("--no-qk-norm", "--batch", "3").qk_norm is False


def test_a_recipe_gives_its_values_and_options_override_them() -> None:
    cfg = parse("--recipe", "fot-smollm2")
    for key, value in RECIPES["fot-smollm2"].items():
        assert getattr(cfg, key) == value, key
    layers = cfg.memory_layers.replace(",", "|")
    assert cfg.trainable == rf"layers\.({layers})\.self_attn\." and cfg.qk_norm is False
    cfg = parse("--recipe", "fot-smollm2", "--steps", "7", "--qk-norm", "--sink-token", "-1")
    assert (cfg.steps, cfg.qk_norm, cfg.sink_token, cfg.batch) == (7, True, None, 64)


def test_an_unknown_recipe_is_refused() -> None:
    with pytest.raises(InvalidValueError, match="no training recipe 'x'"):
        recipe("x")
    with pytest.raises(SystemExit):
        parse("--recipe", "x")
