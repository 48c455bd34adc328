"""Moving a torch.Generator to where a run that drew other amounts would have left it.

Used after a tiled upsampler pass: the tiles draw a different number of random values than one pass over the
whole image, so the pipeline rewinds the generator and advances it by what the single pass draws. The random
stream the refiner samples from is then the same whatever the tiling.

* CPU (mt19937): every value of an fp32 ``exponential_`` (and of an fp64 ``rand``) consumes the engine once per
  value, in order, so drawing the same number of values in bounded chunks leaves the same state
  (tests/test_rng.py checks this on the installed torch).
* CUDA (Philox): a random kernel does not consume per value; it moves the generator's offset by an amount set at
  launch from the element count and the device, computed here as ATen's ``calc_execution_policy``
  (aten/src/ATen/native/cuda/DistributionTemplates.h: blocks of 256 threads, at most
  multiProcessorCount x maxThreadsPerMultiProcessor / 256 blocks, 4 values per thread and round for float
  types, 2 for double, 4 offset units per round). Not testable without a GPU here: the CPU test suite checks
  the arithmetic only (tests/test_rng.py has the GPU check, skipped without CUDA). A single draw of more than
  2^31 values, which ATen splits into parts that each move the offset again, is not modelled.
"""

from __future__ import annotations

import torch

_CHUNK = 1 << 22  # values per draw while advancing on the CPU (32 MiB of fp64)
_BLOCK = 256
_OFFSETS_PER_ROUND = 4


def philox_offset_increment(numel: int, multiprocessors: int, max_threads_per_multiprocessor: int,
                            values_per_round: int = 4) -> int:
    """How far one CUDA random kernel over `numel` values moves the Philox offset."""
    if numel <= 0:
        return 0
    blocks = min(-(-numel // _BLOCK), multiprocessors * (max_threads_per_multiprocessor // _BLOCK))
    rounds = (numel - 1) // (_BLOCK * blocks * values_per_round) + 1
    return rounds * _OFFSETS_PER_ROUND


def advance_generator(generator: torch.Generator, draws: list[int], dtype: torch.dtype = torch.float32) -> bool:
    """Advance `generator` as `exponential_` calls of `draws` values each (in `dtype`) would.

    Returns False (generator untouched) on devices whose consumption is not known here.
    """
    device = generator.device
    if device.type == "cpu":
        buffer = torch.empty(min(_CHUNK, max(draws, default=0)), dtype=dtype)
        for count in draws:
            while count > 0:
                step = min(count, buffer.numel())
                buffer[:step].exponential_(generator=generator)
                count -= step
        return True
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        per_round = 2 if dtype == torch.float64 else 4
        total = sum(philox_offset_increment(n, props.multi_processor_count, props.max_threads_per_multi_processor,
                                            per_round) for n in draws)
        generator.set_offset(generator.get_offset() + total)
        return True
    return False
