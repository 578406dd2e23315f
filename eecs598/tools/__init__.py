"""The tools wing: the commands people run (training, model report, submission) on top of the course modules.

May import every other wing but ``staff`` and the course's root modules (``common``, ``one_stage_detector``);
nothing imports it but ``staff``, the shims in ``eecs598/`` and ``train_fcos.py``.
"""
