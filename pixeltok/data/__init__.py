"""pixeltok input pipelines: grain over TFDS ArrayRecord data, NumPy/PIL transforms, no TensorFlow.

Public API (team interface):
* `get_info(config) -> DataInfo`
* `make_train_dataset(config, *, num_classes, process_index=0, process_count=1) -> grain.IterDataset`
* `make_eval_batches(config, *, split=None, process_index=0, process_count=1) -> Iterator[dict]`

See `pipeline.py` (ordering, determinism, workers), `transforms.py` (augmentation and eval-crop rules), `mixing.py`
(Mixup/CutMix) and `builders.py` (how Fashion-MNIST IDX files and image folders become ArrayRecord data sets).
"""

from pixeltok.data.pipeline import get_info, make_eval_batches, make_train_dataset
from pixeltok.data.sources import DataInfo

__all__ = ["DataInfo", "get_info", "make_eval_batches", "make_train_dataset"]
