"""Using a trained network: label maps for new images, exported models, the MLflow model of a run."""

MODEL_NAME = "model"  # the MLflow model every run logs: runs:/<run id>/model
