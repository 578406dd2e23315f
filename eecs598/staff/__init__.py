"""The staff wing: student release (release, regions), grader (grade: trusted side in trusted, report,
submissions, isolation; the sandbox in sandbox, supervisor, runner; the wire format in wire), checks,
planted bugs, self-test, Gradescope bundle. Never shipped to students.

May import everything; nothing outside it imports it but the command shims ``eecs598/release.py`` and
``eecs598/grade.py`` (which the release leaves out with this folder).
"""
