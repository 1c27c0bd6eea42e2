"""The recipe's stages, one module each, in the order ``tailorkd run`` runs them (see ``tailorkd.pipeline``):

- ``prepare``: sources -> seed / pool / test splits
- ``prompt_search``: the teacher's prompt chosen on the seeds (when the recipe asks)
- ``label``: the teacher's class distributions for pool and test, with ``calibrate`` and ``ensemble``
- ``distill``: the student systems learn the teacher's distributions
- ``evaluate``: every system on the human-labelled test set -> report
- ``classify``: the trained student on new texts (and its export)

Each reads the recipe and the files earlier stages left in the run folder (``tailorkd.run_dir``) and writes
its own, so each can be rerun or resumed alone.
"""
