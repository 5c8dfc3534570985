"""How many composites does a network need before it leaves chance? (docs/training.md)

Trains one classifier with plain cross-entropy on fresh composites from the
trainer's own pipeline (``factory.make_inputs`` + ``render_train_batch``, so the
label pairing, the renderer preset and the subject split are the trainer's)
and prints the fixed test set's accuracy every ``--eval-every`` steps against
the number of training images seen. Nothing else of the trainer is involved
(no reconstruction loss, no checkpoints), so the curve isolates the model,
the input preprocessing and the optimizer:

* ``--model small_cnn``: a plain VGG-style net (4 x [conv3x3-BN-ReLU] x 2 +
  max-pool, global average, linear) on the grey channel: the yardstick;
* ``--model NAME``: any model of the zoo (``feratt_jax.models.build_model``),
  ``--model-options`` as a Python dict, e.g. ``"{'num_filters': 8}"``;
* ``--standardize``: per-image zero mean / unit std (the trainer's
  ``model.input_standardization``);
* ``--input-size 32``: resize the 64x64 composite before the model.

    python experiments/learning_curve.py --model small_cnn --steps 600
    python experiments/learning_curve.py --model preactresnet18 --input-size 32 --steps 300 [--standardize]
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="learning_curve.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--model-options", default="{}", help="Python dict of build_model options")
    p.add_argument("--config", default="experiments/configs/ferattention.py:quick", help="data settings come from this config")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override, e.g. data.render_preset=train")
    p.add_argument("--render", action="append", default=[], metavar="FIELD=VALUE", help="RenderConfig override, e.g. downsample_size=24 (Python literal values)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--optimizer", choices=("adam", "torch_amsgrad"), default="adam")
    p.add_argument("--standardize", action="store_true")
    p.add_argument("--input-size", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--json", help="write the curve here")
    args = p.parse_args(argv)
    for flag, value, least in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1), ("--eval-every", args.eval_every, 1), ("--input-size", args.input_size, 0)):
        if value < least:
            p.error(f"{flag} {value}: must be >= {least}")
    if args.json and not pathlib.Path(args.json).resolve().parent.is_dir():
        p.error(f"--json {args.json}: folder {pathlib.Path(args.json).parent} does not exist")

    from feratt_jax.xla_cpu import apply_fast_cpu_flags

    apply_fast_cpu_flags()
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from feratt_jax import factory, step, validation
    from feratt_jax.configs import load_config
    from feratt_jax.data.device import render_train_batch
    from feratt_jax.models import build_model
    from feratt_jax.optimizers import torch_adam

    class SmallCNN(nn.Module):
        num_classes: int

        @nn.compact
        def __call__(self, x_BHWC, train: bool = False):
            x = x_BHWC[..., :1]
            for features in (32, 64, 128, 256):
                for _ in range(2):
                    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(features, (3, 3))(x)))
                x = nn.max_pool(x, (2, 2), (2, 2))
            return {"logits": nn.Dense(self.num_classes)(x.mean((1, 2)))}

    try:  # bad input: one line before any work
        # --render FIELD=VALUE is the config's own data.render override (configs.apply_overrides).
        overrides = [f"--config.{kv}" for kv in args.set] + [f"--config.data.render.{kv}" for kv in args.render]
        config = load_config(args.config, overrides + [f"--config.train.batch_size={args.batch_size}"])
        validation.validate(config)
        try:
            model_options = dict(ast.literal_eval(args.model_options))
        except (ValueError, TypeError, SyntaxError):
            raise ValueError(f"--model-options {args.model_options!r}: expected a Python dict") from None
        num_classes = int(config.model.num_classes)
        if args.model == "small_cnn":
            model = SmallCNN(num_classes)
        else:
            model = build_model(args.model, num_classes=num_classes, **model_options)
    except (ValueError, FileNotFoundError) as err:
        p.error(str(err))
    data = factory.make_inputs(config)

    def prepare(image_BHWC):
        x = step.model_input(image_BHWC, args.input_size, args.standardize)  # RGB, resized, standardized
        # The small CNN's yardstick input: centred grey, as it was designed.
        return x - 0.5 if args.model == "small_cnn" and not args.standardize else x

    size = args.input_size or int(config.data.image_size)
    variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, jnp.zeros((1, size, size, 3)), train=False)
    tx = optax.adam(args.learning_rate) if args.optimizer == "adam" else torch_adam(args.learning_rate, amsgrad=True)
    state = (variables["params"], variables.get("batch_stats", {}), tx.init(variables["params"]))
    render_config = data.render_config

    @jax.jit
    def train_step(state, batch, step_index):  # not `step`: that is the module model_input comes from
        params, batch_stats, opt_state = state
        rendered = render_train_batch(batch, render_config)
        x = prepare(rendered["image"])

        def loss_fn(params):
            out, updates = model.apply(
                {"params": params, "batch_stats": batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.fold_in(jax.random.key(2), step_index)},
            )
            ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"], rendered["label"]).mean()
            return ce, updates.get("batch_stats", {})

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    @jax.jit
    def predict(state, image_BHWC):
        params, batch_stats, _ = state
        return model.apply({"params": params, "batch_stats": batch_stats}, prepare(image_BHWC), train=False)["logits"].argmax(-1)

    test_x, test_y = jnp.asarray(data.test["image"]), np.asarray(data.test["label"])
    curve, losses, t0 = [], [], time.perf_counter()
    for i in range(1, args.steps + 1):
        state, loss = train_step(state, jax.device_put(next(data.train)), i)
        losses.append(float(loss))
        if i % args.eval_every == 0 or i == args.steps:
            accuracy = float(np.mean(np.asarray(predict(state, test_x)) == test_y))
            point = {"step": i, "images": i * args.batch_size, "train_ce": float(np.mean(losses[-args.eval_every :])), "test_accuracy": accuracy, "seconds": time.perf_counter() - t0}
            curve.append(point)
            print(f"{args.model} step {i:5d}  images {point['images']:6d}  train CE {point['train_ce']:.3f}  test acc {accuracy:.3f}  {point['seconds']:.0f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "chance": 1.0 / num_classes, "curve": curve}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
