"""recsys_mtl: a multi-task recommender.

Shared user/item embeddings feed click, purchase and rating heads; a polars feature
pipeline; a weighted multi-objective trainer; FAISS candidate retrieval re-ranked by
all heads; MLflow tracking. See README.md for the two commands that run everything.
"""

__version__ = "0.1.0"
