"""The build layer: the one place where a configuration becomes objects.

Everything above it (the runs ``train``, ``eval``, ``embed``, ``neighbors``, ``report`` and the ``cli``) asks this
package and never branches on the modality itself. One module per job:

* :mod:`~vicreg.build.runtime`: the process group, the device and the autocast dtype;
* :mod:`~vicreg.build.encoders`: a config and each branch's :class:`Input` become encoder descriptions
  (:class:`~vicreg.models.EncoderSpec`), and :func:`model_from_specs`, the one path from descriptions to a model;
* :mod:`~vicreg.build.kinds`: one data kind per modality (:class:`ImageKind`, :class:`SignalKind`,
  :class:`TableKind`, the two-modality :class:`PairKind`): training loader, views, inputs, kNN monitor, and a
  split for evaluation; :mod:`~vicreg.build.splits`: labelled train/test splits;
* :mod:`~vicreg.build.checkpoints`: what a checkpoint stores (:func:`checkpoint_meta`) and :func:`load_encoder`,
  which rebuilds a trained model strictly;
* :mod:`~vicreg.build.labelfree`: the label-free measures of an encoder on a seeded held-out sample;
* :mod:`~vicreg.build.runs`: :func:`open_run` (encoder, device, the data kind of the data asked for, with the data
  root passed as an argument) and :func:`encoder_features` (cached frozen features).

Adding a modality is one new :class:`DataKind` in :mod:`~vicreg.build.kinds` (plus its views and encoder as leaves).
"""

from vicreg.build.checkpoints import (
    LoadedEncoder,
    checkpoint_meta,
    find_checkpoint,
    load_encoder,
    random_init_model,
    run_dir_of,
)
from vicreg.build.encoders import Input, encoder_spec, encoder_specs, model_from_config, model_from_specs
from vicreg.build.kinds import (
    KINDS,
    BatchLoader,
    DataKind,
    ImageKind,
    PairKind,
    SignalKind,
    Split,
    TableKind,
    TrainingData,
    data_kind,
    run_data_kind,
)
from vicreg.build.labelfree import (
    LabelFreeMonitor,
    LabelFreeSample,
    label_free_monitor,
    label_free_sample,
    measure_label_free,
)
from vicreg.build.runs import DataArgs, OpenRun, encoder_features, open_run, open_run_with
from vicreg.build.runtime import autocast_dtype, resolve_device, setup_distributed
from vicreg.build.splits import NoLabelsError, held_out_rows, labelled_splits

__all__ = [
    "KINDS",
    "BatchLoader",
    "DataArgs",
    "DataKind",
    "ImageKind",
    "Input",
    "LabelFreeMonitor",
    "LabelFreeSample",
    "LoadedEncoder",
    "NoLabelsError",
    "OpenRun",
    "PairKind",
    "SignalKind",
    "Split",
    "TableKind",
    "TrainingData",
    "autocast_dtype",
    "checkpoint_meta",
    "data_kind",
    "encoder_features",
    "encoder_spec",
    "encoder_specs",
    "find_checkpoint",
    "held_out_rows",
    "label_free_monitor",
    "label_free_sample",
    "labelled_splits",
    "load_encoder",
    "measure_label_free",
    "model_from_config",
    "model_from_specs",
    "open_run",
    "open_run_with",
    "random_init_model",
    "resolve_device",
    "run_data_kind",
    "run_dir_of",
    "setup_distributed",
]
