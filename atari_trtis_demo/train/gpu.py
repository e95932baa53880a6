"""``--gpu N``: fail at once, in one line, when the GPU asked for is not there.

Cheap to import: CuPy (through Chainer) is imported only when a GPU is asked for.
"""

from __future__ import annotations

from atari_trtis_demo.core.errors import UserError


def check_gpu(gpu: int) -> None:
    """Fail at once, in one line, when ``--gpu N`` asks for CUDA that is not there."""
    if gpu < 0:
        return
    from chainer.backends import cuda

    if not cuda.available:
        raise UserError(
            f"--gpu {gpu}: CUDA is not available (CuPy is not installed or finds no GPU); "
            "install a CuPy wheel for your CUDA (for example cupy-cuda12x) or pass --gpu -1 for the CPU"
        )
    import cupy

    count = cupy.cuda.runtime.getDeviceCount()
    if gpu >= count:
        raise UserError(f"--gpu {gpu}: this machine has {count} GPU(s), numbered 0 to {count - 1}")
