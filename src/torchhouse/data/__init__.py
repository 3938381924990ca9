"""The data layer: user data -> batches for one epoch, on the training device.

`batches` (arrays, DataLoaders, Datasets -> `Batches`), `streams` (generators and
``steps_per_epoch``), `transfer` (CPU batches to the GPU, overlapped), `convert` (arrays
and DataFrames to tensors), `trees` (nested batches), `fingerprint` (what a resume
compares), `rng` (seeding, capturing and restoring every RNG), `text` (character trigrams).
"""

from torchhouse.data.batches import (
    ArrayBatches,
    Batches,
    LoaderBatches,
    as_pair,
    batch_weights,
    inputs_of,
    is_hf_dataset,
    make_batches,
    nonfinite_data,
    split_validation,
    torch_columns,
    validation_batches,
)
from torchhouse.data.convert import align_columns, dataframe_columns, to_tensor, to_tensor_tree
from torchhouse.data.trees import (
    Batch,
    Tree,
    batch_size_of,
    call_net,
    concat_outputs,
    describe,
    move_to,
    to_cpu,
    tree_leaves,
    tree_map,
)

__all__ = [
    "ArrayBatches",
    "Batch",
    "Batches",
    "LoaderBatches",
    "Tree",
    "align_columns",
    "as_pair",
    "batch_size_of",
    "batch_weights",
    "call_net",
    "concat_outputs",
    "dataframe_columns",
    "describe",
    "inputs_of",
    "is_hf_dataset",
    "make_batches",
    "move_to",
    "nonfinite_data",
    "split_validation",
    "to_cpu",
    "to_tensor",
    "to_tensor_tree",
    "torch_columns",
    "tree_leaves",
    "tree_map",
    "validation_batches",
]
