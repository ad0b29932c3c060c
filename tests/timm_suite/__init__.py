"""Run timm's own ``tests/test_models.py`` over the zoo's models (``make test-timm``)."""
