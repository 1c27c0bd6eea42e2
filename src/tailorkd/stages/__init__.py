"""The recipe's stages, one module each, in the order ``tailorkd run`` runs them (see ``tailorkd.pipeline``):

- ``corpus``: a raw dump -> the clean pool (when the recipe has a corpus section)
- ``prepare``: sources -> seed / pool / test splits
- ``prompt_search``: the teacher's prompt chosen on the seeds (when the recipe asks)
- ``label``: the teacher's class distributions for pool and test, with ``calibrate`` and ``ensemble``
- ``distill``: the student systems learn the teacher's distributions (and ``seed_guard`` judges them)
- ``evaluate``: every system on the human-labelled test set -> report
- ``classify``: the trained student on new texts (and its export); ``signals``: daily signals from a feed

Each stage module registers its stage (``registry.register_stage``) when imported; importing this package
imports them all, in an order in which each follows the stages it requires. Each reads the recipe and the
files earlier stages left in the run folder (``tailorkd.run_dir``) and writes its own, so each can be rerun
or resumed alone.
"""

from tailorkd.stages import corpus, distill, evaluate, label, prepare, prompt_search  # noqa: F401  (registers them)
from tailorkd.stages.registry import Stage, get_stage, register_stage, stage_order, unregister_stage

__all__ = ["Stage", "get_stage", "register_stage", "stage_order", "unregister_stage"]
