"""Run several one-step DPO trainings in one torchrun launch (tests/test_dpo_step_one.py).

Usage: torchrun ... dpo_step_one_worker.py RUNS_JSON, where RUNS_JSON maps an output folder to the
argv of dpo/combined_dpo.py. The process group stays up between runs (each run would otherwise
leave it), so the launch and the group's start are paid once for all of them.
"""

import json
import sys

import torch
from helpers import load_script

import fwdrev.training


def keep_process_group(trainer, then=None) -> None:
    trainer.accelerator.wait_for_everyone()
    if then is not None and trainer.args.process_index == 0:
        then()


def main() -> None:
    runs = json.loads(open(sys.argv[1]).read())
    fwdrev.training.finish_distributed = keep_process_group
    combined_dpo = load_script("dpo", "combined_dpo")
    for argv in runs.values():
        combined_dpo.main(argv)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
