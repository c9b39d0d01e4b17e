"""The paper's studies (not part of the library): :mod:`.running` trains and collects the runs
of a study, :mod:`.rules` states and applies the verdict rules, :mod:`.report` renders tables
and plots, :mod:`.provenance` records where a result came from, and :mod:`.compare` is the
training scripts' ``--compare`` (a one-seed study). ``paper_runs/study.py`` is the driver."""
