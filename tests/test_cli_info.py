"""``feratt info``: the acceptance parameter counts and a real FLOP figure."""

from __future__ import annotations

import json

import pytest

from feratt_jax.cli import main


def _info(capsys, *args):
    assert main(["info", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "args,params",
    [
        (["--model", "ferattention", "--num-classes", "8"], 45_792_737),
        (["--model", "ferattention", "--num-classes", "7"], 45_789_059),
        (["--model", "ferattentiongmm", "--num-classes", "8", "--dim", "32"], 45_805_313),
        (["--model", "ferattentionstn", "--num-classes", "8"], 45_841_457),
        (["--model", "ferattentiongmmstn", "--num-classes", "8", "--dim", "32"], 45_854_033),
        (["--model", "preactresnet18", "--num-classes", "8"], 11_170_120),
    ],
)
def test_info_parameter_counts(capsys, args, params):
    summary = _info(capsys, *args, "--no-flops")
    assert summary["params"] == params
    assert summary["output_shapes"]["logits"] == [int(args[3])]


def test_info_flops_of_preactresnet18_at_32(capsys):
    summary = _info(capsys, "--model", "preactresnet18", "--num-classes", "8")
    # Conv MACs of PreActResNet18 on 32x32 are ~0.56 G, i.e. ~1.1 GFLOP;
    # XLA counts a multiply-add as 2 FLOPs.
    assert 0.9e9 < summary["flops_per_image"] < 1.4e9
    assert summary["batch_stats"] == 6784


def test_info_unknown_model_is_a_clear_error(capsys):
    assert main(["info", "--model", "bogus", "--num-classes", "8", "--no-flops"]) == 2
    assert "unknown model 'bogus'" in capsys.readouterr().err
