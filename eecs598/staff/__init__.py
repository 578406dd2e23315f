"""The staff wing: student release, grader, checks, planted bugs, self-test. Never shipped to students.

May import everything; nothing outside it imports it but the command shims ``eecs598/release.py`` and
``eecs598/grade.py`` (which the release leaves out with this folder).
"""
