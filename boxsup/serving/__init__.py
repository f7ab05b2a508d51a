"""Using a trained network: label maps for new images, exported models, the MLflow model of a run."""
