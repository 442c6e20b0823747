"""``benchmarks/reproduce.py``'s protocol, one module per job.

* :mod:`.settings`: the recipe YAML as typed dataclasses (unknown keys and bad types are errors) and the
  resolved :class:`~.settings.Settings` of one call (recipe + flags);
* :mod:`.plan`: the ordered runs (:class:`~.plan.RunSpec`) the settings ask for;
* :mod:`.run`: training and exporting them, resumably, within a time budget;
* :mod:`.collect`: a run's record (from its directory, or the committed record of a fresh checkout);
* :mod:`.aggregate`: rows over seeds, paired comparisons with scratch, the table's document;
* :mod:`.verdicts`: the papers' claims and the targets as pass / fail / n/a from the numbers;
* :mod:`.render`: markdown, the console summary and the figure;
* :mod:`.cli`: the command line (``python benchmarks/reproduce.py``).
"""
