"""MetaSchedule tuning of a model's fused kernels (``tune``) and the records database that
later compiles reuse (``database``: location, repair, compaction)."""
