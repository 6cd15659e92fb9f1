"""The PyTorch engine's room: ``engine``, ``devices``, ``scaling``, ``models``, ``clip``, ``probes``,
``inspect``, ``bench``, ``fp8``, ``support``, ``tensorboard``, ``wrong_order``; each imports
torch, so nothing here is imported until an engine or a tool for torch is asked for.

Usage::

    from mpcourse.engines.torch.engine import TorchEngine, torch_devices
    torch_devices()            # e.g. ['cuda', 'cpu']
"""
