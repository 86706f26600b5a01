"""Reporting: the numbers, tables, figures and plain-language verdicts of a run, each beside what it must be
compared with (``verdict``: the pipelines; ``spactor_study``: SpacTor vs SC; ``distillspec_study``: the
DistillSpec study table and the model garden), and the tasks that log them."""
