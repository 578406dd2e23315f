"""The evaluation wing: Cartucho files and the exact mAP, COCO metrics, sweeps, error analysis, the one
inference loop over a dataset and its consumers.

Imports only ``eecs598.data``, ``eecs598.models`` and the base modules (see the README's layout table).
"""
