"""Write a PNG grid of the synthetic default dataset, one row per class, to look at it.

python tools/show_synthetic_cxr.py --size 256 --out synthetic_cxr_256.png
"""

import argparse

from engine.sources.synthetic_cxr import save_example_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image size in pixels (16..512)")
    parser.add_argument("--per-class", type=int, default=8, help="examples per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="synthetic_cxr.png")
    args = parser.parse_args()
    print(save_example_grid(args.out, per_class=args.per_class, image_size=args.size, seed=args.seed))


if __name__ == "__main__":
    main()
