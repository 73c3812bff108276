"""A large plane predicted region by region in this process (core.large.regions.PlaneStream)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet import load_bundled, predict, to_instances
from napari_unet.core.large.regions import BlockLabels, BlockProbabilities, PlaneStream
from napari_unet.core.metrics import match_counts

INSTANCE = {"threshold": 0.5, "min_size": 16, "expand": 1}


class Reads:
    """A plane that counts its reads and refuses to be read whole."""

    def __init__(self, image):
        self.image, self.shape, self.dtype, self.reads = image, image.shape, image.dtype, []

    def __getitem__(self, region):
        rows, cols = region[:2]
        if (rows.stop or self.shape[0]) - (rows.start or 0) >= self.shape[0] and (
            cols.stop or self.shape[1]
        ) - (cols.start or 0) >= self.shape[1]:
            raise AssertionError("the whole plane was read")
        self.reads.append(region)
        return self.image[region]


def test_regions_in_any_order_equal_whole_image_prediction_and_labels(whole_sample):
    model = load_bundled()
    image = whole_sample[0][:256, :512]
    source = Reads(image)
    stream = PlaneStream(  # a given diameter: nothing read to estimate it
        model, source, step=128, halo=128, instance=INSTANCE, sample_block=128, diameter=30
    )
    assert len(stream.blocks) == 8 and stream.chunks == (128, 128)  # sampled: every block
    prob = np.full(image.shape, np.nan, np.float32)
    labels = np.zeros(image.shape, np.uint32)
    painted = []
    first = stream.needed([0])  # what block 0's final labels need
    events = list(stream.run(stream.by_distance(first, (0, 0))))
    assert {e.index for e in events if isinstance(e, BlockProbabilities)} == first
    assert first == {0, 1, 2, 4, 5, 6}  # block 0, its neighbours, theirs (two halos)
    assert [e.index for e in events if isinstance(e, BlockLabels)] == [0, 4]  # the final ones
    rest = stream.run(range(len(stream.blocks)))
    for event in [*events, *rest]:
        if isinstance(event, BlockProbabilities):
            prob[event.region] = event.probabilities
        else:
            labels[event.region] = event.labels
            painted.append(event.index)
    assert sorted(painted) == list(range(8)) and stream.left == 0
    whole = predict(model, image, diameter=30)
    assert np.abs(prob - whole).max() <= 1e-5
    reference = to_instances(whole, **INSTANCE)
    matched, n_ref, n_out = match_counts(reference, labels, 0.99)
    assert n_ref > 10 and matched == n_ref == n_out and stream.cut == 0
    assert sorted(np.unique(labels))[1:] == list(range(1, stream.cells + 1))
    assert not stream._probs and not stream._owned  # nothing kept once all is done


@pytest.mark.parametrize(
    ("shape", "step", "interrupt"),
    [((300, 451), 96, False), ((257, 200, 3), 64, False), ((200, 260), 64, True)],
    ids=["odd-size", "rgb", "closed-then-resumed"],
)
def test_odd_planes_rgb_and_interrupted_runs_equal_predict(tiny_unet, rng, shape, step, interrupt):
    from itertools import islice

    from napari_unet.core.image import grey_if_rgb

    image = rng.integers(0, 4000, shape).astype(np.uint16)
    stream = PlaneStream(tiny_unet, image, step=step, halo=64, instance=INSTANCE)
    events = []
    if interrupt:  # closed between two yields, then resumed by a later run
        first = stream.run(range(len(stream.blocks)))
        events += islice(first, 5)
        first.close()
        assert 0 < len(stream.predicted) < len(stream.blocks)
    events += stream.run(range(len(stream.blocks)))
    prob = np.full(shape[:2], np.nan, np.float32)
    labels = np.zeros(shape[:2], np.uint32)
    painted = []
    for event in events:
        if isinstance(event, BlockProbabilities):
            prob[event.region] = event.probabilities
        else:
            labels[event.region] = event.labels
            painted.append(event.index)
    assert sorted(painted) == list(range(len(stream.blocks)))  # each block once
    assert sorted(stream.order) == list(range(len(stream.blocks)))
    whole = predict(tiny_unet, grey_if_rgb(image, tiny_unet.in_channels))
    assert np.abs(prob - whole).max() <= 1e-5
    assert sorted(np.unique(labels))[1:] == list(range(1, stream.cells + 1))  # ids unique
    assert stream.cells > 0


def test_regions_of_a_sized_model_are_resampled_and_placed_on_the_image(whole_sample):
    model = load_bundled()
    model.metadata = {**model.metadata, "diameter": 40.0}
    image = whole_sample[0][:256, :384]
    source = Reads(image)
    stream = PlaneStream(
        model, source, step=128, halo=128, instance=INSTANCE, sample_block=128, diameter=30.0
    )
    assert stream.resampling.shape == (341, 512)  # checked when made, before any read
    prob = np.full(image.shape, np.nan, np.float32)
    for event in stream.run(range(len(stream.blocks))):
        if isinstance(event, BlockProbabilities):
            prob[event.region] = event.probabilities
    assert np.abs(prob - predict(model, image, diameter=30.0)).max() <= 1e-5
    with pytest.raises(ValueError, match="too far"):
        PlaneStream(model, source, step=128, diameter=1000.0)
