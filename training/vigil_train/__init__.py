"""Vigil scratch-detector training: model, metrics, reference distributions, report and the
end-to-end pipeline (``python -m vigil_train.pipeline``)."""
