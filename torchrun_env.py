"""torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK), read and checked without importing torch: arguments.py
checks --fsdp and the batch size against the world size before train.py loads its libraries; distributed.py sets
up the process group from it."""
from __future__ import annotations

import os

from residual_prompts.errors import ConfigError


def world_size() -> int:
    """WORLD_SIZE (torchrun's), checked: 1 when unset."""
    value = os.environ.get("WORLD_SIZE") or "1"
    try:
        return max(int(value), 1)
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={value!r} is not a number; launch with torchrun --nproc_per_node N, or unset "
                          f"WORLD_SIZE for one process") from None


def world_from_environment() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's variables, checked: the one place they are read."""
    env = {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    try:
        world = int(env["WORLD_SIZE"] or "1")
        if world <= 1:
            return 1, 0, 0
        rank, local_rank = int(env["RANK"]), int(env["LOCAL_RANK"] or "0")
    except (TypeError, ValueError):
        raise ConfigError(f"WORLD_SIZE={env['WORLD_SIZE']!r} RANK={env['RANK']!r} LOCAL_RANK={env['LOCAL_RANK']!r}: "
                          f"not a valid torchrun environment; launch with torchrun --nproc_per_node N, or unset "
                          f"WORLD_SIZE for one process") from None
    if not 0 <= rank < world or local_rank < 0:
        raise ConfigError(f"RANK={rank} LOCAL_RANK={local_rank} outside WORLD_SIZE={world}: launch with torchrun")
    return world, rank, local_rank
