"""Names of the baselines `evaluation.baselines` may list (kept free of heavy imports so
the config can validate against them)."""

BASELINES = ("popularity", "global_mean", "user_mean", "item_mean", "single_task")
