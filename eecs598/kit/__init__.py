"""Course-staff kit (never shipped to students): the hidden checks and points of ``eecs598.grade``
(``checks.py``, ``points.json``, ``runner.py``), the student README and tests that
``eecs598.release`` ships, planted student bugs (``bugs/``, applied by ``bugs.py``) and
``python -m eecs598.kit.selftest``, which checks the whole release / grade loop."""
