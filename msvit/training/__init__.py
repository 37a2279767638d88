"""Training and evaluation: the programs behind every dataset folder's `train.py` (`train`) and `test.py`
(`evaluate`), and what they are built from:

- `engine`: one training epoch (forward, loss, backward, the optimizer step) and the evaluation loop;
- `loaders`, `distributed`: the data loaders, the resumable sampler, seeding, and the process group;
- `schedule`, `losses`: the learning-rate schedule and the TET loss; `distillation` (a teacher), `sml` (STMixer's
  side-branch loss): criteria that read more than the logits;
- `run_folder`, `run_state`, `run_log`: the run folder, the checkpointed state (what resumes exactly), the log;
- `preemption`: stop signals (Ctrl-C, SIGTERM, SIGUSR1) and the checkpoint they leave;
- `finetune`: starting from other weights; `firing_watch`: firing rates each epoch.

The programs are imported by their module (`from msvit.training.train import main`): this face imports nothing.
"""
