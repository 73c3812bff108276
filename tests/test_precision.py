"""Issue 22: the precision of the network (float32 or bfloat16), chosen once in the core."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import UNet, finetune, load_bundled, predict
from napari_unet.core.network import precision as prec
from napari_unet.core.network.precision import autocast, resolve_precision
from napari_unet.core.training.train import FinetuneConfig

BF16_VS_FP32 = 0.15
"""Max abs difference of bfloat16 and float32 probabilities of the bundled model on a crop of
the sample: 0.072 measured (mean 0.001), with a 2x margin."""
BF16_TILES = 1e-2
"""Max abs difference of bfloat16 tiles and the whole image: 0 measured on a CPU that emulates
bfloat16 (each output pixel rounds alike in any tile); a margin for CPUs and GPUs whose kernels
sum in an order that depends on the tile size (a bfloat16 step near p = 0.5 is about 4e-3)."""


@pytest.fixture
def flags(monkeypatch):
    """Make :func:`cpu_flags` report the given flags (its cache cleared before and after)."""

    def report(*names):
        monkeypatch.setattr(prec, "CPUINFO", _FakeInfo(" ".join(names)))
        prec.cpu_flags.cache_clear()

    yield report
    prec.cpu_flags.cache_clear()


class _FakeInfo:
    def __init__(self, flags: str):
        self.text = f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 {flags}\n"

    def read_text(self) -> str:
        return self.text


def test_auto_is_float32_on_this_cpu_without_bf16():
    """The development CPU (AMD EPYC, no avx512_bf16 / amx_bf16) gets float32 from "auto"."""
    if prec.cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"}:
        pytest.skip("this CPU computes bfloat16 natively")
    assert prec.cpu_flags()  # the real /proc/cpuinfo was read
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"  # explicit: emulated, but it runs


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16", "bf16"])
def test_auto_is_bfloat16_where_the_cpu_has_it(flags, flag):
    flags(flag)
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("fp32", "cpu") == "fp32"
    flags("avx2", "avx512f")
    assert resolve_precision("auto", "cpu") == "fp32"


def test_the_flags_are_read_once_per_process(flags):
    flags("amx_bf16")
    assert prec.cpu_flags() == prec.cpu_flags()
    prec.CPUINFO.text = "flags\t: fpu"  # a second read would see this
    assert "amx_bf16" in prec.cpu_flags()


@pytest.mark.parametrize("bad", ["fp16", "half", 3, "BF16"])
def test_bad_precisions_say_what_is_expected(tiny_unet, sample, bad):
    image = sample[0]
    with pytest.raises(ValueError, match=r"precision .*'auto', 'fp32', 'bf16'"):
        resolve_precision(bad, "cpu")
    with pytest.raises(ValueError, match=r"precision .*'auto', 'fp32', 'bf16'"):
        predict(tiny_unet, image, precision=bad)
    with pytest.raises(ValueError, match=r"precision .*'auto', 'fp32', 'bf16'"):
        finetune(tiny_unet, [sample], steps=1, precision=bad)
    if bad != "fp16":  # a name, but for CUDA only: refused when the device is known
        with pytest.raises(ValueError, match=r"precision must be one of"):
            FinetuneConfig(precision=bad)


def test_autocast_runs_the_network_in_bfloat16_and_fp32_untouched(tiny_unet):
    x = torch.rand(1, 1, tiny_unet.input_size(16), tiny_unet.input_size(16))
    with torch.no_grad():
        with autocast("bf16", "cpu"):
            assert tiny_unet(x).dtype == torch.bfloat16
        with autocast("fp32", "cpu"):
            assert tiny_unet(x).dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in tiny_unet.parameters())


@pytest.fixture(scope="module")
def bundled_crop(whole_sample):
    """The bundled model and a (192, 192) crop of the sample, predicted at D = 40 in float32."""
    model = load_bundled()
    image = whole_sample[0][:192, :192]
    return model, image, predict(model, image, precision="fp32", diameter=40)


def test_bfloat16_probabilities_are_close_to_float32(bundled_crop):
    model, image, fp32 = bundled_crop
    bf16 = predict(model, image, precision="bf16", diameter=40)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    diff = np.abs(bf16 - fp32)
    assert 0 < diff.max() < BF16_VS_FP32  # it did run in bfloat16, and close
    assert diff.mean() < 5e-3  # 0.001 measured
    assert ((bf16 > 0.5) == (fp32 > 0.5)).mean() > 0.99
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bfloat16_tiles_equal_the_whole_image(bundled_crop):
    model, image, _ = bundled_crop
    whole = predict(model, image, precision="bf16", diameter=40, tile=4096)
    for tile in (32, 64):
        tiled = predict(model, image, precision="bf16", diameter=40, tile=tile)
        np.testing.assert_allclose(tiled, whole, atol=BF16_TILES)


def test_auto_predicts_as_what_it_resolves_to(tiny_unet, sample, flags, caplog):
    image = sample[0]
    flags("avx512_bf16")
    with caplog.at_level("INFO", logger="napari_unet"):
        auto = predict(tiny_unet, image, precision="auto")
    assert "in bfloat16" in caplog.text
    np.testing.assert_array_equal(auto, predict(tiny_unet, image, precision="bf16"))
    flags()
    np.testing.assert_array_equal(
        predict(tiny_unet, image), predict(tiny_unet, image, precision="fp32")
    )


def test_a_bfloat16_finetune_keeps_float32_weights_and_files(sample, tmp_path):
    from safetensors.torch import load_file

    from napari_unet import load_model, save_model

    torch.manual_seed(0)
    model = UNet(base_channels=2, depth=2)
    before = [p.detach().clone() for p in model.parameters()]
    events = list(
        finetune(model, [sample], steps=3, batch_size=1, tile=16, seed=0, precision="bf16")
    )
    assert len(events) == 3 and all(np.isfinite(e.loss) for e in events)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert model.metadata["finetune"]["precision"] == "bf16"
    saved = save_model(model, tmp_path / "m.safetensors", model.metadata)
    assert {t.dtype for t in load_file(saved).values()} == {torch.float32}
    assert load_model(saved).metadata["finetune"]["precision"] == "bf16"
    # the same run in float32 gives losses close to it (the loss is float32 on both)
    torch.manual_seed(0)
    fp32 = UNet(base_channels=2, depth=2)
    losses = [
        e.loss
        for e in finetune(fp32, [sample], steps=3, batch_size=1, tile=16, seed=0, precision="fp32")
    ]
    np.testing.assert_allclose([e.loss for e in events], losses, rtol=0.05)
    assert fp32.metadata["finetune"]["precision"] == "fp32"


def test_auto_finetune_records_what_ran(sample):
    model = UNet(base_channels=2, depth=2)
    list(finetune(model, [sample], steps=1, batch_size=1, tile=16))
    assert model.metadata["finetune"]["precision"] == resolve_precision("auto", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_runs_in_its_half_precision(sample):
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert resolve_precision("auto", "cuda") == expected
    assert resolve_precision("fp16", "cuda") == "fp16"
    model = UNet(base_channels=2, depth=2)
    for precision in ("auto", "fp16"):
        list(
            finetune(
                model, [sample], steps=2, batch_size=1, tile=16, device="cuda", precision=precision
            )
        )
        assert all(p.dtype == torch.float32 for p in model.parameters())
    image = sample[0]
    fp32 = predict(model, image, device="cuda", precision="fp32")
    half = predict(model, image, device="cuda", precision="auto")
    assert np.abs(half - fp32).max() < BF16_VS_FP32


def test_cli_precision_predicts_trains_and_records_what_ran(tmp_path, sample, caplog):
    import tifffile

    from napari_unet import load_model, save_model
    from napari_unet.cli import main

    image, labels = tmp_path / "im.tif", tmp_path / "lab.tif"
    tifffile.imwrite(image, sample[0])
    tifffile.imwrite(labels, sample[1])
    torch.manual_seed(0)
    model_file = save_model(UNet(base_channels=4, depth=3), tmp_path / "m.safetensors")
    predicted = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        args = ["predict", str(image), "--model", str(model_file), "--probabilities"]
        with caplog.at_level("INFO", logger="napari_unet"):
            assert main([*args, "--precision", precision, "--out", str(out)]) == 0
        assert {"fp32": "in float32", "bf16": "in bfloat16"}[precision] in caplog.text
        predicted[precision] = tifffile.imread(out / "im_probabilities.tif")
    direct = predict(load_model(model_file), sample[0], precision="bf16")
    np.testing.assert_allclose(predicted["bf16"], direct, atol=1e-6)
    assert np.abs(predicted["bf16"] - predicted["fp32"]).max() > 0
    out = tmp_path / "tuned.safetensors"
    train = ["train", "--images", str(image), "--labels", str(labels), "--steps", "2"]
    train += ["--model", "new", "--base-channels", "2", "--tile", "16", "--batch-size", "1"]
    assert main([*train, "--precision", "bf16", "--out", str(out)]) == 0
    assert load_model(out).metadata["finetune"]["precision"] == "bf16"


def test_cli_bad_precision_is_one_line_and_exit_1(capsys):
    from napari_unet.cli import main

    for value in ("half", "fp16", "3"):
        with pytest.raises(SystemExit) as exit_:
            main(["predict", "missing.tif", "--out", "o", "--precision", value])
        assert exit_.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--precision" in err[0] and "'bf16'" in err[0], err


def test_blocks_of_a_large_plane_run_at_the_precision_asked(bundled_crop):
    """The distributed path's blocks (and the in-process stream of the Predict dock's large
    images) take the precision down to the tiles: bfloat16 blocks equal bfloat16 ``predict``."""
    from napari_unet.core.large.regions import PlaneStream

    model, image, fp32 = bundled_crop
    whole = predict(model, image, precision="bf16", diameter=40)
    stream = PlaneStream(model, image, step=96, sample_block=96, diameter=40, precision="bf16")
    prob = np.full(image.shape, np.nan, np.float32)
    for event in stream.run(range(len(stream.blocks))):
        if hasattr(event, "probabilities"):
            prob[event.region] = event.probabilities
    assert len(stream.blocks) == 4
    # a small plane: every block in the normalisation sample, as predict normalises
    np.testing.assert_allclose(prob, whole, atol=BF16_TILES)
    assert np.abs(prob - fp32).max() > 0
    with pytest.raises(ValueError, match="precision must be one of"):
        PlaneStream(model, image, step=96, precision="half")
