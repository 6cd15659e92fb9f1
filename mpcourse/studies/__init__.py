"""Teaching experiments: runs side by side, the clipping study, the demo, the deliberately wrong engine.

Usage::

    from mpcourse.studies import runs, clip_study, demo, wrong_order

    runs.compare(task, {"fp32": cfg32, "fp16": cfg16})   # {name: Run}, each trained and evaluated
    demo.run_demo()                                     # what ``mpcourse demo`` runs

These sit above the engines and below the notebooks: everything here is measured when it runs.
"""
