"""vlm-mechanisms: the paper's findings about object localization in VLMs as executable claims.

Layers, bottom to top (a module imports only from its own layer or below; `tests/test_layers.py`):
`geometry`, `storage` -> `data` -> `models` -> `interventions` -> `tasks` -> `experiments` ->
`organisms` -> `reports` -> `suite`.
"""
