"""Blocks on the pooling grid, cells across seams, OME-Zarr, and the dask.distributed path
(a LocalCluster of 2 single-threaded workers, started once for the module)."""

from __future__ import annotations

import os
import re
import signal
import time

import numpy as np
import pytest
import tifffile

pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from napari_unet import load_bundled, predict, to_instances  # noqa: E402
from napari_unet.cli import main  # noqa: E402
from napari_unet.core.formats.io import read_pixel_size  # noqa: E402
from napari_unet.core.formats.zarrio import (  # noqa: E402
    create_multiscale,
    inspect_image,
    is_complete_output,
    write_tiff_bands,
)
from napari_unet.core.large.blocks import (  # noqa: E402
    estimate_normalisation,
    mirror_indices,
    plan_blocks,
    predict_block,
)
from napari_unet.core.metrics import match_counts  # noqa: E402

INSTANCE = {"threshold": 0.5, "min_size": 16, "expand": 1}
BLOCK, HALO = 128, 128


@pytest.fixture(scope="module")
def client():
    from napari_unet.core.large.distributed import connect

    with connect(workers=2, memory_limit="2GiB") as client:
        yield client


@pytest.fixture(scope="module")
def bundled():
    return load_bundled()


@pytest.fixture(scope="module")
def whole(whole_sample, bundled):
    """In-process probabilities and labels of a (384, 384) crop of the sample."""
    image = whole_sample[0][:384, :384]
    prob = predict(bundled, image)
    return image, prob, to_instances(prob, **INSTANCE)


@pytest.fixture(scope="module")
def large_run(client, bundled, whole, tmp_path_factory):
    """The crop segmented block by block on the cluster (9 blocks)."""
    from napari_unet.core.large.distributed import segment_large, share_model

    name = share_model(client, bundled)
    path = tmp_path_factory.mktemp("large") / "cells.ome.zarr"
    result = segment_large(
        client,
        name,
        bundled,
        whole[0],
        path,
        block=BLOCK,
        halo=HALO,
        instance=INSTANCE,
        pixel_size=(0.5, 0.5),
    )
    return name, result, zarr.open_array(str(path), path="0", mode="r")[:]


def test_mirror_indices_match_numpy_symmetric_padding():
    for length in (1, 3, 20):
        for start, stop in ((0, 3), (-7, 9), (-50, 60), (3, 70)):
            before, after = max(0, -start), max(0, stop - length)
            padded = np.pad(np.arange(length), (before, after), mode="symmetric")
            expected = padded[start + before : stop + before]
            assert (mirror_indices(start, stop, length) == expected).all()


def test_blocks_equal_whole_image_prediction(tiny_unet, rng):
    image = rng.integers(0, 4000, (203, 150)).astype(np.uint16)
    blocks = plan_blocks(image.shape, tiny_unet, 64)
    assert all(b.inner[a].start % tiny_unet.multiple == 0 for b in blocks for a in (0, 1))
    norm = estimate_normalisation(image, blocks)
    assert (norm.blocks, norm.stride) == (len(blocks), (1, 1))  # small: every block, exact
    out = np.zeros(image.shape, np.float32)
    for block in blocks:
        out[block.inner] = predict_block(tiny_unet, image, block, norm)
    assert np.abs(out - predict(tiny_unet, image)).max() <= 1e-5


def test_normalisation_sample_is_a_lattice_within_its_budget(tiny_unet, rng):
    image = rng.integers(0, 4000, (256, 256)).astype(np.uint16)
    blocks = plan_blocks(image.shape, tiny_unet, 32)  # 8 x 8 blocks of 32 x 32
    norm = estimate_normalisation(image, blocks, values=16 * 32 * 32)
    assert (norm.total, norm.blocks, norm.stride) == (64, 16, (2, 2))
    chosen = [b for b in blocks if b.inner[0].start % 64 == 0 and b.inner[1].start % 64 == 0]
    sample = np.concatenate([image[b.inner].ravel() for b in chosen])
    assert norm.lo[0] == np.percentile(sample, 1.0)
    assert norm.as_dict()["sampled_blocks"] == 16


def test_normalisation_sample_spreads_over_columns_when_the_stride_divides_them(tiny_unet):
    from napari_unet.core.large.blocks import sample_blocks

    blocks = plan_blocks((128, 128), tiny_unet, 32)  # 4 x 4 blocks; 4 fit the budget
    chosen, stride = sample_blocks(blocks, values=4 * 32 * 32)
    assert stride == (2, 2) and len(chosen) == 4
    assert {b.inner[1].start for b in chosen} == {0, 64}  # not only the left column
    assert {b.inner[0].start for b in chosen} == {0, 64}


def test_large_image_on_cluster_equals_in_process(large_run, whole, client):
    name, result, labels = large_run
    _, _, reference = whole
    matched, n_ref, n_out = match_counts(reference, labels, 0.99)
    assert n_ref > 15 and matched == n_ref == n_out  # every cell, none split or duplicated
    assert result.cells == n_ref and result.blocks == 9 and result.cut == 0
    assert sorted(np.unique(labels))[1:] == list(range(1, n_ref + 1))
    loads = client.run(lambda dask_worker: dask_worker.plugins[name].loads)
    assert set(loads.values()) == {1}  # the model once per worker, not per task


def test_non_square_blocks_each_own_their_chunks(client, large_run, bundled, whole, tmp_path):
    from napari_unet.core.large.distributed import segment_large

    name = large_run[0]
    image = whole[0][:200, :330]  # blocks of 80 rows and 96 columns
    expected = to_instances(predict(bundled, image), **INSTANCE)
    path = tmp_path / "wide.ome.zarr"
    segment_large(client, name, bundled, image, path, block=96, halo=HALO, instance=INSTANCE)
    level0 = zarr.open_array(str(path), path="0", mode="r")
    for block in plan_blocks(image.shape, bundled, 96):  # no chunk is shared by two blocks
        assert all(s.start % c == 0 for s, c in zip(block.inner, level0.chunks, strict=True))
    matched, n_ref, n_out = match_counts(expected, level0[:], 0.99)
    assert n_ref > 10 and matched == n_ref == n_out


def test_cluster_and_plane_stream_normalise_alike_whatever_the_block(
    client, large_run, bundled, whole, tmp_path
):
    from napari_unet.core.large.distributed import segment_large
    from napari_unet.core.large.regions import PlaneStream

    image, sample = whole[0][:256, :256], {"sample_block": 128, "sample_values": 2 * 128 * 128}
    result = segment_large(
        client, large_run[0], bundled, image, tmp_path / "n.ome.zarr", block=96, **sample
    )
    stream = PlaneStream(bundled, image, step=64, **sample)
    list(stream.run([]))  # estimates the normalisation only
    assert stream.norm == result.normalisation  # one lattice, not the task blocks'
    assert stream.norm.blocks < stream.norm.total  # a sample, not the whole plane


def test_workers_hold_counts_not_blocks_whatever_the_order(
    client, large_run, bundled, whole, tmp_path
):
    """Probabilities and cells go through the scratch folder: a worker holds a few counts, not
    blocks' results (they piled up with the number of blocks: most predictions ran first)."""
    from distributed import WorkerPlugin

    from napari_unet.core.large.distributed import segment_large

    class Held(WorkerPlugin):  # the bytes of task results a worker holds, at their most
        name = "napari-unet-test-held"

        def setup(self, worker):
            self.worker, self.peak = worker, 0

        def transition(self, key, start, finish, **kwargs):
            self.peak = max(self.peak, self.worker.state.nbytes)

    image = whole[0]  # 9 blocks
    create_multiscale(tmp_path / "in.ome.zarr", image.shape, (128, 128), image.dtype)["0"][:] = (
        image
    )
    source = inspect_image(tmp_path / "in.ome.zarr")  # read by the tasks, not sent to them
    client.register_plugin(Held(), name=Held.name)
    try:
        result = segment_large(
            client, large_run[0], bundled, source, tmp_path / "out.ome.zarr", block=BLOCK
        )
        peaks = client.run(lambda dask_worker: dask_worker.plugins[Held.name].peak)
    finally:
        client.unregister_worker_plugin(Held.name)
    assert result.blocks == 9
    assert 0 < max(peaks.values()) < BLOCK * BLOCK  # bytes: a quarter of one block's probabilities


def test_the_client_is_not_the_process_default(client):
    from concurrent.futures import ThreadPoolExecutor

    from distributed import default_client

    with ThreadPoolExecutor(1) as pool:  # e.g. napari slicing a dask layer in its own thread
        assert isinstance(pool.submit(default_client).exception(), ValueError)


def test_label_image_is_complete_only_once_marked(tmp_path):
    from napari_unet.core.formats.zarrio import mark_complete

    root = create_multiscale(tmp_path / "x.ome.zarr", (40, 60), (32, 32), np.uint32)
    assert not is_complete_output(tmp_path / "x.ome.zarr")  # as an interrupted job leaves it
    mark_complete(root, cells=0)
    assert is_complete_output(tmp_path / "x.ome.zarr")


def test_folders_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    import subprocess
    import sys

    from napari_unet.core.formats.io import work_folder
    from napari_unet.core.formats.zarrio import atomic_folder

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    left = [
        tmp_path / f".x_labels.ome.napari-unet-{dead}-k3j9.zarr.part",  # the new output
        tmp_path / f".x_labels.ome.napari-unet-{dead}-old-k3j9.zarr.part",  # the one replaced
        tmp_path / f".napari-unet-work-{dead}-k3j9",  # provisional ids
    ]
    old = time.time() - 120
    for folder in left:
        (folder / "0").mkdir(parents=True)
        os.utime(folder, (old, old))
    with atomic_folder(tmp_path / "x_labels.ome.zarr") as tmp, work_folder(tmp_path):
        (tmp / "y").touch()
    assert sorted(os.listdir(tmp_path)) == ["x_labels.ome.zarr"]


def test_atomic_folder_keeps_the_old_output_when_the_new_cannot_take_its_place(
    tmp_path, monkeypatch
):
    from napari_unet.core.formats.zarrio import atomic_folder

    path = tmp_path / "x_labels.ome.zarr"
    path.mkdir()
    (path / "old").touch()
    real = os.replace

    def failing(src, dst):  # the new output cannot take the old one's place
        if os.fspath(dst) == os.fspath(path) and os.path.basename(src) != "x":
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="No space"), atomic_folder(path) as tmp:
        (tmp / "new").touch()
    monkeypatch.setattr(os, "replace", real)
    assert os.listdir(tmp_path) == ["x_labels.ome.zarr"] and os.listdir(path) == ["old"]


def test_large_output_is_ome_zarr_labels_with_pixel_size(large_run):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    _, result, labels = large_run
    assert is_complete_output(result.labels)
    node = next(iter(Reader(parse_url(str(result.labels)))()))
    assert isinstance(node.specs[0], Label)
    assert [d.shape for d in node.data] == [(384, 384), (192, 192), (96, 96)]
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[0.5, 0.5], [1.0, 1.0], [2.0, 2.0]]
    assert (np.asarray(node.data[1]) == labels[::2, ::2]).all()
    stored = zarr.open_group(str(result.labels), mode="r").attrs["napari-unet"]
    assert stored["normalisation"]["lo"] == [result.normalisation.lo[0]]
    assert stored["cells"] == result.cells


def test_job_survives_a_killed_worker(client, bundled, whole, large_run, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from distributed import Event

    from napari_unet.core.large import distributed as dist

    name, _, expected = large_run
    path = tmp_path / "again.ome.zarr"
    pids = client.run(os.getpid)
    gate = Event("napari-unet-test-gate", client=client)
    real = dist._paint_task

    def paused(*args):  # no block is labelled until the test has killed a worker
        Event("napari-unet-test-gate").wait(60)
        return real(*args)

    dist._paint_task = paused
    try:
        with ThreadPoolExecutor(1) as pool:
            job = pool.submit(
                dist.segment_large,
                client,
                name,
                bundled,
                whole[0],
                path,
                block=BLOCK,
                halo=HALO,
                instance=INSTANCE,
            )
            while (
                client.run_on_scheduler(
                    lambda dask_scheduler: sum("paused" in str(k) for k in dask_scheduler.tasks)
                )
                == 0
            ):
                assert not job.done(), job.exception()
            os.kill(next(iter(pids.values())), signal.SIGKILL)  # in the middle of the job
            gate.set()
            job.result(timeout=120)
    finally:
        dist._paint_task = real
        gate.set()
    assert (zarr.open_array(str(path), path="0", mode="r")[:] == expected).all()


def test_inspect_reads_tiff_and_ome_zarr_lazily_with_pixel_size(tmp_path, rng):
    image = rng.integers(0, 4000, (300, 270)).astype(np.uint16)
    tifffile.imwrite(
        tmp_path / "a.tif",
        image,
        tile=(64, 64),
        resolution=(1e4 / 0.65,) * 2,
        resolutionunit="CENTIMETER",
    )
    info = inspect_image(tmp_path / "a.tif")
    assert (info.shape, info.pixel_size) == ((300, 270), pytest.approx((0.65, 0.65)))
    with info.open() as plane:
        assert (plane[10:50, 3:9] == image[10:50, 3:9]).all()
    root = create_multiscale(
        tmp_path / "b.ome.zarr",
        image.shape,
        (128, 128),
        np.uint16,
        pixel_size=info.pixel_size,
        unit="micrometer",
    )
    root["0"][:] = image
    info = inspect_image(tmp_path / "b.ome.zarr")
    assert (info.shape, info.pixel_size) == ((300, 270), pytest.approx((0.65, 0.65)))
    write_tiff_bands(tmp_path / "c.tif", root["0"], pixel_size=info.pixel_size)
    assert (tifffile.imread(tmp_path / "c.tif") == image).all()
    assert inspect_image(tmp_path / "c.tif").pixel_size == pytest.approx((0.65, 0.65))
    assert read_pixel_size(tmp_path / "c.tif") == pytest.approx((0.65, 0.65))
    tifffile.imwrite(tmp_path / "dpi.tif", image, resolution=(72, 72), resolutionunit="INCH")
    assert inspect_image(tmp_path / "dpi.tif").pixel_size is None  # desktop DPI, as io reads it


def test_inspect_takes_the_plane_of_a_5d_ome_zarr_with_channels(tmp_path, rng):
    image = rng.integers(0, 255, (1, 3, 1, 50, 60)).astype(np.uint8)  # (t, c, z, y, x)
    root = zarr.open_group(str(tmp_path / "rgb.ome.zarr"), mode="w", zarr_format=2)
    root.create_array("0", data=image, chunks=(1, 1, 1, 32, 32))
    axes = [
        {"name": n, "type": t}
        for n, t in zip("tczyx", ["time", "channel"] + ["space"] * 3, strict=True)
    ]
    axes[-1]["unit"] = axes[-2]["unit"] = "nanometer"
    scale = [{"type": "scale", "scale": [1, 1, 1, 650, 650]}]
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": scale}],
        }
    ]
    info = inspect_image(tmp_path / "rgb.ome.zarr")
    assert (info.shape, info.pixel_size) == ((50, 60, 3), pytest.approx((0.65, 0.65)))
    with info.open() as plane:
        assert (plane[5:9, 7:20] == np.moveaxis(image[0, :, 0], 0, -1)[5:9, 7:20]).all()


def test_cli_on_cluster_resumes_and_reports_failures(client, whole_sample, tmp_path, capsys):
    image = whole_sample[0]
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    size = {"PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65}  # OME-XML, in um
    tifffile.imwrite(folder / "a.ome.tif", image[:200, :200], metadata=size)
    tifffile.imwrite(folder / "b.tif", image[200:, 100:])
    tifffile.imwrite(folder / "c.tif", np.stack([image[:96, :96]] * 3, -1))  # RGB: grey
    (folder / "broken.tif").write_bytes(b"not a tiff")
    address = client.scheduler.address
    argv = ["predict", str(folder), "--out", str(out), "--scheduler", address, "--block", "384"]
    argv += ["--min-size", str(INSTANCE["min_size"])]  # as the in-process labels below
    assert main([*argv, "--rois"]) == 1
    err = capsys.readouterr().err
    assert "broken.tif" in err and "2 of 4 image(s) failed" in err
    assert "b.tif: --rois/--measurements need the labels in memory" in err  # b: block by block
    names = ["a_labels.tif", "a_rois.zip", "c_labels.tif", "c_rois.zip"]
    assert sorted(p.name for p in out.iterdir()) == names
    expected = to_instances(predict(load_bundled(), image[:200, :200]), **INSTANCE)
    assert (tifffile.imread(out / "a_labels.tif") == expected).all()
    assert read_pixel_size(out / "a_labels.tif") == pytest.approx((0.65, 0.65))
    before = (out / "a_labels.tif").stat().st_mtime_ns
    (folder / "broken.tif").unlink()
    assert main(argv) == 0
    assert (out / "a_labels.tif").stat().st_mtime_ns == before  # done, skipped
    assert is_complete_output(out / "b_labels.tif")
    assert "nothing to do" in (main(argv) == 0 and capsys.readouterr().out)
    assert main([*argv[:3], str(folder), "--scheduler", address]) == 0  # --out is the input:
    assert not list(folder.glob("*_labels_labels.tif"))  # its outputs are not segmented again


def test_cli_large_tiff_and_zarr_inputs_give_tiff_and_ome_zarr(client, large_run, whole, tmp_path):
    _, result, expected = large_run
    tifffile.imwrite(tmp_path / "big.tif", whole[0])
    address = client.scheduler.address
    argv = ["--block", str(BLOCK), "--halo", str(HALO), "--scheduler", address]
    argv += ["--min-size", str(INSTANCE["min_size"])]  # as the cluster run's labels
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "big.tif"), "--out", str(out), *argv]) == 0
    assert (tifffile.imread(out / "big_labels.tif") == expected).all()
    root = create_multiscale(tmp_path / "img.ome.zarr", whole[0].shape, (256, 256), np.uint16)
    root["0"][:] = whole[0]
    assert main(["predict", str(tmp_path / "img.ome.zarr"), "--out", str(out), *argv]) == 0
    labels = zarr.open_array(str(out / "img_labels.ome.zarr"), path="0", mode="r")[:]
    assert (labels == expected).all()
    before = (out / "img_labels.ome.zarr" / ".zattrs").stat().st_mtime_ns
    zarr_argv = ["predict", str(tmp_path / "img.ome.zarr"), "--out", str(out), *argv]
    assert main(zarr_argv) == 0  # the same model and options: kept
    assert (out / "img_labels.ome.zarr" / ".zattrs").stat().st_mtime_ns == before
    assert main([*zarr_argv, "--threshold", "0.6"]) == 0  # other options: redone
    stored = zarr.open_group(str(out / "img_labels.ome.zarr"), mode="r").attrs["napari-unet"]
    assert stored["instances"]["threshold"] == 0.6 and len(stored["model_sha256"]) == 64


def test_cli_and_distributed_path_run_without_napari_or_qt():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for m in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui'):\n"
        "    sys.modules[m] = None  # importing any of them now fails\n"
        "import napari_unet._batch, napari_unet.core.large.distributed\n"
        "import napari_unet.core.formats.zarrio\n"
        "from napari_unet.cli import main\n"
        "try:\n"
        "    main(['predict', '--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
    )
    run = [sys.executable, "-c", code]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--scheduler" in done.stdout


def test_cli_writes_probabilities_on_cluster_as_in_process(
    client, bundled, whole, large_run, tmp_path
):
    image, prob, _ = whole
    tifffile.imwrite(tmp_path / "big.tif", image)  # 9 blocks
    tifffile.imwrite(tmp_path / "small.tif", image[:96, :96])  # one task
    size = {"pixel_size": (0.5, 0.5), "unit": "micrometer"}
    root = create_multiscale(
        tmp_path / "img.ome.zarr", image.shape, (256, 256), image.dtype, **size
    )
    root["0"][:] = image
    out = tmp_path / "out"
    inputs = [str(tmp_path / n) for n in ("big.tif", "small.tif", "img.ome.zarr")]
    argv = ["predict", *inputs, "--out", str(out), "--probabilities"]
    argv += ["--block", str(BLOCK), "--halo", str(HALO), "--scheduler", client.scheduler.address]
    argv += ["--min-size", str(INSTANCE["min_size"])]  # as the cluster run's labels
    assert main(argv) == 0
    big = tifffile.imread(out / "big_probabilities.tif")
    assert big.dtype == np.float32 and np.abs(big - prob).max() <= 1e-5
    small = tifffile.imread(out / "small_probabilities.tif")
    assert np.abs(small - predict(bundled, image[:96, :96])).max() <= 1e-5
    path = out / "img_probabilities.ome.zarr"
    assert is_complete_output(path) and is_complete_output(out / "img_labels.ome.zarr")
    labels = zarr.open_array(str(out / "img_labels.ome.zarr"), path="0", mode="r")[:]
    assert (labels == large_run[2]).all()  # the labels as without --probabilities
    group = zarr.open_group(str(path), mode="r")
    assert np.abs(group["0"][:] - prob).max() <= 1e-5
    assert (group["1"][:] == group["0"][::2, ::2]).all()  # a pyramid, subsampled
    assert "image-label" not in group.attrs  # an image, not labels
    (multiscale,) = group.attrs["multiscales"]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.5]
    assert inspect_image(path).pixel_size == pytest.approx((0.5, 0.5))
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(argv) == 0  # complete: skipped
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before
    import shutil

    shutil.rmtree(path)
    shutil.rmtree(out / "img_labels.ome.zarr")
    assert main([*argv, "--threshold", "0.6"]) == 0  # missing outputs made again
    stored = zarr.open_group(str(path), mode="r").attrs["napari-unet"]
    assert stored["instances"]["threshold"] == 0.6


def model_plugins(client) -> set[str]:
    """Names of the model plugins the scheduler and every worker of ``client`` hold."""
    names = set(
        client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
    )
    for held in client.run(lambda dask_worker: list(dask_worker.plugins)).values():
        names.update(held)
    return {n for n in names if n.startswith("napari-unet-model-")}


def test_a_cluster_reached_by_its_address_keeps_no_model_after_the_job(
    client, bundled, large_run, tiny_unet, rng, tmp_path
):
    from napari_unet.core.large.distributed import shared_model
    from napari_unet.core.network.store import save_model

    before = model_plugins(client)  # the bundled model of the module's jobs: kept
    with shared_model(client, bundled, unregister=True) as name:
        assert name not in before and model_plugins(client) == before | {name}
    assert model_plugins(client) == before  # its own copy is gone, the others' stays
    tifffile.imwrite(tmp_path / "small.tif", rng.integers(0, 255, (64, 64), dtype=np.uint8))
    argv = ["predict", str(tmp_path / "small.tif"), "--out", str(tmp_path / "out")]
    argv += ["--model", str(save_model(tiny_unet, tmp_path / "tiny.safetensors"))]
    assert main([*argv, "--scheduler", client.scheduler.address]) == 0
    assert model_plugins(client) == before


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--workers", "1000"], r"--workers 1000: this machine has \d+ cores"),
        (["--workers", "1", "--block", "1"], "--block 1: blocks must be at least 64 px"),
    ],
)
def test_worker_count_and_block_size_are_bounded_before_any_cluster(
    tmp_path, whole_sample, capsys, option, message
):
    image, out = tmp_path / "cells.tif", tmp_path / "out"
    tifffile.imwrite(image, whole_sample[0][:64, :64])
    start = time.perf_counter()
    assert main(["predict", str(image), "--out", str(out), *option]) == 1
    assert re.search(message, capsys.readouterr().err)
    assert time.perf_counter() - start < 10 and not out.exists()


def test_a_missing_chunk_or_malformed_metadata_is_refused_in_one_line(tmp_path, rng, capsys):
    import json

    image = rng.integers(1, 4000, (300, 270)).astype(np.uint16)
    path = tmp_path / "b.ome.zarr"
    create_multiscale(path, image.shape, (128, 128), np.uint16)["0"][:] = image
    assert inspect_image(path).shape == (300, 270)
    os.remove(path / "0" / "1" / "1")  # one chunk lost in a copy: zarr would read zeros there
    with pytest.raises(ValueError, match="1 of its 9 chunks are missing"):
        inspect_image(path)
    out = tmp_path / "out"
    assert main(["predict", str(path), "--out", str(out), "--workers", "1"]) == 1
    assert "chunks are missing" in capsys.readouterr().err
    attrs = json.loads((path / ".zattrs").read_text())
    for damage, key in (
        (lambda a: a["multiscales"][0].pop("datasets"), "KeyError"),
        (lambda a: a["multiscales"][0]["datasets"].clear(), "IndexError"),
        (lambda a: a["multiscales"][0]["datasets"][0].update(path="9"), "KeyError"),
    ):
        broken = json.loads(json.dumps(attrs))
        damage(broken)
        (path / ".zattrs").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=f"malformed OME-Zarr metadata \\({key}"):
            inspect_image(path)


def test_a_successful_workers_run_prints_no_dask_logging(tmp_path, whole_sample, tiny_unet):
    import subprocess
    import sys

    from napari_unet import save_model

    image, out = tmp_path / "cells.tif", tmp_path / "out"
    tifffile.imwrite(image, whole_sample[0][:96, :96])
    model = save_model(tiny_unet, tmp_path / "m.safetensors")
    code = "from napari_unet.cli import main; raise SystemExit(main())"
    argv = ["predict", str(image), "--out", str(out), "--workers", "1", "--model", str(model)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    run = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "distributed." not in run.stderr and "Lost all workers" not in run.stderr, run.stderr
    assert (out / "cells_labels.tif").exists()


def test_a_workers_rerun_with_another_option_redoes_a_tiff_output(client, whole_sample, tmp_path):
    from napari_unet.core.formats.zarrio import read_record

    image, out = tmp_path / "a.tif", tmp_path / "out"
    tifffile.imwrite(image, whole_sample[0][:128, :128])
    argv = ["predict", str(image), "--out", str(out), "--scheduler", client.scheduler.address]
    assert main(argv) == 0
    labels = out / "a_labels.tif"
    first = labels.stat().st_mtime_ns
    assert read_record(labels)["instances"]["threshold"] == 0.5
    assert main(argv) == 0 and labels.stat().st_mtime_ns == first  # the same: kept
    assert main([*argv, "--threshold", "0.6"]) == 0
    assert labels.stat().st_mtime_ns != first  # another option: redone, as in-process
    assert read_record(labels)["instances"]["threshold"] == 0.6


def test_a_rerun_with_nothing_large_removes_a_killed_runs_work_folder_and_a_failed_run_its_out(
    client, whole_sample, tmp_path, capsys
):
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    image, out = tmp_path / "a.tif", tmp_path / "out"
    tifffile.imwrite(image, whole_sample[0][:96, :96])
    address = ["--scheduler", client.scheduler.address]
    assert main(["predict", str(image), "--out", str(out), *address]) == 0
    left = out / f".napari-unet-work-{dead}-k3j9"  # a killed large run's scratch (12 MB)
    (left / "labels.ome.zarr").mkdir(parents=True)
    old = time.time() - 120
    os.utime(left, (old, old))
    assert main(["predict", str(image), "--out", str(out), *address]) == 0  # nothing to do
    assert not left.exists()
    broken, empty = tmp_path / "broken.tif", tmp_path / "new" / "out"
    broken.write_bytes(b"not a tiff")
    assert main(["predict", str(broken), "--out", str(empty), *address]) == 1
    assert not empty.exists() and not empty.parent.exists()  # every input failed: no folders


def test_nan_in_an_ome_zarr_input_is_named_before_the_model_runs(tmp_path, rng, tiny_unet):
    from napari_unet.core.large.blocks import estimate_normalisation, plan_blocks

    image = rng.random((300, 270)).astype(np.float32)
    image[200, 10] = np.nan
    with pytest.raises(ValueError, match=r"block at \(y, x\) = \(.*\) holds 1 NaN"):
        estimate_normalisation(image, plan_blocks(image.shape, tiny_unet, 128))


# ------------------------------------------------------- a model that works at one cell size
DIAMETER = 30.0  # px: the sample's cells are about 34 px across; the model says 40 (x 1.33)


@pytest.fixture(scope="module")
def sized():
    """The bundled model, saying it works at cells 40 px across."""
    model = load_bundled()
    model.metadata = {**model.metadata, "diameter": 40.0}
    return model


@pytest.mark.parametrize("diameter", [DIAMETER, 60.0])  # enlarged x 1.33, shrunk x 0.67
def test_resampled_blocks_equal_in_process_prediction_at_that_diameter(
    sized, whole_sample, diameter
):
    from napari_unet.core.large.blocks import plane_resampling

    image = whole_sample[0][:256, :320]
    blocks = plan_blocks(image.shape, sized, 128)  # 2 x 3 blocks, resampled one by one
    norm = estimate_normalisation(image, blocks)  # of the original image, every block
    grid = plane_resampling(sized, image, diameter)
    assert grid.resampled and (grid.diameter, grid.source) == (diameter, "given")
    out = np.zeros(image.shape, np.float32)
    for block in blocks:
        out[block.inner] = predict_block(sized, image, block, norm, resampling=grid)
    # each block resamples exactly the pixels the whole-image resampling gives it (the same
    # anti-aliasing, interpolation and mirrored borders), so no seam: float rounding only
    assert np.abs(out - predict(sized, image, diameter=diameter)).max() <= 1e-5


def test_cluster_at_a_diameter_labels_as_in_process(client, sized, whole_sample, tmp_path):
    from napari_unet.core.formats.zarrio import read_record
    from napari_unet.core.large.distributed import segment_large, share_model

    image = whole_sample[0][:384, :384]
    whole = predict(sized, image, diameter=DIAMETER)
    # INSTANCE leaves the cores' size open: sized by the diameter, in-process and on blocks
    reference = to_instances(whole, **INSTANCE)
    name = share_model(client, sized)
    path, probs = tmp_path / "cells.ome.zarr", tmp_path / "prob.ome.zarr"
    options = {"block": BLOCK, "halo": HALO, "instance": INSTANCE, "probabilities": probs}
    result = segment_large(client, name, sized, image, path, diameter=DIAMETER, **options)
    assert result.blocks == 9 and result.resampling.shape == (512, 512)
    prob = zarr.open_array(str(probs), path="0", mode="r")[:]
    assert np.abs(prob - whole).max() <= 1e-5
    labels = zarr.open_array(str(path), path="0", mode="r")[:]
    matched, n_ref, n_out = match_counts(reference, labels, 0.99)
    assert n_ref > 10 and matched == n_ref == n_out and result.cut == 0
    record = read_record(path)
    assert (record["diameter"], record["diameter_source"]) == (DIAMETER, "given")
    assert record["instances"]["min_core"] == result.instance["min_core"] == 35  # 5 % of 30 px


def test_cli_on_cluster_resamples_as_in_process_and_records_the_diameter(
    client, sized, whole_sample, tmp_path, capsys, monkeypatch
):
    from napari_unet.core.formats.zarrio import read_record
    from napari_unet.core.network.store import save_model
    from napari_unet.core.prediction import predict as predict_module
    from napari_unet.core.prediction.diameter import DiameterEstimate

    model = save_model(sized, tmp_path / "sized.safetensors", sized.metadata)
    tifffile.imwrite(tmp_path / "big.tif", whole_sample[0][:384, :384])
    common = ["predict", str(tmp_path / "big.tif"), "--model", str(model)]
    alone, spread = tmp_path / "alone", tmp_path / "spread"
    assert main([*common, "--out", str(alone), "--diameter", str(DIAMETER)]) == 0
    capsys.readouterr()
    dask = ["--scheduler", client.scheduler.address, "--block", str(BLOCK), "--halo", str(HALO)]
    assert main([*common, "--out", str(spread), "--diameter", str(DIAMETER), *dask]) == 0
    assert f"diameter {DIAMETER:.1f} px (given)" in capsys.readouterr().out
    reference = tifffile.imread(alone / "big_labels.tif")
    labels = tifffile.imread(spread / "big_labels.tif")
    matched, n_ref, n_out = match_counts(reference, labels, 0.99)
    assert n_ref > 10 and matched == n_ref == n_out
    record = read_record(spread / "big_labels.tif")
    assert (record["diameter"], record["diameter_asked"]) == (DIAMETER, DIAMETER)
    # no --diameter: a model trained at one size has it estimated on the image's central
    # region, before the graph runs (here by a stand-in: the scale search is tested elsewhere)
    seen = []

    def estimate(model, image, *, device=None, precision="auto"):
        seen.append(image.shape)
        return DiameterEstimate(diameter=DIAMETER, cells=9, confidence=0.9, tries=())

    monkeypatch.setattr(predict_module, "estimate_diameter", estimate)
    assert main([*common, "--out", str(tmp_path / "estimated"), *dask]) == 0
    assert f"diameter {DIAMETER:.1f} px (estimated)" in capsys.readouterr().out
    assert seen == [(384, 384)]  # the central region (all of this small image)
    record = read_record(tmp_path / "estimated" / "big_labels.tif")
    assert (record["diameter"], record["diameter_source"]) == (DIAMETER, "estimated")
    assert record["diameter_asked"] is None


def test_cli_on_cluster_sizes_cells_by_the_estimated_diameter_as_in_process(
    sized, whole_sample, tmp_path, capsys, monkeypatch
):
    """Without --diameter, the sizes left open (--min-size, the cores') follow the diameter
    estimated for each image, small (on a worker) or large (before the graph), as in-process;
    the outputs record the options so sized, and a rerun with the same inputs keeps them."""
    from distributed import LocalCluster

    from napari_unet.core.formats.zarrio import read_record
    from napari_unet.core.network.store import save_model
    from napari_unet.core.prediction import predict as predict_module
    from napari_unet.core.prediction.diameter import DiameterEstimate
    from napari_unet.core.prediction.instances import size_defaults
    from napari_unet.core.prediction.scale import sized_cells

    def estimate(model, image, *, device=None, precision="auto"):  # a stand-in (test_scale)
        return DiameterEstimate(diameter=DIAMETER, cells=9, confidence=0.9, tries=())

    monkeypatch.setattr(predict_module, "estimate_diameter", estimate)
    model = save_model(sized, tmp_path / "sized.safetensors", sized.metadata)
    tifffile.imwrite(tmp_path / "big.tif", whole_sample[0][:384, :384])  # 9 blocks
    tifffile.imwrite(tmp_path / "small.tif", whole_sample[0][:128, 128:256])  # one task
    common = ["predict", str(tmp_path / "big.tif"), str(tmp_path / "small.tif")]
    common += ["--model", str(model)]
    alone, spread = tmp_path / "alone", tmp_path / "spread"
    assert main([*common, "--out", str(alone)]) == 0
    capsys.readouterr()
    size = size_defaults(sized_cells(DIAMETER))[0]  # 5 % of a 30 px disc: 35 px
    # workers in this process, so that the stand-in estimates a small image's diameter too
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        dask = ["--scheduler", cluster.scheduler_address, "--block", str(BLOCK)]
        argv = [*common, "--out", str(spread), *dask, "--halo", str(HALO)]
        assert main(argv) == 0
        said = capsys.readouterr().out
        assert said.count(f"diameter {DIAMETER:.1f} px (estimated)") == 2, said
        for name in ("big", "small"):
            reference = tifffile.imread(alone / f"{name}_labels.tif")
            labels = tifffile.imread(spread / f"{name}_labels.tif")
            matched, n_ref, n_out = match_counts(reference, labels, 0.99)
            assert n_ref > 5 and matched == n_ref == n_out, name
            record = read_record(spread / f"{name}_labels.tif")
            assert record["instances"] == read_record(alone / f"{name}_labels.tif")["instances"]
            assert record["instances"]["min_size"] == record["instances"]["min_core"] == size
            assert (record["diameter"], record["diameter_source"]) == (DIAMETER, "estimated")
            assert record["instances_asked"]["min_size"] is None  # automatic, as asked
        before = {p: p.stat().st_mtime_ns for p in spread.iterdir()}
        assert main(argv) == 0  # the same inputs: the same diameter and sizes, kept
        assert "nothing to do" in capsys.readouterr().out
        assert {p: p.stat().st_mtime_ns for p in spread.iterdir()} == before
        assert main([*argv, "--min-size", "0"]) == 0  # asked otherwise: redone
    for name in ("big", "small"):
        record = read_record(spread / f"{name}_labels.tif")
        assert (record["instances"]["min_size"], record["instances"]["min_core"]) == (0, size)
