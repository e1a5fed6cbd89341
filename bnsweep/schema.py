"""Every results table's columns, in one place: the README's "Results schema" section describes these.

A results directory holds one Parquet directory per table (`trials`, `curves`, the probe tables, `boundaries`),
one file per trial (or per search cell). Column names are written out here, not built from lists, so a search
for a column name finds its definition. The `trials` table is the trial's configuration (one column per
TrialConfig field, see bnsweep/config.py) followed by OUTCOME.
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa

from bnsweep.config import TrialConfig

SCHEMA_VERSION = 1

TRIALS = "trials"
CURVES = "curves"
BOUNDARIES = "boundaries"

_F, _I, _S, _B = pa.float64(), pa.int64(), pa.string(), pa.bool_()
_ID = [("trial_id", _S), ("step", _I)]

# -- curves: one row per training step -------------------------------------------------------------------------

CURVE_COLUMNS = ("loss", "accuracy", "grad_norm")  # every step: the minibatch's loss, accuracy, gradient norm
EVAL_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc")  # every eval_every steps, NaN in between
CURVES_SCHEMA = pa.schema(_ID + [
    ("loss", _F), ("accuracy", _F), ("grad_norm", _F),
    ("train_loss", _F), ("train_acc", _F), ("test_loss", _F), ("test_acc", _F),
])

# -- trials: the configuration's columns, then the outcome and provenance --------------------------------------

# Fixed types, so every trial's file has the same schema (a failed trial recorded by the sweep driver has nulls
# where a finished one has numbers).
OUTCOME: dict[str, pa.DataType] = {
    "trial_id": _S, "status": _S, "trained": _B, "trained_rule": _S, "diverged_step": _I, "steps_done": _I,
    "task": _S, "initial_loss": _F, "final_loss": _F, "min_loss": _F,
    "final_train_loss": _F, "final_train_acc": _F, "final_test_loss": _F, "final_test_acc": _F,
    "best_train_loss": _F, "best_train_acc": _F, "best_test_loss": _F, "best_test_acc": _F,
    "wall_time_s": _F, "error": _S, "attempt": _I,
    # provenance
    "bnsweep_version": _S, "git_commit": _S, "git_dirty": _B, "torch_version": _S, "device_name": _S,
    "device_type": _S, "torch_threads": _I, "peak_rss_mb": _F, "data_checksum": _S, "data_source": _S,
    "hostname": _S, "finished_at": _S, "schema_version": _I,
    # the numerics in force (bnsweep/numerics.py); the precision and determinism asked for are config columns
    "matmul_fp32_precision": _S, "conv_fp32_precision": _S, "cudnn_benchmark": _B, "deterministic_algorithms": _B,
    "cublas_workspace_config": _S,
}


def config_type(f: dataclasses.Field) -> pa.DataType:
    """A TrialConfig field's column type: lists are JSON text, optional numbers keep their number type."""
    if f.metadata.get("sequence"):
        return _S
    head = str(f.type).split("|")[0].strip()
    return {"bool": _B, "int": _I, "float": _F}.get(head, _S)


def trials_schema() -> pa.Schema:
    return pa.schema([(f.name, config_type(f)) for f in dataclasses.fields(TrialConfig)] + list(OUTCOME.items()))


# -- probe tables: one row per probed step (and layer, direction or step size) ---------------------------------
# A per-layer table's `position` is the layer's place in the network (models.Net.position: 'stem', 's2.b1.conv1',
# 'head' in a ResNet; 'conv', 'fc', 'head' in a plain stack), filled by probes.Probes.tables.

LAYER = "layer"  # a per-layer probe table's weight layer number, 1-based (the paper's "layer #i")
QUANTILE_COLUMNS = {"q01": 0.01, "q05": 0.05, "q25": 0.25, "q50": 0.5, "q75": 0.75, "q95": 0.95, "q99": 0.99}
PROBE_SCHEMAS: dict[str, pa.Schema] = {
    "landscape": pa.schema(_ID + [
        ("direction", _S), ("eta_mult", _F), ("eta", _F), ("loss", _F), ("grad_diff", _F), ("beta", _F),
        ("loss_at_step", _F), ("grad_norm", _F), ("direction_norm", _F), ("loss_min", _F), ("loss_max", _F),
        ("grad_diff_min", _F), ("grad_diff_max", _F), ("beta_eff", _F), ("noise_in_probes", _S)]),
    "ics": pa.schema(_ID + [
        ("layer", _I), ("l2_diff", _F), ("cos", _F), ("rel_diff", _F), ("grad_norm", _F), ("grad_norm_after", _F),
        ("noise_in_probes", _S), ("position", _S)]),
    "activations": pa.schema(_ID + [
        ("layer", _I), ("source", _S), ("numel", _I), ("nonfinite", _I), ("sample_size", _I), ("mean", _F),
        ("std", _F), ("min", _F), ("max", _F),
        ("q01", _F), ("q05", _F), ("q25", _F), ("q50", _F), ("q75", _F), ("q95", _F), ("q99", _F),
        ("hist_edges", pa.list_(_F)), ("hist_counts", pa.list_(_I)), ("delta_mean", _F), ("delta_var", _F),
        ("channel_delta_mean", _F), ("channel_delta_mean_max", _F), ("channel_delta_var", _F),
        ("channel_delta_var_max", _F), ("position", _S)]),
    "bn_identity": pa.schema(_ID + [
        ("layer", _I), ("norm", _S), ("channels", _I), ("m", _I), ("eps", _F), ("tol", _F),
        ("exact_holds_frac", _F), ("exact_max_rel_err", _F), ("printed_holds_frac", _F),
        ("printed_max_violation", _F), ("printed_bound_holds", _B), ("grad_in_sq", _F), ("exact_sq", _F),
        ("printed_sq", _F), ("scaled_grad_out_sq", _F), ("position", _S)]),
    "layer_norms": pa.schema(_ID + [
        ("layer", _I), ("weight_norm", _F), ("grad_norm", _F), ("ratio", _F), ("lr_ratio", _F), ("update_norm", _F),
        ("update_ratio", _F), ("position", _S)]),
    "hessian": pa.schema(_ID + [
        ("top_eigenvalue", _F), ("residual", _F), ("iters", _I), ("edge_of_stability", _F), ("beta_eff", _F),
        ("noise_in_probes", _S)]),
    "sharpness": pa.schema(_ID + [
        ("sharpness", _F), ("min_eigenvalue", _F), ("residual", _F), ("iters", _I), ("two_over_lr", _F),
        ("eos_threshold", _F), ("lr_sharpness", _F), ("loss", _F), ("examples", _I), ("ghost_batch", _I),
        ("noise_in_probes", _S), ("batch_sharpness", _F), ("batch_sharpness_batches", _I),
        ("batch_sharpness_se", _F), ("full_batch_sharpness", _F)]),
    "spectrum": pa.schema(_ID + [
        ("layer", _I), ("block", _S), ("params", _I), ("top_eigenvalues", pa.list_(_F)), ("top", _F), ("bottom", _F),
        ("trace", _F), ("trace_se", _F), ("slq_nodes", pa.list_(_F)), ("slq_weights", pa.list_(_F)),
        ("bulk_edge", _F), ("outliers", _I), ("outlier_rule", _S), ("two_over_lr", _F), ("loss", _F)]),
    "scale_invariance": pa.schema(_ID + [
        ("layer", _I), ("feeds", _S), ("scale_invariant", _B), ("params", _S), ("eps", _F), ("lr", _F),
        ("momentum", _F), ("weight_decay", _F), ("weight_norm", _F), ("grad_norm", _F), ("inner", _F),
        ("inner_pred", _F), ("cos_wg", _F), ("inner_rel_err", _F), ("norm_sq", _F), ("norm_sq_next", _F),
        ("norm_sq_next_pred", _F), ("norm_sq_rel_err", _F), ("norm_change", _F), ("norm_change_pred", _F),
        ("norm_change_rel_err", _F), ("effective_lr", _F), ("angle", _F), ("angle_equilibrium", _F),
        ("position", _S)]),
}

# -- boundaries: one row per critical-learning-rate cell, and one per cell group over seeds --------------------

BOUNDARIES_SCHEMA = pa.schema([
    ("sweep", _S), ("scale", _S), ("cell_id", _S), ("all_seeds", _B),
    ("arch", _S), ("norm", _S), ("width", _F), ("dataset", _S),
    ("seed", _I), ("seeds", _I), ("steps", _I), ("batch_size", _I),
    ("curvature", _F), ("cell", _S),
    ("lower", _F), ("upper", _F), ("ratio", _F),
    ("lower_min", _F), ("upper_max", _F),
    ("trials_used", _I), ("rounds", _I), ("monotone", _B), ("failed_below", _I),
    ("converged", _B), ("budget_exhausted", _B),
    ("target_ratio", _F), ("budget", _I), ("fixed_grid_trials", _I),
    ("lrs", pa.list_(_F)), ("trained", pa.list_(_B)), ("statuses", pa.list_(_S)),
])

# Columns a table's every file must have, with their kinds, for bnsweep to read it (`status`, `figures`, resume):
# a file written by something else is named in a one-line error instead of a KeyError deep in a summary.
REQUIRED_COLUMNS: dict[str, dict[str, str]] = {
    TRIALS: {"trial_id": "string", "status": "string", "arch": "string", "norm": "string", "trained": "bool",
             "error": "string"},
}

# -- how much one file may hold ---------------------------------------------------------------------------------
# Readers check a file's Parquet footer against these before decoding it, so a small file that would decode to
# gigabytes (a forged row count, one long string repeated) is a one-line error, not an exhausted machine. Each is
# generous for a real trial: `trials` and `boundaries` files hold one row; `curves` one row per step (steps <=
# 10^7, bnsweep/config.py's MAX_STEPS); a probe table one row per probed step and layer or direction.
MAX_ROWS: dict[str, int] = {TRIALS: 1_000, BOUNDARIES: 1_000, CURVES: 10_000_001}
MAX_ROWS_OTHER = 100_000_000  # the probe tables, and any table not named above
MAX_FILE_BYTES = 4 * 2**30  # uncompressed bytes of one file's data (a 10^7-step curves file is about 0.7 GB)
