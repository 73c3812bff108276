"""Average the weights of two runs of the same network (a "model soup"), for a release.

    python tools/average_weights.py unet-cells-nuclei runs/contrast/candidate.safetensors \
        --weight 0.5 --out src/napari_unet/models/unet-cells-nuclei.safetensors

``B`` must have continued from ``A`` (``tools/train_bundled.py --init A``): two points of one
training path average into a network between them, two unrelated networks do not. The result
keeps ``B``'s metadata (its recipe and the chain of earlier runs) and records the average under
``"averaged"``; then run ``bench/bench_accuracy.py --model OUT`` and fill in the model card.
"""

from __future__ import annotations

import argparse
import json

import torch

from napari_unet import save_model
from napari_unet.core.network.store import open_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", help="earlier weights (bundled name or .safetensors file)")
    p.add_argument("b", help="weights that continued from A")
    p.add_argument("--weight", type=float, default=0.5, help="share of B (0..1)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if not 0 <= args.weight <= 1:
        p.error(f"--weight must be in [0, 1], got {args.weight}")
    a, b = open_model(args.a), open_model(args.b)
    if a.config() != b.config():
        p.error(f"the two networks differ: {a.config()} against {b.config()}")
    if b.metadata.get("continued_from", [])[-1:] != [a.metadata.get("recipe")]:
        p.error(f"{args.b} did not continue from {args.a} (its continued_from does not end there)")
    wa, wb = a.state_dict(), b.state_dict()
    with torch.no_grad():
        b.load_state_dict({k: torch.lerp(wa[k], wb[k], args.weight) for k in wa})
    averaged = {"weight_of_recipe": args.weight, "rest": "the weights continued_from[-1] made"}
    metadata = {**b.metadata, "averaged": averaged}
    path = save_model(b, args.out, metadata)
    print(json.dumps(metadata["averaged"]), f"saved {path}")


if __name__ == "__main__":
    main()
