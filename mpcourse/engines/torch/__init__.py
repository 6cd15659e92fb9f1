"""The PyTorch engine's room: ``engine``, ``scaling``, ``models``, ``clip``, ``probes``, ``inspect``,
``bench``, ``tensorboard``, ``wrong_order``; each imports torch, so nothing here is imported
until an engine or a tool for torch is asked for.

Usage::

    from mpcourse.engines.torch.engine import TorchEngine, torch_devices
    torch_devices()            # e.g. ['cuda', 'cpu']
"""
