"""Names of the per-epoch metrics, shared by the trainable, the driver's callbacks and export."""

from __future__ import annotations

EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
TRAIN_ACC = "train_acc"
VAL_LOSS = "val_loss"
VAL_ACC = "val_acc"
GENERALIZATION_GAP = "generalization_gap"
EPOCH_TIME_S = "epoch_time_s"
DIVERGED = "diverged"
STOPPED_ON_OVERFIT = "stopped_on_overfit"  # set on the result on which the overfit stopper acts
#: seconds `torch.compile` took (a warm-up before the first epoch a run trains, outside its
#: epoch_time_s); only on that epoch's result, only when compile is on
COMPILE_TIME_S = "compile_time_s"
#: a restored trial's rows up to its checkpoint (a list, not a metric), sent once with its first
#: result after the restore: the driver that recorded some of them may have died with them, as
#: when its journal reached a bucket older than the trial's checkpoint
EARLIER_EPOCHS = "earlier_epochs"

#: a finalist's scores on the held-out test split (dataset.test_fraction), measured once, after its
#: last epoch; search trials never see the test split, so only finalists report these
TEST_LOSS = "test_loss"
TEST_ACC = "test_acc"
#: the test metric that measures what each validation objective measures
TEST_OF = {VAL_LOSS: TEST_LOSS, VAL_ACC: TEST_ACC}

#: The per-epoch curves every trial reports (accuracies only for classification).
CURVES = (TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC, GENERALIZATION_GAP, EPOCH_TIME_S)

#: Metrics a study may optimise, with the direction that makes sense for each.
OBJECTIVES = {
    VAL_LOSS: "min",
    VAL_ACC: "max",
    TRAIN_LOSS: "min",
    TRAIN_ACC: "max",
    GENERALIZATION_GAP: "min",
}
#: What a trained model costs, measured once per trial (not per epoch) and reported with every
#: epoch: its trainable parameters and its per-sample inference latency in milliseconds. A study
#: may list them as further objectives after a per-epoch one.
PARAMS = "params"
INFERENCE_MS = "inference_ms"
MODEL_COSTS = {PARAMS: "min", INFERENCE_MS: "min"}
#: What a trial uses, measured by the trial and reported with every epoch (trainables/usage.py):
#: its peak memory so far in MiB (the CUDA allocator's peak on a GPU, the process's resident
#: growth on the CPU), its GPU share (`resources.gpu`, as Ray assigned it), the GPU-hours so far
#: (share x wall time), and, only where NVML answers, the mean GPU utilisation and the energy
PEAK_MEMORY_MB = "peak_memory_mb"
GPU_SHARE = "gpu_share"
GPU_HOURS = "gpu_hours"
GPU_UTIL_PCT = "gpu_util_pct"
ENERGY_WH = "energy_wh"
USAGE = (PEAK_MEMORY_MB, GPU_SHARE, GPU_HOURS, GPU_UTIL_PCT, ENERGY_WH)
#: usage a study may list as a further objective (not the first: it grows every epoch)
USAGE_COSTS = {GPU_HOURS: "min"}
#: set (to the GPU share the trial had) on the last result of a trial that ran out of GPU memory
OUT_OF_MEMORY = "out_of_memory"
#: how the error of a trial that ran out of GPU memory begins (not a metric): the driver knows it
#: from any other error by this
OUT_OF_MEMORY_ERROR = "CUDA out of memory at GPU share"
#: Metrics only classification datasets report.
CLASSIFICATION_ONLY = {TRAIN_ACC, VAL_ACC}
