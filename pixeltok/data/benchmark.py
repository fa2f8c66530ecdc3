"""Input-pipeline throughput: `python -m pixeltok.data.benchmark [key=value ...]`.

Any base-config key can be overridden (typed by its default), e.g.
`python -m pixeltok.data.benchmark train_augment=pad_crop image_size=32 batch_size=128 num_batches=200`.
Prints examples/s of `make_train_dataset` after the first batch (which includes the one-time cache load).
"""

from __future__ import annotations

import sys
import time

from pixeltok import data
from pixeltok.config_utils import base_config, parse_arg


def main(argv: list[str]) -> None:
    config = base_config()
    defaults = {k: v for k, v in config.items() if not hasattr(v, "items")}
    args = parse_arg(",".join(argv), num_batches=200, **defaults).to_dict()
    num_batches = args.pop("num_batches")
    config.update(args)
    info = data.get_info(config)
    t0 = time.perf_counter()
    it = iter(data.make_train_dataset(config, num_classes=info.num_classes))
    next(it)
    t1 = time.perf_counter()
    for _ in range(num_batches):
        next(it)
    t2 = time.perf_counter()
    rate = num_batches * config.batch_size / (t2 - t1)
    print(f"{config.dataset} {config.train_augment} three_augment={config.three_augment} S={config.image_size} "
          f"batch={config.batch_size} threads={config.data_threads} workers={config.num_workers}: first batch "
          f"{t1 - t0:.2f} s, then {rate:,.0f} examples/s over {num_batches} batches")


if __name__ == "__main__":
    main(sys.argv[1:])
