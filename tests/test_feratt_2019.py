"""The paper-era FERAtt (reference commit 53fd5e4): sizes, parity with its PyTorch twin, checkpoints, config.

Parity follows tests/test_torch_interop.py: the twin
(feratt_jax.interop.torch_model.FERAttention2019) gets random weights (BN
affine parameters and running statistics too, the STN regressor off the
identity), its state_dict is converted, and every named output is compared in
eval mode (1e-4 abs) and train mode (1e-3 abs), with the BN running
statistics, the paper-era loss terms (1e-5 relative) and, in float64, the
per-parameter gradients of the paper-era total loss.

Parity runs at 64x64 (batch 2): every layer is the same at any multiple of
32 except the STN regressor's input (10*12*12 at 64, 10*28*28 at the
reference's 128), and 64 costs a quarter of 128. The sizes, the key layout
and the checkpoint round trip are checked at the reference's 128.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from flax.traverse_util import flatten_dict  # noqa: E402

from feratt_jax import configs, losses  # noqa: E402
from feratt_jax.cli import main  # noqa: E402
from feratt_jax.interop import torch_losses  # noqa: E402
from feratt_jax.interop.torch_checkpoint import (  # noqa: E402
    export_reference_checkpoint,
    insert_attention_encoder,
    load_reference_checkpoint,
    state_dict_to_variables,
    torchvision_resnet34_to_encoder,
    variables_to_state_dict,
)
from feratt_jax.interop.torch_model import DilateCenter, TorchvisionResNet, build_torch_model  # noqa: E402
from feratt_jax.model_io import abstract_variables, load_model  # noqa: E402
from feratt_jax.models import build_model  # noqa: E402
from feratt_jax.factory import make_learning_rate  # noqa: E402
from torch_parity import randomize_bn_and_stn_  # noqa: E402

NAME = "ferattention_2019"
C = 7  # train.sh at that commit: BU-3DFE, NUMCLASS=7, DIM=32
B = 2
S = 64  # parity input side (see the module docstring)
EVAL_ATOL = 1e-4
TRAIN_ATOL = 1e-3
LOSS_RTOL = 1e-5
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------
# Sizes, derived by hand from atentionpreactresnet.py / stn.py / preactresnet.py at 53fd5e4
# --------------------------------------------------------------------------


def _conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def _reference_parameter_count(num_classes: int, dim: int, nf: int = 32, side: int = 128) -> dict[str, int]:
    """AtentionResNet(encoder_depth=34, dim, num_classes, num_channels=3, num_filters=32), by part."""
    # torchvision resnet34 (used part): conv1 7x7 no bias + bn1, layer1-4 of BasicBlocks (3x3 convs
    # without bias, BN affine), a 1x1 conv + BN downsample at the first block of layer2-4.
    def basic(cin: int, cout: int, down: bool) -> int:
        return _conv(cin, cout, 3, False) + 2 * cout + _conv(cout, cout, 3, False) + 2 * cout + (
            _conv(cin, cout, 1, False) + 2 * cout if down else 0
        )

    encoder = _conv(3, 64, 7, False) + 2 * 64
    for cin, cout, blocks in ((64, 64, 3), (64, 128, 4), (128, 256, 6), (256, 512, 3)):
        encoder += basic(cin, cout, cin != cout) + (blocks - 1) * basic(cout, cout, False)
    parts = {"encoder": encoder, "encoder.fc (dead)": 512 * 1000 + 1000}
    # DilateCenter(512, nf*8): conv_d1 512 -> 256, conv_d2..d4 256 -> 256, all 3x3 with bias.
    parts["center"] = _conv(512, nf * 8, 3) + 3 * _conv(nf * 8, nf * 8, 3)
    # DecoderBlockV2(in, mid, out, is_deconv=True): ConvRelu(in, mid) 3x3, ConvTranspose2d(mid, out, 4).
    decoders = {
        "dec5": (512 + nf * 8, nf * 16, nf * 8),
        "dec4": (256 + nf * 8, nf * 16, nf * 8),
        "dec3": (128 + nf * 8, nf * 8, nf * 2),
        "dec2": (64 + nf * 2, nf * 4, nf * 4),
        "dec1": (nf * 4, nf * 4, nf),
    }
    for name, (cin, mid, cout) in decoders.items():
        parts[name] = _conv(cin, mid, 3) + (mid * cout * 4 * 4 + cout)
    parts["attention_map"] = _conv(nf, nf, 3) + _conv(nf, 1, 1)
    parts["conv_input"] = _conv(3, nf, 9)
    parts["feature"] = 4 * 2 * _conv(nf, nf, 3)  # 4 _Residual_Block_SR, two 3x3 convs each
    parts["conv_mid"] = _conv(nf, nf, 3)
    parts["reconstruction"] = _conv(nf, nf, 3) + _conv(nf, 3, 1)
    # STN: conv 1->8 k7, pool 2, conv 8->10 k5, pool 2: 128 -> 122 -> 61 -> 57 -> 28; Linear(10*28*28, 32), Linear(32, 6).
    s = ((side - 6) // 2 - 4) // 2
    parts["stn"] = _conv(1, 8, 7) + _conv(8, 10, 5) + (10 * s * s * 32 + 32) + (32 * 6 + 6)
    # preactresembnetex18: conv1 3x3 no bias, PreActBlocks (bn1, conv1, bn2, conv2, 1x1 shortcut when the
    # shape changes), linear 512 -> dim, classification dim -> C.
    def preact(cin: int, cout: int) -> int:
        return 2 * cin + _conv(cin, cout, 3, False) + 2 * cout + _conv(cout, cout, 3, False) + (
            _conv(cin, cout, 1, False) if cin != cout else 0
        )

    netclass = _conv(3, 64, 3, False)
    for cin, cout in ((64, 64), (64, 128), (128, 256), (256, 512)):
        netclass += preact(cin, cout) + preact(cout, cout)
    parts["netclass"] = netclass + (512 * dim + dim) + (dim * num_classes + num_classes)
    return parts


def test_reference_arithmetic_matches_the_spec_figures() -> None:
    # Cross-checks of the derivation against docs/reference.md 1.6: the used ResNet-34 encoder has
    # 21,284,672 parameters and preactresembnetex18 (dim 32, C=8) 11,182,696.
    assert _reference_parameter_count(8, 32)["encoder"] == 21_284_672
    assert _reference_parameter_count(8, 32)["netclass"] == 11_182_696
    assert _reference_parameter_count(8, 32)["stn"] == 400 + 2_010 + 250_912 + 198


def test_feratt_info_sizes_and_the_reference_key_layout(capsys: pytest.CaptureFixture[str]) -> None:
    parts = _reference_parameter_count(C, 32)
    used = sum(v for k, v in parts.items() if k != "encoder.fc (dead)")
    assert used == 47_644_955
    assert main(["info", "--model", NAME, "--num-classes", str(C), "--dim", "32", "--no-flops"]) == 0
    import json

    summary = json.loads(capsys.readouterr().out)
    assert summary["image_size"] == 128
    assert summary["params"] == used, "feratt info disagrees with the count derived from the reference code"
    # BN statistics (mean + var): encoder 8,512 channels, preactresnet18 3,392.
    assert summary["batch_stats"] == 2 * (8_512 + 3_392)
    assert summary["output_shapes"] == {
        "attention": [128, 128, 1],  # one attention channel
        "embedding": [32],
        "features": [128, 128, 32],  # num_filters feature channels
        "logits": [C],
        "reconstruction": [128, 128, 3],
        "theta": [2, 3],
        "warped": [128, 128, 3],
    }

    # The twin with the reference's registration of the encoder: the reference module's parameter
    # count (the dead encoder.fc included) and exactly the key set our export writes.
    tm = build_torch_model(NAME, num_classes=C, include_encoder_alias=True)
    assert sum(p.numel() for p in tm.parameters()) == used + parts["encoder.fc (dead)"]
    fm = build_model(NAME, num_classes=C)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_variables(fm))
    ours = variables_to_state_dict(zeros, include_encoder_alias=True)
    sd = tm.state_dict()
    assert set(ours) == set(sd), sorted(set(ours) ^ set(sd))[:10]
    for k in sd:
        assert tuple(sd[k].shape) == ours[k].shape, k
    expected_shapes = {  # names and shapes as the reference code spells them
        "encoder.fc.weight": (1000, 512),
        "conv1.0.weight": (64, 3, 7, 7),
        "center.conv_d4.weight": (256, 256, 3, 3),
        "dec5.block.0.conv.weight": (512, 768, 3, 3),
        "dec5.block.1.weight": (512, 256, 4, 4),  # ConvTranspose2d: (in, out, k, k)
        "dec1.block.1.weight": (128, 32, 4, 4),
        "attention_map.1.weight": (1, 32, 1, 1),
        "conv_input.weight": (32, 3, 9, 9),
        "feature.3.conv2.weight": (32, 32, 3, 3),
        "reconstruction.1.weight": (3, 32, 1, 1),
        "stn.fc_loc.0.weight": (32, 7840),
        "netclass.classification.weight": (C, 32),
    }
    for k, shape in expected_shapes.items():
        assert tuple(sd[k].shape) == shape, k


def test_the_model_names_its_input_size() -> None:
    fm = build_model(NAME, num_classes=C)
    with pytest.raises(ValueError, match=r"image_size=128 expects \(B, 128, 128, 3\)"):
        fm.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match="only the preactresnet18 backbone"):
        build_model(NAME, num_classes=C, backbone="resnet18")
    with pytest.raises(ValueError, match="attention_channels"):
        build_model(NAME, num_classes=C, attention_channels=4)


# --------------------------------------------------------------------------
# Parity with the twin
# --------------------------------------------------------------------------


def _randomize_(model: torch.nn.Module, seed: int) -> None:
    randomize_bn_and_stn_(model, seed)
    with torch.no_grad():
        # Scale the reconstruction so that the +-0.02 thresholds keep some pixels and drop others.
        model.reconstruction[1].weight.mul_(8.0)


def _pair(seed: int = 0):  # noqa: ANN202
    torch.manual_seed(seed)
    tm = build_torch_model(NAME, num_classes=C, image_size=S)
    _randomize_(tm, seed + 1)
    fm = build_model(NAME, num_classes=C, image_size=S)
    return tm, fm, state_dict_to_variables(tm.state_dict(), abstract_variables(fm))


def _nhwc(t: torch.Tensor) -> np.ndarray:
    a = t.detach().numpy()
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def _batch(seed: int):  # noqa: ANN202
    """x (input), x_org, the reference's two-channel y_mask (0: background, 1: face), labels, theta."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, S, S, generator=g)
    face = (torch.rand(B, 1, S, S, generator=g) > 0.3).float()
    x_org = torch.rand(B, 3, S, S, generator=g) * face
    y_mask = torch.cat([1.0 - face, face], 1)
    labels = torch.tensor([3.0, 5.0])
    theta = torch.eye(2, 3).repeat(B, 1, 1) + 0.1 * torch.randn(B, 2, 3, generator=g)
    return x, x_org, y_mask, labels, theta


def _torch_terms(out: dict, x_org, y_mask, labels, theta) -> dict:  # noqa: ANN001
    """The paper-era trainer's terms: CE, DGMMLoss(sigma=1, mix=False) and attLoss's two parts."""
    return {
        "cross_entropy": torch_losses.cross_entropy(out["logits"], labels),
        "gaussian_space": torch_losses.dgmm_loss(out["embedding"], labels, None, None, num_classes=C, sigma=1.0),
        "reconstruction": torch_losses.att_loss_2019(x_org, y_mask, out["reconstruction"]),
        "stn": torch_losses.stn_loss(x_org, out["theta"], theta, scale=1.0),
    }


def _jax_batch(x_org, y_mask, labels, theta, dtype=np.float32) -> dict:  # noqa: ANN001
    nhwc = lambda t: jnp.asarray(t.permute(0, 2, 3, 1).numpy().astype(dtype))  # noqa: E731
    return {"x_org": nhwc(x_org), "mask": nhwc(y_mask[:, 1:]), "label": jnp.asarray(labels.numpy()), "theta": jnp.asarray(theta.numpy().astype(dtype))}


def _jax_terms(out: dict, batch: dict) -> dict:
    options = losses.reference_loss_options("attention_gmm_stn_2019")
    return losses.feratt_losses(out, batch, None, variant="attention_gmm_stn_2019", num_classes=C, **options)


def test_forward_and_loss_parity() -> None:
    tm, fm, variables = _pair()
    x_t, x_org, y_mask, labels, theta = _batch(seed=2)
    x_j = jnp.asarray(x_t.permute(0, 2, 3, 1).numpy())

    @jax.jit
    def both(v, x):  # noqa: ANN001, ANN202
        ev = fm.apply(v, x, train=False)
        tr, updates = fm.apply(v, x, train=True, mutable=["batch_stats"])
        return ev, tr, updates["batch_stats"]

    ev_j, tr_j, stats_j = both(variables, x_j)
    tm.eval()
    with torch.no_grad():
        ev_t = tm(x_t)
    tm.train()
    with torch.no_grad():
        tr_t = tm(x_t)
    for what, out_t, out_j, atol in (("eval", ev_t, ev_j, EVAL_ATOL), ("train", tr_t, tr_j, TRAIN_ATOL)):
        assert set(out_t) == set(out_j) == {"logits", "embedding", "reconstruction", "attention", "features", "theta", "warped"}
        for key in out_t:
            a, b = _nhwc(out_t[key]), np.asarray(out_j[key])
            assert a.shape == b.shape, (what, key, a.shape, b.shape)
            err = float(np.max(np.abs(a - b)))
            assert err <= atol, f"{what} output {key!r}: max abs diff {err:.3g} > {atol}"
    # The thresholds act: some reconstruction pixels are zeroed (~4% here), most are kept.
    kept = float(np.mean(np.asarray(ev_j["reconstruction"]) != 0))
    assert 0.01 < kept < 0.99, kept

    stats_t = {k: v.numpy() for k, v in tm.state_dict().items() if "running_" in k}
    ren = {"mean": "running_mean", "var": "running_var"}
    stats_jn = {".".join(p[:-1] + (ren[p[-1]],)): np.asarray(v) for p, v in flatten_dict(stats_j).items()}
    assert set(stats_t) == set(stats_jn)
    for k in stats_t:
        np.testing.assert_allclose(stats_jn[k], stats_t[k], rtol=1e-4, atol=1e-5, err_msg=k)

    # The loss definitions on the same (the twin's train-mode) outputs: the two models' outputs agree
    # only to the train-mode tolerance, which the DGMM term (batch 2) magnifies past 1e-5; the
    # float64 gradient test below checks the terms on each side's own outputs to 1e-12.
    terms_t = _torch_terms(tr_t, x_org, y_mask, labels, theta)
    terms_j = _jax_terms({k: jnp.asarray(_nhwc(v)) for k, v in tr_t.items()}, _jax_batch(x_org, y_mask, labels, theta))
    assert set(terms_t) | {"total", "total_unscaled"} == set(terms_j)
    for k, a in terms_t.items():
        a, b = float(a), float(terms_j[k])
        assert abs(a - b) <= LOSS_RTOL * abs(a), f"loss {k}: torch {a!r} jax {b!r}"
    # The paper-era total: the plain sum, not scaled by the batch size.
    assert float(terms_j["total"]) == pytest.approx(sum(float(v) for v in terms_t.values()), rel=LOSS_RTOL)


def test_train_mode_gradients_match_in_float64() -> None:
    """Per-parameter gradients of the paper-era total loss (train mode), both sides in float64.

    As for HEAD (test_torch_interop), float64 removes the fp32 noise of train-mode BN on batch 2;
    what is left is summation order (bound 1e-9 relative per parameter tensor).
    """
    tm, _, variables = _pair(seed=7)
    x_t, x_org, y_mask, labels, theta = _batch(seed=8)
    tm = tm.double().train()
    terms_t = _torch_terms(tm(x_t.double()), x_org.double(), y_mask.double(), labels, theta.double())
    sum(terms_t.values()).backward()
    grads_t = {k: p.grad.double().numpy() for k, p in tm.named_parameters()}

    with jax.enable_x64(True):  # jax >= 0.10.2, as pyproject requires
        fm = build_model(NAME, num_classes=C, image_size=S, dtype=jnp.float64)
        v = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
        batch = _jax_batch(x_org, y_mask, labels, theta, np.float64)
        x_j = jnp.asarray(x_t.permute(0, 2, 3, 1).numpy().astype(np.float64))

        def loss_fn(params):  # noqa: ANN001, ANN202
            out, _ = fm.apply({"params": params, "batch_stats": v["batch_stats"]}, x_j, train=True, mutable=["batch_stats"])
            terms = _jax_terms(out, batch)
            return terms["total"], terms

        (_, terms_j), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(v["params"])
        grads_j = {k: np.asarray(g, np.float64) for k, g in variables_to_state_dict({"params": grads}, num_batches_tracked=None).items()}
    for k, a in terms_t.items():
        a = float(a.detach())
        assert abs(a - float(terms_j[k])) <= 1e-12 * abs(a), (k, a, float(terms_j[k]))
    assert set(grads_j) == set(grads_t)
    worst = max((float(np.linalg.norm(grads_j[k] - grads_t[k])) / max(float(np.linalg.norm(grads_t[k])), 1e-30), k) for k in grads_t)
    assert worst[0] <= 1e-9, f"worst relative gradient error {worst[0]:.3g} at {worst[1]}"


def test_paper_era_loss_definitions_and_the_clamp() -> None:
    g = torch.Generator().manual_seed(5)
    x_org = torch.rand(3, 3, 16, 16, generator=g)
    face = (torch.rand(3, 1, 16, 16, generator=g) > 0.5).float()
    y_mask = torch.cat([1 - face, face], 1)
    nhwc = lambda t: jnp.asarray(t.permute(0, 2, 3, 1).numpy())  # noqa: E731
    for scale in (1.0, 20.0):  # 20: mean squared error ~130, above the clamp at 30
        att = scale * torch.randn(3, 3, 16, 16, generator=g)
        a = float(torch_losses.att_loss_2019(x_org, y_mask, att))
        b = float(losses.masked_reconstruction_mse(nhwc(x_org), nhwc(face), nhwc(att)))
        assert abs(a - b) <= LOSS_RTOL * abs(a), (scale, a, b)
    assert b == 60.0  # 2 * 30: clamped
    grad = jax.grad(lambda r: losses.masked_reconstruction_mse(nhwc(x_org), nhwc(face), r))(nhwc(att))
    assert float(jnp.max(jnp.abs(grad))) == 0.0  # above the clamp nothing is learned, as in the reference

    theta = torch.eye(2, 3).repeat(3, 1, 1) + 0.2 * torch.randn(3, 2, 3, generator=g)
    target = torch.eye(2, 3).repeat(3, 1, 1) + 0.2 * torch.randn(3, 2, 3, generator=g)
    a = float(torch_losses.stn_loss(x_org, theta, target, scale=1.0))
    b = float(losses.stn_loss(nhwc(x_org), jnp.asarray(theta.numpy()), jnp.asarray(target.numpy()), scale=1.0))
    assert abs(a - b) <= LOSS_RTOL * abs(a)
    assert a == pytest.approx(float(torch_losses.stn_loss(x_org, theta, target)) / 10.0, rel=1e-6)


def test_dilate_center_sums_on_the_input_device_and_dtype() -> None:
    """The reference accumulates in ``torch.zeros(...).cuda()``: CUDA-only and float32. The fix sums
    the four outputs directly; the old accumulator stays behind ``buffer_on_cuda``."""
    torch.manual_seed(0)
    block = DilateCenter(4, 3).double()
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    y = block(x)
    assert y.dtype == torch.float64
    outs, h = [], x
    for d in (1, 2, 3, 4):
        h = torch.nn.functional.conv2d(h, getattr(block, f"conv_d{d}").weight, getattr(block, f"conv_d{d}").bias, padding=d, dilation=d)
        outs.append(h)
    torch.testing.assert_close(y, torch.relu(outs[0] + outs[1] + outs[2] + outs[3]), rtol=0, atol=0)
    if not torch.cuda.is_available():
        block.buffer_on_cuda = True
        with pytest.raises((AssertionError, RuntimeError)):
            block(x)


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


def test_checkpoint_round_trip_at_128_through_the_reference_module_and_the_cli(tmp_path: Path) -> None:
    fm = build_model(NAME, num_classes=C)
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), abstract_variables(fm))
    path = export_reference_checkpoint(variables, NAME, tmp_path / "chk000350.pth.tar", num_classes=C, epoch=350)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    # What the paper-era loader reads: nnmodels.__dict__[arch], imsize, num_output_channels (= dim).
    assert (ckpt["arch"], ckpt["imsize"], ckpt["num_output_channels"], ckpt["num_classes"]) == ("atentionresnet34", 128, 32, C)
    tm = build_torch_model(NAME, num_classes=C, include_encoder_alias=True)
    tm.load_state_dict(ckpt["state_dict"], strict=True)

    # DataParallel's prefix and the duplicated encoder are read back to the same variables.
    bare = tmp_path / "bare.pth"
    torch.save({f"module.{k}": v for k, v in tm.state_dict().items()}, bare)
    back = load_reference_checkpoint(bare, NAME, num_classes=C)
    for k, a in flatten_dict(variables).items():
        np.testing.assert_array_equal(flatten_dict(back)[k], a, err_msg=str(k))
    del ckpt, tm, back

    # `feratt convert` takes the model from the file's arch (atentionresnet34 -> ferattention_2019).
    assert main(["convert", "--from-torch", str(path), "--out", str(tmp_path / "export")]) == 0
    module, loaded, spec = load_model(tmp_path / "export")
    assert spec["model_name"] == NAME and module.image_size == 128
    for k, a in flatten_dict(variables).items():
        np.testing.assert_array_equal(np.asarray(flatten_dict(loaded)[k]), a, err_msg=str(k))


def test_torchvision_resnet34_weights_load_into_the_top_level_encoder() -> None:
    torch.manual_seed(3)
    resnet = TorchvisionResNet((3, 4, 6, 3), num_classes=1000)
    for p in resnet.parameters():
        p.data.normal_(0.0, 0.05)
    tm = build_torch_model(NAME, num_classes=C, image_size=S, include_encoder_alias=True)
    fm = build_model(NAME, num_classes=C, image_size=S)
    before = state_dict_to_variables(tm.state_dict(), abstract_variables(fm))
    tm.encoder.load_state_dict(resnet.state_dict())  # the reference's pretrained=True (--finetuning)
    expected = state_dict_to_variables(tm.state_dict(), abstract_variables(fm))
    got = insert_attention_encoder(before, torchvision_resnet34_to_encoder(resnet.state_dict()))
    fe, fg = flatten_dict(expected), flatten_dict(got)
    assert set(fe) == set(fg)
    for k in fe:
        np.testing.assert_array_equal(np.asarray(fg[k]), fe[k], err_msg=str(k))
    assert not np.array_equal(before["params"]["conv2"]["0"]["conv1"]["kernel"], expected["params"]["conv2"]["0"]["conv1"]["kernel"])


# --------------------------------------------------------------------------
# Config and schedule
# --------------------------------------------------------------------------


def test_step_schedule_is_pytorch_steplr() -> None:
    opt = ml_collections.ConfigDict({"learning_rate": 1e-4, "schedule": "step", "step_size": 100, "step_gamma": 0.1, "warmup_steps": 0})
    lr = make_learning_rate(opt, 1000)
    for step, expected in ((0, 1e-4), (99, 1e-4), (100, 1e-5), (199, 1e-5), (250, 1e-6), (999, 1e-13)):
        assert float(lr(step)) == pytest.approx(expected, rel=1e-6), step
    opt.step_size = 0
    with pytest.raises(ValueError, match="optimizer.step_size"):
        make_learning_rate(opt, 1000)


def test_config_has_the_paper_era_settings() -> None:
    c = configs.load_config(str(REPO / "experiments" / "configs" / "ferattention_2019.py"))
    assert (c.model.name, c.model.num_feature_blocks, c.data.image_size, c.train.batch_size) == (NAME, 4, 128, 240)
    assert (c.loss.variant, c.loss.sigma, c.loss.mixup, c.loss.scale_by_batch_size) == ("attention_gmm_stn_2019", 1.0, False, False)
    # 70,000 samples per epoch at batch 240 (drop_last): 291 steps; StepLR(100 epochs, 0.1); 500 epochs.
    assert (c.optimizer.schedule, c.optimizer.step_size, c.optimizer.step_gamma, c.train.num_steps) == ("step", 29_100, 0.1, 145_500)
    assert (c.optimizer.learning_rate, c.optimizer.amsgrad, c.optimizer.weight_decay) == (1e-4, True, 0.0)
    for size in ("quick", "tiny"):
        s = configs.load_config(str(REPO / "experiments" / "configs" / f"ferattention_2019.py:{size}"))
        assert s.model.name == NAME and s.data.image_size == 128
        assert s.optimizer.step_size == max(s.train.num_steps // 5, 1)


def test_paper_table_runs_the_paper_era_config_on_request() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper_table_2019", REPO / "experiments" / "paper_table.py")
    pt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pt)
    assert "ferattention_2019" not in [m for m, _ in pt.METHODS]  # the default table is unchanged
    config = pt.method_config("ferattention_2019", "quick", [])
    assert config.model.name == NAME
    assert pt.model_description(config).startswith("input 128px, decoder 8, 2 feature blocks, classifier width 16")
