"""recsys_mtl: multi-task recommender."""
