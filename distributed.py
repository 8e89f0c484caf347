"""Data-parallel training with torch.distributed, launched by ``torchrun`` (no process management of our own).

    torchrun --nproc_per_node 4 train.py ARGS...            # one process per GPU (NCCL); CPU processes use gloo

Every rank builds the same global batches and takes its own contiguous slice of each. The loss of a slice is its
token-loss sum divided by the *global* batch's target-token count, so summing the ranks' gradients (one
all-reduce per step over the prompt, the reparameterization and any trainable weights) gives exactly the
gradient of the 1-process loss: with the same global ``--batch_size`` a 2-process run follows the 1-process run
(tests/test_distributed.py). Evaluation batches are dealt out round-robin, every row is scored exactly once and
the results are gathered on every rank. Rank 0 alone writes files and prints.

``--fsdp 1`` additionally shards the frozen model's weights over the ranks (FSDP2 ``fully_shard`` per T5 block):
each GPU holds 1/N of the model, for models that do not fit on one (t5-3b, t5-11b). The prompt and the
reparameterization stay replicated and are all-reduced as above.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from torchrun_env import world_from_environment, world_size  # noqa: F401  (re-exported)


class Dist:
    """This process's place in the job: rank, world size, and the few collectives the trainer needs."""

    def __init__(self, rank=0, world=1):
        self.rank, self.world = rank, world

    @property
    def enabled(self):
        return self.world > 1

    @property
    def is_main(self):
        return self.rank == 0

    def shard(self, batch):
        """This rank's contiguous slice of a global batch (possibly empty for a short last batch)."""
        if not self.enabled:
            return batch
        n = batch["source_ids"].shape[0]
        per = -(-n // self.world)
        lo, hi = min(self.rank * per, n), min((self.rank + 1) * per, n)
        return {k: v[lo:hi] for k, v in batch.items()}

    def all_reduce_grads(self, params):
        """Sum the gradients of replicated parameters over the ranks (missing ones count as zero)."""
        params = [p for p in params if p.requires_grad]
        if not self.enabled or not params:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])  # one collective per step, not one per tensor
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    def sum(self, tensor):
        if self.enabled:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool, device) -> bool:
        """True on every rank when it is true on one (a stop signal may reach a single rank)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def gather(self, obj):
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.enabled:
            dist.barrier()


SINGLE = Dist()






def from_environment(device_name: str):
    """Set up the process group when launched by torchrun (WORLD_SIZE > 1); returns (Dist, device name to use)."""
    world, rank, local_rank = world_from_environment()
    if world <= 1:
        return SINGLE, device_name
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    elif device_name == "auto":
        device_name = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world), device_name


def shutdown():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_frozen_model(model, device: torch.device, world: int):
    """FSDP2: shard the T5's weights over the ranks, one unit per encoder/decoder block (nearly all of the weights).
    The shared embedding and the LM head stay whole on every rank: the prompt wrapper looks tokens up in the
    embedding outside the model's forward (33 M parameters for t5-11b, against 11 B in the blocks)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    for stack in (model.encoder, model.decoder):
        for block in stack.block:
            fully_shard(block, mesh=mesh)
    return model
