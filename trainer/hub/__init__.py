"""Where adapters leave for the Hub: the only module that touches `HfApi` (`api`), `python -m trainer push` (`push`),
the model, dataset and Space cards (`cards`), the Space's settings (`space_settings`) and the commands that serve a
pushed run on an engine (`serving`)."""
