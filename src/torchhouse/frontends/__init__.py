"""Front ends over the training core: the ``torchhouse`` command (`cli`), config files
(`config`), tuning with Optuna (`tuning`), the demo, and serving a run folder (`serving`).
"""
