"""Write a registered dataset (or a random subset of it) as an ImageFolder: OUT/{train,test}/<NN_class>/<i>.png.

    python recipes/write_imagefolder.py --out data/fmnist-folder --train-per-class 1000

Used to measure the ImageFolder path end to end on data this machine has (docs/results.md, "Any dataset as an
ImageFolder").
"""

from __future__ import annotations

import argparse
import re
import sys

import torch
from PIL import Image

from gendistill.cli import run_guarded
from gendistill.config import ArgumentParser, add_data_flags, checked_type
from gendistill.data import load_split
from gendistill.io import atomic_dir
from gendistill.outputs import claim_output


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_flags(p)
    p.add_argument("--out", required=True)
    p.add_argument("--train-per-class", type=checked_type(int, min=0), default=1000, help="0: every image")
    p.add_argument("--test-per-class", type=checked_type(int, min=0), default=0, help="0: every image")
    p.add_argument("--seed", type=checked_type(int, min=0), default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (only once the new folder is complete)")
    args = p.parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    with claim_output(args.out, overwrite=args.overwrite, inputs=[("--data-dir", args.data_dir)],
                      flag="--out"), atomic_dir(args.out) as tmp:
        for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
            data = load_split(args, split)
            for c, name in enumerate(data.classes):
                folder = tmp / split / f"{c:02d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}"
                folder.mkdir(parents=True)
                idx = (data.labels == c).nonzero().flatten()
                if per_class:
                    idx = idx[torch.randperm(len(idx), generator=gen)[:per_class]]
                for i in idx.tolist():
                    a = data.images[i].permute(1, 2, 0).numpy()
                    Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(folder / f"{i:05d}.png")
    print(f"wrote {args.out}/train and {args.out}/test ({args.dataset}, {args.train_per_class or 'all'} train "
          "images per class)")
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main))
