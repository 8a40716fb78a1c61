"""The trainers' autocast: the loss computed under the run's bf16/fp16, shared by SFT and DPO."""

from __future__ import annotations

import contextlib


class AutocastLossMixin:
    """Compute the whole loss and evaluation under the run's bf16/fp16 autocast (no DeepSpeed).

    Accelerate autocasts only the model's forward and returns its outputs in float32; our loss
    applies the output head to those hidden states itself, where a bf16 head would meet float32
    inputs ("expected m1 and m2 to have the same dtype"). Put before ``Trainer`` in the bases.
    """

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True):
        if self.accelerator.native_amp:  # False under DeepSpeed, which casts by itself
            return self.accelerator.autocast()
        return contextlib.nullcontext()
