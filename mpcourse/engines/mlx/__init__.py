"""The MLX engine's room, with the torch room's file names: ``engine``, ``models``, ``clip``,
``probes``, ``bench``, ``wrong_order``. The torch room's ``scaling`` has no twin (MLX has no
GradScaler; the engine uses :mod:`mpcourse.scaler` directly), nor do ``inspect`` and ``tensorboard``.

Usage::

    from mpcourse.engines.mlx.engine import MLXEngine, mlx_devices
    mlx_devices()              # ['gpu', 'cpu'] on Apple silicon, ['cpu'] on Linux without CUDA
"""
