"""The inference payload: frames, models, predictor, synthetic videos, and the Modal app.

Importable with no Modal credentials and without torch; :mod:`modal_app.app` is the only module
that defines Modal objects.
"""
