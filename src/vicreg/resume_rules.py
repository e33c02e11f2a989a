"""What may change when a run is resumed: a pure classification of the differences between the config (and data
fingerprint) stored in the checkpoint and those of the command that resumes it.

The table (dotted config fields; a section name covers every field under it):

=========================  ========  ==============================================================================
field                      verdict   why
=========================  ========  ==============================================================================
model.*                    refused   the weights' shapes and the encoder spec are the run's identity
loss.*                     refused   another objective mid-run is another experiment
optim.*                    refused   the optimiser state and the schedule belong to these values. ``optim.base_lr``
                                     included: resuming with ``--optim.base-lr 5`` made the lr jump from 0.025 to
                                     0.59 without a word; a deliberate change of lr is a new run started from these
                                     weights (``--model.init``), which keeps this run reproducible from its
                                     ``config.yaml``
batch_size                 refused   the lr scaling, the data order and the VICReg statistics depend on it
seed                       refused   the data order and the views are functions of it; another seed mid-run makes
                                     the run reproducible by nobody
views.*, signal_views.*,   refused   the augmentations are part of the objective
table_views.*,
band_views.*
window, band_percentiles   refused   how raw bands become the encoder's input (its normalisation)
modality, modality_b       refused   another kind of data
image_size                 refused   the images the encoder was trained on
precision                  refused   the gradient scaler's state exists only for fp16, and numerics change
data fingerprint           refused   other rows (count, shape, dtype or sampled content) change the schedule's
                                     epochs and the experiment; allowed and announced with ``new_data=True``
                                     (``--resume-with-new-data``)
epochs, max_steps,         allowed   extending (or shortening) a run is what resuming is for; the schedule's length
budget_minutes                       changes and is announced with old and new values
data, data_root,           allowed   where the data is read from: what matters is the fingerprint (a moved folder
download, data_column,               with the same rows is the same data)
label_column, strict_data
eval_split, knn_every,     allowed   monitoring only
label_free_every,
label_free_rows, log
on_collapse,               allowed   the collapse guard: what happens if the run collapses, not the step itself
max_rollbacks,
collapse_std
log_every, diag_every,     allowed   cadence of logs, diagnostics and checkpoints
ckpt_every,
keep_checkpoints
workers, device, compile,  allowed   how the same computation runs (results may differ in the last bits across
channels_last, sync_bn,              devices, as on any rerun); sync_bn only matters under torchrun
progress, threads
out                        allowed   the folder was moved or reached through another path
resume_with_new_data       allowed   how this resume treats the data, not the run: never announced (:data:`SILENT`)
=========================  ========  ==============================================================================

A field not in the table is refused (a new config field must be placed here; ``tests/test_resume_rules.py``
checks that every field of :class:`vicreg.config.TrainConfig` is). A field missing from the stored config (a
checkpoint written by an older version) is announced as ``(not recorded)`` rather than refused, so old runs
still resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from vicreg.data.fingerprint import fingerprint_changes

__all__ = [
    "ALLOWED",
    "REFUSED",
    "SILENT",
    "Change",
    "ResumeChanges",
    "classify_changes",
    "describe",
    "flatten",
    "rule_for",
]

REFUSED = (
    "model",
    "loss",
    "optim",
    "batch_size",
    "seed",
    "views",
    "signal_views",
    "table_views",
    "modality",
    "modality_b",
    "image_size",
    "precision",
    "band_views",
    "window",
    "band_percentiles",
)
ALLOWED = (
    "epochs",
    "max_steps",
    "budget_minutes",
    "data",
    "data_root",
    "download",
    "data_column",
    "label_column",
    "strict_data",
    "eval_split",
    "knn_every",
    "log_every",
    "diag_every",
    "ckpt_every",
    "keep_checkpoints",
    "workers",
    "device",
    "compile",
    "channels_last",
    "sync_bn",
    "progress",
    "out",
    "threads",
    "label_free_every",
    "label_free_rows",
    "log",
    "on_collapse",
    "max_rollbacks",
    "collapse_std",
    "resume_with_new_data",
)
SILENT = ("resume_with_new_data",)
"""Fields about the act of resuming, not the run: never compared."""
NOT_RECORDED = "(not recorded)"


class Change(NamedTuple):
    """One field that differs: its dotted name, the stored value and the new one."""

    field: str
    old: Any
    new: Any


class ResumeChanges(NamedTuple):
    """The differences found on resume: ``refused`` stop it, ``announced`` are printed and recorded."""

    refused: tuple[Change, ...]
    announced: tuple[Change, ...]


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"base_lr": 0.2}}`` -> ``{"optim.base_lr": 0.2}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def rule_for(field: str) -> str:
    """``"refused"`` or ``"allowed"`` for a dotted config field (see the table); unknown fields are refused."""
    for name in (field, *(field.rsplit(".", k)[0] for k in range(1, field.count(".") + 1))):
        if name in ALLOWED:
            return "allowed"
        if name in REFUSED:
            return "refused"
    return "refused"


def classify_changes(
    old_config: Mapping[str, Any],
    new_config: Mapping[str, Any],
    old_fingerprint: Mapping[str, Any] | None,
    new_fingerprint: Mapping[str, Any] | None,
    *,
    new_data: bool = False,
) -> ResumeChanges:
    """Classify every difference between the stored config / data fingerprint and the new ones (see the table).

    Args:
        old_config, new_config: nested dicts as :func:`vicreg.config.config_to_dict` gives them.
        old_fingerprint, new_fingerprint: :func:`vicreg.data.fingerprint.data_fingerprint` dicts; ``None`` when
            not recorded (an older checkpoint), then announced.
        new_data: the user asked to resume on other data: a fingerprint change is announced, not refused.

    Returns:
        ``(refused, announced)``, each sorted by field; data fields are named ``data.<field>``.
    """
    old, new = flatten(old_config), flatten(new_config)
    refused: list[Change] = []
    announced: list[Change] = []
    for field in sorted((old.keys() | new.keys()) - set(SILENT)):
        if field not in old:
            if field in new:
                announced.append(Change(field, NOT_RECORDED, new[field]))
            continue
        if field not in new:  # a field this version no longer has
            announced.append(Change(field, old[field], NOT_RECORDED))
            continue
        if old[field] != new[field]:
            (refused if rule_for(field) == "refused" else announced).append(Change(field, old[field], new[field]))
    if new_fingerprint is not None:
        if old_fingerprint is None:
            announced.append(Change("data.fingerprint", NOT_RECORDED, _short(new_fingerprint.get("sample_hash"))))
        else:
            for key, a, b in fingerprint_changes(old_fingerprint, new_fingerprint):
                change = Change(f"data.{key}", _short(a), _short(b))
                (announced if new_data else refused).append(change)
    return ResumeChanges(tuple(refused), tuple(announced))


def _short(value: Any) -> Any:
    """A hash is shown by its first 12 characters."""
    return value[:12] if isinstance(value, str) and len(value) == 64 else value


def describe(changes: tuple[Change, ...] | list[Change]) -> str:
    """``"optim.base_lr 0.2 -> 5, seed 0 -> 1"``: the changes on one line, for a message."""
    return ", ".join(f"{c.field} {_show(c.old)} -> {_show(c.new)}" for c in changes)


def _show(value: Any) -> str:
    return str(value) if not isinstance(value, str) or value == NOT_RECORDED else repr(value)
