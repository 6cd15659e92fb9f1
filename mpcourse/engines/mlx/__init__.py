"""The MLX engine's room, with the torch room's file names: ``engine``, ``devices``, ``models``,
``clip``, ``probes``, ``bench``, ``fp8``, ``support``, ``wrong_order``; ``arrays`` converts MLX
arrays to numpy. The torch room's ``scaling`` has no twin (MLX has no GradScaler; the engine uses
:mod:`mpcourse.scaler` directly), nor do ``inspect`` and ``tensorboard``.

Usage::

    from mpcourse.engines.mlx.engine import MLXEngine, mlx_devices
    mlx_devices()              # ['gpu', 'cpu'] on Apple silicon, ['cpu'] on Linux without CUDA
"""
