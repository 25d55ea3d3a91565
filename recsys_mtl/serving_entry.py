"""The pyfunc model's code, logged as a file ("models from code"): MLflow runs it to get
the model object instead of unpickling one, so loading a logged recommender executes only
this file and recsys_mtl's own code."""

import mlflow
from recsys_mtl.serving import RecommenderPyfunc

mlflow.models.set_model(RecommenderPyfunc())
