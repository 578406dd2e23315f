"""The models wing: backbones (trunks and their weights), model options, test-time augmentation.

Imports only ``eecs598.data`` and the base modules (see the README's layout table). The course's detector
itself lives in the root modules ``common.py`` and ``one_stage_detector.py``, which build on this wing.
"""
